"""Dense allocations are sized first and refused with a message, instead of the OOM killer."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from engine import memory
from engine.analysis.de import differential_expression
from engine.analysis.diagnostics import posterior_predictive_check
from engine.model.params import RunParams
from engine.reading.load import read_counts
from engine.runs.fit import fit


def test_check_dense_size_returns_the_size_or_explains():
    assert memory.check_dense_size(1000, 2000, what="X", advice="a", limit_bytes=10**7) == 8_000_000
    with pytest.raises(ValueError) as err:
        memory.check_dense_size(100_000, 30_000, n_matrices=2, what="The posterior samples",
                                advice="lower n_samples", limit_bytes=8_100_000_000)
    assert str(err.value) == (
        "The posterior samples would need 24.0 GB of memory as a dense 100,000 x 30,000 x 2 matrix, "
        "more than the 8.1 GB this machine can spare: lower n_samples.")


def test_available_memory_is_positive_and_at_most_the_total():
    total = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    assert 0 < memory.available_memory() <= total


@pytest.mark.parametrize("n_bytes, text", [(999, "999 B"), (1_500, "1.5 kB"), (12_345_678_901, "12.3 GB"),
                                           (2.5e12, "2.5 TB")])
def test_format_bytes(n_bytes, text):
    assert memory.format_bytes(n_bytes) == text


@pytest.fixture(scope="module")
def small_run(kang_small_path):
    adata = read_counts(kang_small_path)[:300].copy()
    return adata, fit(adata, params=RunParams(max_epochs=1, seed=0))


def test_de_refuses_an_impossible_number_of_samples_before_allocating(small_run):
    adata, run = small_run
    group1 = np.zeros(adata.n_obs, bool)
    group1[:100] = True
    with pytest.raises(ValueError,
                       match=r"posterior samples for differential expression would need .* TB.*lower n_samples"):
        differential_expression(run, adata, group1=group1, group2=~group1, n_samples=10**9)


def test_predictive_check_refused_when_memory_is_short(small_run, monkeypatch):
    adata, run = small_run
    monkeypatch.setattr(memory, "MEMORY_FRACTION", 1e-9)
    with pytest.raises(ValueError, match="posterior predictive check would need .*check fewer cells"):
        posterior_predictive_check(run, adata, n_cells=100)
    monkeypatch.undo()
    check = posterior_predictive_check(run, adata, n_cells=100)
    assert check.n_cells == 100 and check.sampled_mean.shape == (adata.n_vars,)


def test_dense_h5ad_too_large_is_refused_sparse_is_never_densified(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.poisson(2.0, (50, 40)).astype(np.float32) + 1
    dense, sparse_path = tmp_path / "dense.h5ad", tmp_path / "sparse.h5ad"
    ad.AnnData(x, var=pd.DataFrame(index=[f"G{i}" for i in range(40)])).write_h5ad(dense)
    ad.AnnData(sparse.csr_matrix(x), var=pd.DataFrame(index=[f"G{i}" for i in range(40)])).write_h5ad(sparse_path)
    assert read_counts(dense).shape == (50, 40)
    monkeypatch.setattr(memory, "MEMORY_FRACTION", 1e-9)
    with pytest.raises(ValueError, match=r"'dense.h5ad' stores X dense, which would need 16.0 kB "
                                         r".*50 x 40 x 2.*scipy.sparse.csr_matrix"):
        read_counts(dense)
    assert read_counts(sparse_path).shape == (50, 40)  # sparse X: nothing dense to size


def test_archive_unpacking_to_more_than_memory_is_refused_before_reading(tmp_path, monkeypatch):
    import zipfile

    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("run/matrix.mtx", b"0" * 5_000_000)  # 5 MB of one byte: a tiny zip
        archive.writestr("run/features.tsv", b"CD3E\tCD3E\n")
        archive.writestr("run/barcodes.tsv", b"AAAC-1\n")
    assert path.stat().st_size < 50_000
    monkeypatch.setattr(memory, "available_memory", lambda: 4_000_000)
    with pytest.raises(ValueError, match=r"'bomb.zip' unpacks to 5.0 MB, more than the 2.0 MB this machine can spare: "
                                         r"upload the 10x .h5"):
        read_counts(path)
