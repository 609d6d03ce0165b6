"""``fit``: train (or load from the run cache) an scVI-style model on an AnnData.

::

    from engine.runs.fit import fit
    from engine.model.params import RunParams
    run = fit(adata, params=RunParams(likelihood="nb", max_epochs=50), batch_key="donor",
              cache_dir=".atlas/runs")
    adata.obsm["X_scVI"]          # posterior means, (n_cells, n_latent)
    adata.uns["atlas_run"]        # run id, parameters, metrics, history
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

import engine
from engine.checks import obs_column
from engine.model.inference import posterior_means
from engine.model.params import COUNT_LIKELIHOODS, RunParams
from engine.model.training import EpochReport, evaluate, train
from engine.model.vae import EVAL_BATCH_SIZE, VAE, iterate_minibatches
from engine.reading.raw_counts import check_counts
from engine.runs.records import (
    CorruptRunError,
    Run,
    cells_hash,
    clean_stale,
    counts_matrix,
    data_hash,
    delete_run,
    run_id_from_hash,
    run_lock,
    training_marker,
)
from engine.runs.storage import load_run, save_run

logger = logging.getLogger(__name__)

__all__ = ["fit", "training_inputs", "write_to_adata"]

# History longer than this many epochs is left out of uns["atlas_run"] (it stays in the cache).
MAX_HISTORY_IN_UNS = 10_000


def training_inputs(
    adata: AnnData, *, params: RunParams, batch_key: str | None
) -> tuple[sp.csr_matrix, np.ndarray, list[str] | None]:
    """Checked counts (CSR float32), batch codes and batch categories for training on ``adata``."""
    counts = counts_matrix(adata)
    source = "layers['counts']" if "counts" in adata.layers else "X"
    if params.likelihood in COUNT_LIKELIHOODS:
        check = check_counts(counts, name=source)
        if not check.is_counts:
            raise ValueError(
                f"{check.message} (or choose likelihood='gaussian', which models log-normalised data)"
            )
    else:
        if counts.nnz and (not np.isfinite(counts.data).all() or counts.data.min() < 0):
            raise ValueError(f"{source} holds negative or non-finite values: the gaussian likelihood needs "
                             "non-negative counts (it normalises them itself)")
    empty = int((np.diff(counts.indptr) == 0).sum())
    if empty:
        raise ValueError(
            f"{empty:,} cells have no counts: filter them first, e.g. sc.pp.filter_cells(adata, min_counts=1)"
        )
    if batch_key is None:
        return counts, np.zeros(adata.n_obs, dtype=np.int64), None
    column = obs_column(adata, batch_key, role="batch_key", allow_missing=False)
    labels = column.astype(str)
    if isinstance(column.dtype, pd.CategoricalDtype):
        categories = [str(c) for c in column.cat.categories if str(c) in set(labels)]
    else:
        categories = sorted(set(labels))
    lookup = {c: i for i, c in enumerate(categories)}
    codes = labels.map(lookup).to_numpy(dtype=np.int64)
    return counts, codes, categories


def fit(
    adata: AnnData,
    *,
    params: RunParams = RunParams(),  # noqa: B008 - RunParams is a frozen dataclass of scalars: an immutable default
    batch_key: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    on_preview: Callable[[int, np.ndarray], None] | None = None,
    preview_every: int = 5,
) -> Run:
    """Train a model on the counts of ``adata`` (or load the identical run from ``cache_dir``).

    Counts come from ``layers["counts"]``, else ``X``; count likelihoods refuse anything but raw
    counts. With ``cache_dir`` the run is looked up by :func:`engine.runs.records.run_id` first (under a
    file lock, so concurrent callers train it once) and saved atomically after training; a corrupt
    cached run is retrained and replaced. ``on_epoch`` / ``should_stop``: see
    :func:`engine.model.training.train` (cancelling raises :class:`~engine.model.training.TrainingCancelled` and
    saves nothing). ``on_preview(epoch, layout)`` gets, every ``preview_every`` epochs, a quick UMAP
    of the current latent of the cells :func:`engine.analysis.preview.preview_cells` picks, in that
    order (a live preview; not called when the run comes from the cache). Writes
    ``adata.obsm["X_scVI"]`` and ``adata.uns["atlas_run"]``.
    """
    counts, codes, categories = training_inputs(adata, params=params, batch_key=batch_key)
    var_names = [str(v) for v in adata.var_names]
    dhash = data_hash(adata)
    labels = None if categories is None else [categories[c] for c in codes]
    rid = run_id_from_hash(dhash, params=params, batch_labels=labels)
    start = time.perf_counter()
    on_model = None if on_preview is None else _previewer(counts, codes, on_preview, every=preview_every)
    if cache_dir is None:
        run = _train_run(counts, codes, categories, var_names, params, rid, dhash, batch_key, on_epoch, should_stop,
                         device, on_model)
        run.metrics["cells_hash"] = cells_hash(adata)
    else:
        clean_stale(cache_dir)  # folders half-written by a killed process
        with run_lock(cache_dir, rid):
            try:
                run = load_run(cache_dir, rid)
            except CorruptRunError:
                delete_run(cache_dir, rid)
                run = None
            if run is None:
                with training_marker(cache_dir, rid, data_hash_=dhash, params=params,
                                     batch_key=batch_key, n_cells=adata.n_obs):
                    run = _train_run(
                        counts, codes, categories, var_names, params, rid, dhash, batch_key, on_epoch, should_stop,
                        device, on_model,
                    )
                    run.metrics["cells_hash"] = cells_hash(adata)
                    save_run(run, cache_dir, data_hash_=dhash)
            else:
                logger.info("run %s loaded from the cache in %.2f s", rid, time.perf_counter() - start)
    write_to_adata(adata, run)
    return run


def _previewer(
    counts: sp.csr_matrix, codes: np.ndarray, on_preview: Callable[[int, np.ndarray], None], *, every: int
) -> Callable[[int, VAE], None]:
    """The ``on_model`` hook of a live preview: every ``every`` epochs, a quick UMAP of a subsample's latent."""
    from engine.analysis.preview import preview_cells, preview_layout

    cells = preview_cells(counts.shape[0])
    sub_counts, sub_codes = counts[cells], codes[cells]
    last: np.ndarray | None = None  # the previous layout, so the next one continues from it

    def on_model(epoch: int, module: VAE) -> None:
        nonlocal last
        if epoch % max(every, 1):
            return
        latent = posterior_means(module, sub_counts, sub_codes)  # eval mode; the next epoch resets it
        if not np.isfinite(latent).all():
            return
        last = preview_layout(latent, start=last)
        on_preview(epoch, last)

    return on_model


def _train_run(
    counts: sp.csr_matrix,
    codes: np.ndarray,
    categories: list[str] | None,
    var_names: list[str],
    params: RunParams,
    rid: str,
    dhash: str,
    batch_key: str | None,
    on_epoch: Callable[[EpochReport], None] | None,
    should_stop: Callable[[], bool] | None,
    device: str,
    on_model: Callable[[int, VAE], None] | None = None,
) -> Run:
    n_batch = len(categories) if categories else 1
    logger.info("training run %s: %s cells x %s genes, %d batches, %s", rid, f"{counts.shape[0]:,}",
                f"{counts.shape[1]:,}", n_batch, params.likelihood)
    result = train(counts, codes, n_batch, params, on_epoch=on_epoch, should_stop=should_stop, device=device,
                   on_model=on_model)
    logger.info("run %s trained: %d epochs in %.1f s (best epoch %s)", rid, result.n_epochs_trained,
                result.seconds, result.best_epoch)
    module = result.module
    elbo = rec = kl = None
    if len(result.validation_indices):
        device_ = next(module.parameters()).device
        mbs = list(iterate_minibatches(counts, codes, result.validation_indices, EVAL_BATCH_SIZE, device_))
        # seed 0 as in engine.model.inference.heldout_elbo, so both report the same number
        elbo, rec, kl = evaluate(module, mbs, torch.Generator(device=device_).manual_seed(0))
    used_device = str(next(module.parameters()).device)
    module = module.cpu().eval()
    latent = posterior_means(module, counts, codes)
    history = pd.DataFrame([vars(r) for r in result.history])
    metrics = {
        "seed": params.seed,
        "versions": {"torch": str(torch.__version__), "numpy": str(np.__version__), "engine": str(engine.__version__)},
        "train_seconds": result.seconds,
        "seconds_per_epoch": float(history["seconds"].mean()),
        "n_epochs_trained": result.n_epochs_trained,
        "best_epoch": result.best_epoch,
        "lr": result.lr,
        "device": used_device,
        "elbo_validation": elbo,
        "reconstruction_validation": rec,
        "kl_validation": kl,
        "n_cells": int(counts.shape[0]),
        "n_genes": int(counts.shape[1]),
        "data_hash": dhash,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if not np.isfinite(latent).all():
        raise ValueError("training produced a non-finite latent space; nothing was saved (try a lower lr)")
    return Run(
        run_id=rid,
        params=params,
        batch_key=batch_key,
        batch_categories=categories,
        var_names=var_names,
        metrics=metrics,
        history=history,
        latent=latent,
        module=module,
        path=None,
    )


def write_to_adata(adata: AnnData, run: Run) -> None:
    """Store ``run.latent`` in ``obsm["X_scVI"]`` and the provenance in ``uns["atlas_run"]`` (h5ad-safe).

    A run imported from a file (no model) writes its representation back where it came from
    (``obsm["X_scVI"]`` or ``obsm["X_pca"]``) and ``uns["atlas_run"]["model"] = False``.
    """
    representation = (run.metrics.get("imported") or {}).get("representation", "X_scVI")
    adata.obsm[representation] = run.latent.astype(np.float32)
    info = {
        "run_id": run.run_id,
        "metrics": _without_none(run.metrics),
    }
    if run.params is not None:
        info["params"] = _without_none(run.params.to_dict())
    else:
        info["model"] = False
    if run.batch_key is not None:
        info["batch_key"] = run.batch_key
    if len(run.history) <= MAX_HISTORY_IN_UNS:
        info["history"] = {col: run.history[col].to_numpy(dtype=float) for col in run.history.columns}
    adata.uns["atlas_run"] = info


def _without_none(values: dict) -> dict:
    # h5ad cannot store None: leave such entries out (a reader treats absent as "not applicable")
    return {k: (_without_none(v) if isinstance(v, dict) else v) for k, v in values.items() if v is not None}
