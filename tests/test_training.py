"""Training loop: learns, reproducible, cancellable, refuses to keep a diverged model."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from engine.model.params import RunParams
from engine.model.training import (
    EpochReport,
    TrainingCancelled,
    TrainingDiverged,
    split_cells,
    train,
)
from engine.runs.fit import fit

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small(kang_small_path) -> ad.AnnData:
    adata = ad.read_h5ad(kang_small_path)
    return adata[::3].copy()  # 382 cells, every cell type, every donor


def codes(adata):
    return adata.obs["donor"].astype("category").cat.codes.to_numpy(), adata.obs["donor"].nunique()


def test_training_improves_the_elbo(small):
    reports: list[EpochReport] = []
    batch, n_batch = codes(small)
    result = train(small.X, batch, n_batch, RunParams(max_epochs=8, kl_warmup_epochs=0), on_epoch=reports.append,
                   device="cpu")
    assert [r.epoch for r in reports] == list(range(1, 9)) and all(r.n_epochs == 8 for r in reports)
    assert reports[-1].train_elbo > reports[0].train_elbo + 50
    assert reports[-1].validation_elbo > reports[0].validation_elbo + 50
    last = reports[-1]
    assert last.reconstruction - last.kl == pytest.approx(last.validation_elbo, rel=1e-5)
    assert last.kl > 0 and last.seconds > 0
    assert not result.module.training
    assert len(result.validation_indices) == round(0.1 * small.n_obs)
    assert len(np.intersect1d(result.train_indices, result.validation_indices)) == 0


def test_same_seed_same_latent_different_seed_different(small):
    params = RunParams(max_epochs=2, seed=3)
    a = fit(small.copy(), params=params, batch_key="donor", device="cpu")
    torch.manual_seed(999)  # the global RNG must not matter
    b = fit(small.copy(), params=params, batch_key="donor", device="cpu")
    c = fit(small.copy(), params=RunParams(max_epochs=2, seed=4), batch_key="donor", device="cpu")
    np.testing.assert_array_equal(a.latent, b.latent)
    assert not np.allclose(a.latent, c.latent)


def test_threads_do_not_change_the_result_and_are_restored(small):
    """On CPU, torch ops run on one thread and the likelihood kernel on all of them.

    Row chunks are computed exactly as one; the caller's thread setting comes back afterwards, also on
    cancel.
    """
    batch, n_batch = codes(small)
    params = RunParams(max_epochs=2, seed=5)
    one = train(small.X, batch, n_batch, params, device="cpu")
    torch.set_num_threads(2)
    try:
        seen = []
        two = train(small.X, batch, n_batch, params, device="cpu",
                    on_epoch=lambda r: seen.append(torch.get_num_threads()))
        assert seen == [1, 1] and torch.get_num_threads() == 2
        with pytest.raises(TrainingCancelled):
            train(small.X, batch, n_batch, params, device="cpu", should_stop=lambda: True)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert [r.validation_elbo for r in one.history] == [r.validation_elbo for r in two.history]
    for a, b in zip(one.module.state_dict().values(), two.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_split_is_seeded_and_disjoint():
    tr, va = split_cells(100, 0.1, seed=0)
    tr2, va2 = split_cells(100, 0.1, seed=0)
    assert np.array_equal(va, va2) and len(va) == 10 and len(np.union1d(tr, va)) == 100
    assert not np.array_equal(va, split_cells(100, 0.1, seed=1)[1])


def test_cancel_raises_and_leaves_no_run_folder(small, tmp_path):
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 3  # after three minibatches

    with pytest.raises(TrainingCancelled):
        fit(small.copy(), params=RunParams(max_epochs=5), cache_dir=tmp_path, should_stop=should_stop, device="cpu")
    assert calls["n"] == 4
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_diverging_training_raises_after_retry_and_saves_nothing(small, tmp_path):
    # integer-valued but absurd counts: the library size overflows float32, the loss is not finite
    bad = small.copy()
    bad.X = sp.csr_matrix(small.X, dtype=np.float32, copy=True)
    bad.X.data[:] = 3e38
    epochs: list[EpochReport] = []
    with pytest.raises(TrainingDiverged, match="learning rate") as err:
        fit(bad, params=RunParams(max_epochs=2), cache_dir=tmp_path, on_epoch=epochs.append, device="cpu")
    assert "0.0003" in str(err.value)  # the retry at lr / 10 (default 3e-3) is reported
    assert isinstance(err.value, ValueError)
    assert epochs == []
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []


def test_early_stopping_stops_and_keeps_best_epoch(small):
    batch, n_batch = codes(small)
    params = RunParams(max_epochs=60, patience=2, lr=0.05, kl_warmup_epochs=0)
    result = train(small.X, batch, n_batch, params, device="cpu")
    history = [r.validation_elbo for r in result.history]
    best = int(np.argmax(history)) + 1
    assert result.best_epoch == best
    assert len(history) == best + 2 < 60  # stopped patience epochs after the best


def test_cuda_request_without_gpu_is_a_clear_error(small):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        fit(small.copy(), params=RunParams(max_epochs=1), device="cuda")


def test_run_params_validation_and_round_trip():
    with pytest.raises(ValueError, match="'zinb', 'nb', 'poisson', 'zip', 'gaussian'"):
        RunParams(likelihood="negbin")
    with pytest.raises(ValueError, match="'gene', 'gene-batch', 'gene-cell'"):
        RunParams(dispersion="cell")
    with pytest.raises(ValueError, match="n_latent"):
        RunParams(n_latent=0)
    with pytest.raises(ValueError, match="library='learned'"):
        RunParams(likelihood="gaussian", library="learned")
    with pytest.raises(ValueError, match="validation_fraction > 0"):
        RunParams(validation_fraction=0.0)
    params = RunParams(likelihood="nb", prior="mixture", max_epochs=7, seed=3)
    assert RunParams.from_dict(params.to_dict()) == params
    with pytest.raises(ValueError, match="unknown RunParams"):
        RunParams.from_dict({**params.to_dict(), "epochs": 3})
    # the fast schedule: 490,000 cell passes at lr 3e-3, never more epochs than scvi-tools' rule
    assert RunParams().resolved_max_epochs(12_261) == 40 and RunParams().resolved_lr() == 3e-3
    assert RunParams().resolved_max_epochs(1_556) == 315
    assert RunParams().resolved_max_epochs(1_000) == 400 and RunParams().resolved_max_epochs(10**6) == 1
    assert RunParams(lr=1e-4).resolved_lr() == 1e-4
    # the thorough schedule is scvi-tools': 400 epochs up to 20k cells, fewer above, lr 1e-3
    thorough = RunParams(schedule="thorough")
    assert thorough.resolved_max_epochs(12_261) == 400 and thorough.resolved_max_epochs(100_000) == 80
    assert thorough.resolved_lr() == 1e-3
    # the schedule is part of the cache key only when it decides something
    assert "schedule" in RunParams().relevant(has_batch=False)
    assert "schedule" not in RunParams(max_epochs=10, lr=1e-3).relevant(has_batch=False)
    assert RunParams(max_epochs=10).relevant(has_batch=False) != RunParams(
        max_epochs=10, schedule="thorough").relevant(has_batch=False)  # the lr differs
    # warm-up capped at half the run
    assert RunParams().resolved_kl_warmup_epochs(30) == 15
    assert RunParams().resolved_kl_warmup_epochs(1000) == 400
    assert RunParams(kl_warmup_epochs=400).resolved_kl_warmup_epochs(30) == 400


def test_step_threads_leave_other_threads_alone():
    """Training sets torch's threads to 1 on its own thread; another thread must keep its setting.

    Such a thread is another session's job or the server. This holds for ATen's OpenMP backend
    (per-thread setting).
    """
    import threading

    from engine.model.training import _step_threads, _threads_are_per_thread

    if not _threads_are_per_thread():
        pytest.skip("this torch build's thread setting is process-wide; training leaves it alone")
    torch.set_num_threads(2)
    inside, release, seen = threading.Event(), threading.Event(), {}

    def job():
        with _step_threads(torch.device("cpu")) as kernel_threads:
            seen["job"], seen["kernel"] = torch.get_num_threads(), kernel_threads
            inside.set()
            release.wait(10)
        seen["job_after"] = torch.get_num_threads()

    worker = threading.Thread(target=job)
    worker.start()
    assert inside.wait(10)
    seen["other"] = torch.get_num_threads()
    release.set()
    worker.join()
    assert seen == {"job": 1, "kernel": 2, "other": 2, "job_after": 2}


def test_fit_shows_a_live_preview_of_the_latent_as_it_trains(kang_small_path):
    """Every few epochs, a quick UMAP of the same subsample: structure emerges while training runs."""
    from sklearn.metrics import silhouette_score

    from engine.analysis.preview import preview_cells

    adata = ad.read_h5ad(kang_small_path)
    adata.layers["counts"] = adata.X.copy()
    seen: list[tuple[int, np.ndarray]] = []
    fit(adata, params=RunParams(max_epochs=12, seed=0), on_preview=lambda e, xy: seen.append((e, xy)),
        preview_every=4, device="cpu")
    assert [epoch for epoch, _ in seen] == [4, 8, 12]
    cells = preview_cells(adata.n_obs)
    assert all(xy.shape == (len(cells), 2) and np.isfinite(xy).all() for _, xy in seen)
    # the last preview separates the cell types (it is the trained latent, laid out)
    labels = adata.obs["cell_type"].to_numpy()[cells]
    assert silhouette_score(seen[-1][1], labels) > 0.0
    # each layout continues from the previous one: consecutive pictures stay close
    moved = np.linalg.norm(seen[2][1] - seen[1][1], axis=1).mean()
    span = np.ptp(seen[2][1], axis=0).max()
    assert moved < span
