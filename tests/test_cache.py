"""Run cache: a hit trains nothing and gives an identical latent, atomic folders, corrupt entries, locking, ids."""

from __future__ import annotations

import json
import threading

import anndata as ad
import numpy as np
import pytest
import torch

from engine.model.params import RunParams
from engine.runs.fit import fit
from engine.runs.records import (
    CorruptRunError,
    data_hash,
    delete_run,
    list_runs,
    run_id,
)
from engine.runs.storage import load_run

torch.set_num_threads(1)
PARAMS = RunParams(max_epochs=2, n_hidden=32)


@pytest.fixture(scope="module")
def small(kang_small_path) -> ad.AnnData:
    return ad.read_h5ad(kang_small_path)[::4].copy()


@pytest.fixture(scope="module")
def cached(small, tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("runs")
    run = fit(small.copy(), params=PARAMS, batch_key="donor", cache_dir=cache_dir, device="cpu")
    return cache_dir, run


def test_cache_hit_is_identical_and_trains_nothing(small, cached):
    cache_dir, first = cached
    adata = small.copy()
    epochs = []
    again = fit(adata, params=PARAMS, batch_key="donor", cache_dir=cache_dir, on_epoch=epochs.append)
    assert epochs == []
    assert again.run_id == first.run_id == run_id(small, params=PARAMS, batch_key="donor")
    np.testing.assert_array_equal(again.latent, first.latent)
    np.testing.assert_array_equal(adata.obsm["X_scVI"], first.latent)
    assert again.metrics == json.loads(json.dumps(first.metrics))
    assert list(again.history["validation_elbo"]) == pytest.approx(list(first.history["validation_elbo"]))
    for (name, a), b in zip(first.module.state_dict().items(), again.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_run_folder_contents_and_uns_are_h5ad_writable(small, cached, tmp_path):
    cache_dir, run = cached
    assert sorted(p.name for p in run.path.iterdir()) == ["history.csv", "latent.npy", "model.pt", "run.json"]
    info = json.loads((run.path / "run.json").read_text())
    assert info["data_hash"] == data_hash(small) and info["var_names"] == list(small.var_names)
    assert info["batch_categories"] == sorted(small.obs["donor"].astype(str).unique())
    adata = small.copy()
    fit(adata, params=PARAMS, batch_key="donor", cache_dir=cache_dir)
    adata.write_h5ad(tmp_path / "out.h5ad")
    back = ad.read_h5ad(tmp_path / "out.h5ad")
    assert back.uns["atlas_run"]["run_id"] == run.run_id
    assert back.uns["atlas_run"]["params"]["likelihood"] == "zinb"
    assert len(back.uns["atlas_run"]["history"]["epoch"]) == 2


def test_list_runs_skips_temporary_and_corrupt_folders(small, cached):
    cache_dir, run = cached
    (cache_dir / f".tmp-{run.run_id}-deadbeef").mkdir()
    (cache_dir / "0123456789abcdef0123").mkdir()  # a crash before run.json: not a run
    runs = list_runs(cache_dir)
    assert [r.run_id for r in runs] == [run.run_id]
    assert runs[0].params == PARAMS and runs[0].batch_key == "donor"
    assert list_runs(cache_dir, data_hash=data_hash(small))[0].run_id == run.run_id
    assert list_runs(cache_dir, data_hash="0" * 32) == []
    assert load_run(cache_dir, "no-such-run") is None


@pytest.mark.parametrize("damage", ["truncate_weights", "break_json"])
def test_corrupt_entry_raises_and_fit_replaces_it(small, tmp_path, damage):
    params = RunParams(max_epochs=1, n_hidden=16)
    run = fit(small.copy(), params=params, cache_dir=tmp_path)
    if damage == "truncate_weights":
        weights = run.path / "model.pt"
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        (run.path / "run.json").write_text("{not json")
    with pytest.raises(CorruptRunError, match="corrupt"):
        load_run(tmp_path, run.run_id)
    epochs = []
    again = fit(small.copy(), params=params, cache_dir=tmp_path, on_epoch=epochs.append)
    assert len(epochs) == 1  # retrained
    np.testing.assert_array_equal(again.latent, run.latent)  # same seed, same result
    assert load_run(tmp_path, run.run_id) is not None
    delete_run(tmp_path, run.run_id)
    assert load_run(tmp_path, run.run_id) is None


def test_run_id_depends_on_what_changes_the_result(small):
    base = run_id(small, params=PARAMS, batch_key="donor")
    assert run_id(small, params=RunParams(max_epochs=2, n_hidden=32, seed=1), batch_key="donor") != base
    assert run_id(small, params=PARAMS, batch_key=None) != base
    assert run_id(small, params=RunParams(max_epochs=3, n_hidden=32), batch_key="donor") != base
    # options the chosen model ignores do not change it
    poisson = RunParams(likelihood="poisson", max_epochs=2)
    assert run_id(small, params=poisson, batch_key=None) == run_id(
        small, params=RunParams(likelihood="poisson", max_epochs=2, dispersion="gene-cell", n_components=3),
        batch_key=None
    )
    changed = small.copy()
    changed.X = changed.X.copy()
    changed.X.data[0] += 1
    assert data_hash(changed) != data_hash(small)
    renamed = small.copy()
    renamed.var_names = [f"g{i}" for i in range(renamed.n_vars)]
    assert data_hash(renamed) != data_hash(small)


def test_data_hash_is_that_of_the_arrays_bytes(small):
    # the arrays are hashed in place (no .tobytes() copy of a 1M-cell matrix): the hash, and so every
    # cached run's id, must stay what it was
    import hashlib

    import scipy.sparse as sp

    counts = sp.csr_matrix(small.X, dtype=np.float32)
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(counts.shape, dtype=np.int64).tobytes())
    h.update(counts.indptr.astype(np.int64).tobytes())
    h.update(counts.indices.astype(np.int32).tobytes())
    h.update(counts.data.astype(np.float32).tobytes())
    h.update(json.dumps([str(v) for v in small.var_names]).encode())
    assert data_hash(small) == h.hexdigest()


def test_two_concurrent_fits_train_once(small, tmp_path):
    params = RunParams(max_epochs=2, n_hidden=16, seed=7)
    epochs: list = []
    results = {}

    def worker(name: str) -> None:
        results[name] = fit(small.copy(), params=params, cache_dir=tmp_path, on_epoch=epochs.append)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(epochs) == 2  # one training of two epochs, the other caller loaded it
    np.testing.assert_array_equal(results["a"].latent, results["b"].latent)
