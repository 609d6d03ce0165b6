"""Property-based tests (hypothesis) of the readers and the log-likelihoods.

Readers never fail with anything but a ValueError, and the log-likelihoods stay finite (and are
log-probabilities, <= 0) over the whole valid parameter range.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse
from scipy.io import mmwrite

from engine.model.likelihoods import (
    log_nb_positive,
    log_normal,
    log_poisson,
    log_zinb_positive,
    log_zip_positive,
)
from engine.reading.load import read_counts

READER_SETTINGS = settings(max_examples=25, deadline=None,
                           suppress_health_check=[HealthCheck.function_scoped_fixture])
SUFFIXES = [".h5ad", ".h5", ".loom", ".csv", ".tsv", ".txt.gz", ".zip", ".tar.gz", ".mtx"]


def read_or_refuse(path: Path) -> ad.AnnData | None:
    """read_counts either returns a valid AnnData or raises ValueError with a sentence; nothing else."""
    try:
        adata = read_counts(path)
    except ValueError as err:
        message = str(err)
        assert message and "Traceback" not in message and len(message) < 2000, message
        return None
    assert sparse.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    assert adata.n_obs >= 2 and adata.n_vars >= 2
    assert adata.obs_names.is_unique and adata.var_names.is_unique
    return adata


# ------------------------------------------------------------------------------------ random bytes
@pytest.mark.parametrize("suffix", SUFFIXES)
@READER_SETTINGS
@given(data=st.binary(min_size=1, max_size=2048))
def test_random_bytes_are_refused_with_a_value_error(tmp_path_factory, suffix, data):
    path = tmp_path_factory.mktemp("random") / f"file{suffix}"
    path.write_bytes(data)
    read_or_refuse(path)


@pytest.mark.parametrize("magic", [b"\x89HDF\r\n\x1a\n", b"PK\x03\x04", b"\x1f\x8b\x08\x00"])
@READER_SETTINGS
@given(tail=st.binary(max_size=1024))
def test_random_bytes_behind_a_real_magic_number(tmp_path_factory, magic, tail):
    folder = tmp_path_factory.mktemp("magic")
    for suffix in (".h5ad", ".zip", ".csv.gz"):
        path = folder / f"file{suffix}"
        path.write_bytes(magic + tail)
        read_or_refuse(path)


# ------------------------------------------------------------------------------- truncated files
def _counts(n_cells: int = 12, n_genes: int = 9) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(rng.poisson(2.0, (n_cells, n_genes)) + 1,
                        index=["".join(rng.choice(list("ACGT"), 16)) + "-1" for _ in range(n_cells)],
                        columns=["CD3E", "MS4A1", "LYZ", "NKG7", "GNLY", "CD14", "FCGR3A", "PPBP", "CST3"][:n_genes])


def _mtx_bytes(frame: pd.DataFrame) -> dict[str, bytes]:
    buffer = io.BytesIO()
    mmwrite(buffer, sparse.coo_matrix(frame.to_numpy().T.astype(float)))
    genes = "".join(f"{g}\t{g}\tGene Expression\n" for g in frame.columns).encode()
    barcodes = "".join(f"{b}\n" for b in frame.index).encode()
    return {"matrix.mtx": buffer.getvalue(), "features.tsv": genes, "barcodes.tsv": barcodes}


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("valid")
    frame = _counts()
    files = {}
    adata = ad.AnnData(sparse.csr_matrix(frame.to_numpy(dtype=np.float32)),
                       obs=pd.DataFrame(index=frame.index), var=pd.DataFrame(index=frame.columns))
    adata.write_h5ad(folder / "x.h5ad")
    adata.write_loom(folder / "x.loom")
    files[".h5ad"] = (folder / "x.h5ad").read_bytes()
    files[".loom"] = (folder / "x.loom").read_bytes()
    files[".csv"] = frame.to_csv().encode()
    files[".csv.gz"] = gzip.compress(frame.to_csv().encode())
    members = _mtx_bytes(frame)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        for name, data in members.items():
            archive.writestr(f"filtered_feature_bc_matrix/{name}", data)
    files[".zip"] = zipped.getvalue()
    tarred = io.BytesIO()
    with tarfile.open(fileobj=tarred, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(f"run/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    files[".tar.gz"] = tarred.getvalue()
    for suffix, data in files.items():  # the intact files read
        (folder / f"ok{suffix}").write_bytes(data)
        assert read_counts(folder / f"ok{suffix}").shape == (12, 9), suffix
    return files


@pytest.mark.parametrize("suffix", [".h5ad", ".loom", ".csv", ".csv.gz", ".zip", ".tar.gz"])
@READER_SETTINGS
@given(fraction=st.floats(0.0, 0.999))
def test_truncated_valid_files_are_refused_or_read_consistently(tmp_path_factory, valid_files, suffix, fraction):
    data = valid_files[suffix]
    path = tmp_path_factory.mktemp("cut") / f"cut{suffix}"
    path.write_bytes(data[: int(len(data) * fraction)])
    adata = read_or_refuse(path)
    if adata is not None:  # a text table cut between rows is a smaller, valid table
        assert adata.n_vars <= 9 and adata.n_obs <= 12


# ------------------------------------------------------------------------------ random CSV shapes
@READER_SETTINGS
@given(
    shape=st.tuples(st.integers(0, 8), st.integers(0, 8)),
    seed=st.integers(0, 2**16),
    zero_fraction=st.floats(0.0, 1.0),
    sep=st.sampled_from([",", "\t"]),
)
def test_random_csv_shapes(tmp_path_factory, shape, seed, zero_fraction, sep):
    n_rows, n_cols = shape
    rng = np.random.default_rng(seed)
    values = rng.poisson(3.0, shape) * (rng.random(shape) >= zero_fraction)
    frame = pd.DataFrame(values, index=[f"cell{i}" for i in range(n_rows)],
                         columns=[f"GENE{j}" for j in range(n_cols)])
    path = tmp_path_factory.mktemp("csv") / ("t.csv" if sep == "," else "t.tsv")
    frame.to_csv(path, sep=sep)
    adata = read_or_refuse(path)
    rows, cols = int((values.sum(axis=1) > 0).sum()), int((values.sum(axis=0) > 0).sum())
    if adata is None:
        assert min(rows, cols) < 2 or n_rows == 0 or n_cols == 0
        return
    assert adata.X.sum() == values.sum()  # no count lost or invented, whatever the orientation
    assert adata.shape in {(rows, cols), (cols, rows)}


# --------------------------------------------------------------------------------- likelihoods
def tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


counts = st.lists(st.integers(0, 100_000), min_size=1, max_size=16)
LIKELIHOOD_SETTINGS = settings(max_examples=200, deadline=None)


def positive(lo: float, hi: float):
    """Log-uniform floats in [lo, hi]: covers every order of magnitude, not just the largest."""
    return st.floats(np.log10(lo), np.log10(hi)).map(lambda e: float(10.0**e))


@LIKELIHOOD_SETTINGS
@given(x=counts, mu=positive(1e-6, 1e6), theta=positive(1e-4, 1e8), zi=st.floats(-30, 30))
def test_count_log_likelihoods_are_finite_log_probabilities(x, mu, theta, zi):
    x = tensor(x)
    mu_t, theta_t, zi_t = (torch.full_like(x, v) for v in (mu, theta, zi))
    for name, value in {
        "nb": log_nb_positive(x, mu_t, theta_t),
        "zinb": log_zinb_positive(x, mu_t, theta_t, zi_t),
        "poisson": log_poisson(x, mu_t),
        "zip": log_zip_positive(x, mu_t, zi_t),
    }.items():
        assert torch.isfinite(value).all(), (name, x, mu, theta, zi, value)
        assert (value <= 1e-9).all(), (name, x, mu, theta, zi, value)


@LIKELIHOOD_SETTINGS
@given(mu=positive(1e-3, 1e3), theta=positive(1e-2, 1e4), zi=st.floats(-10, 10))
def test_count_probabilities_sum_to_at_most_one(mu, theta, zi):
    # summed over 0..K they approach 1 from below; the eps=1e-8 guarding the logs may add O(1e-8)
    x = torch.arange(0, 20_000, dtype=torch.float64)
    for value in (log_nb_positive(x, tensor(mu), tensor(theta)),
                  log_zinb_positive(x, tensor(mu), tensor(theta), tensor(zi)),
                  log_poisson(x, tensor(mu)), log_zip_positive(x, tensor(mu), tensor(zi))):
        assert float(torch.logsumexp(value, 0)) <= 1e-6


@LIKELIHOOD_SETTINGS
@given(x=st.floats(-50, 50), mean=st.floats(-50, 50), var=positive(1e-6, 1e6))
def test_gaussian_log_density_is_finite(x, mean, var):
    value = log_normal(tensor([x]), tensor([mean]), tensor([var]))
    assert torch.isfinite(value).all()
    assert float(value) <= -0.5 * np.log(2 * np.pi * var) + 1e-9  # at most the density at the mean
