"""Long computations of the pages on the Dask cluster: first view, t-SNE, batch panel, DE, markers.

Training already runs on the cluster's workers (:mod:`dashboard.jobs`). These computations take
seconds at 12k cells but minutes at atlas scale, so they go there too, and the server keeps
answering other sessions meanwhile: the latent's kNN graph with its UMAP (the graph comes back and
stays in the server's cache for Leiden), the t-SNE, the batch panel (uncorrected PCA, graph and
UMAP; the batch-mixing scores), a two-group DE and the markers of every group (both load the run
from the shared run cache by its id, once per worker process). What stays in the server: the steps
that must answer in well under a second from its caches (colours, Leiden at a new resolution on the
cached graph, DE re-thresholding).

:func:`run_long` submits ``job(*args, on_progress=...)`` to the job board's cluster when it is up,
and follows the worker's progress through Dask events (the latest fraction and step is all a
progress bar needs); with no cluster ready (it starts with the first visit to the Train page), or
with ``ATLAS_LONG_JOBS=server``, it runs the job here. The job functions below are module-level and
import no Streamlit, so a worker imports them by name.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np

if TYPE_CHECKING:
    from dashboard.compute import Compute

    Progress = Callable[[float, str], None]  # (fraction done, what is being done)

logger = logging.getLogger(__name__)

WHERE_ENV = "ATLAS_LONG_JOBS"  # "cluster" (default) or "server"
POLL_SECONDS = 0.25
RUNS_PER_WORKER = 4  # loaded runs a worker keeps for the next DE or markers job
# A job whose inputs are larger than this runs in the server, where they already are: pickling a
# 1M-cell atlas (4 GB) to a worker took 59 s for a DE that computes in 1.4 s, and held extra copies.
SHIP_LIMIT_BYTES = 512 * 2**20


def _matrix_bytes(matrix: Any) -> int:
    if hasattr(matrix, "data") and hasattr(matrix, "indices"):  # scipy sparse
        return int(matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes)
    return int(getattr(matrix, "nbytes", 0))


def payload_bytes(*values: Any) -> int:
    """About how many bytes sending ``values`` to a worker would pickle (arrays and AnnData counts).

    A view counts its share of its parent's matrices (reading ``view.X`` would copy them).
    """
    total = 0
    for value in values:
        if isinstance(value, ad.AnnData):
            base, share = value, 1.0
            if value.is_view:
                base = value._adata_ref  # the parent; anndata keeps it for views
                share = (value.n_obs / max(base.n_obs, 1)) * (value.n_vars / max(base.n_vars, 1))
            matrices = {id(m): m for m in (base.X, *base.layers.values()) if m is not None}
            total += int(share * sum(_matrix_bytes(m) for m in matrices.values()))
        elif isinstance(value, np.ndarray):
            total += value.nbytes
    return total



# ---- the jobs (run on a worker, or here) ---------------------------------------------------------
def first_view_job(latent: np.ndarray, *, seed: int, on_progress: Progress) -> tuple:
    """The kNN graph of a latent space and its UMAP: ``(distances, connectivities, params, coords)``."""
    from engine.analysis import embedding as eemb
    from engine.analysis.neighbors import neighbors

    adata = ad.AnnData(obsm={"X_scVI": np.asarray(latent, dtype=np.float32)}, shape=(len(latent), 0))
    on_progress(0.0, "neighbour graph")
    neighbors(adata, use_rep="X_scVI", seed=seed)
    eemb.umap(adata, seed=seed, on_progress=lambda f: on_progress(0.3 + 0.7 * f, "layout"))
    return (adata.obsp["distances"], adata.obsp["connectivities"], dict(adata.uns["neighbors"]["params"]),
            np.asarray(adata.obsm["X_umap"], dtype=np.float32))


def graph_job(latent: np.ndarray, *, seed: int, on_progress: Progress) -> tuple:
    """The kNN graph of a latent space without its UMAP (for a run that brings its own).

    Returns ``(distances, connectivities, params)``.
    """
    from engine.analysis.neighbors import neighbors

    adata = ad.AnnData(obsm={"X_scVI": np.asarray(latent, dtype=np.float32)}, shape=(len(latent), 0))
    on_progress(0.0, "neighbour graph")
    neighbors(adata, use_rep="X_scVI", seed=seed)
    return adata.obsp["distances"], adata.obsp["connectivities"], dict(adata.uns["neighbors"]["params"])


def tsne_job(latent: np.ndarray, *, seed: int, subsample: int | None = None, on_progress: Progress) -> np.ndarray:
    """t-SNE of a latent space (cells x dimensions): ``(n_cells, 2)`` float32 (``subsample``: see engine's tsne)."""
    from engine.analysis import embedding as eemb

    adata = ad.AnnData(obsm={"X_scVI": np.asarray(latent, dtype=np.float32)}, shape=(len(latent), 0))
    eemb.tsne(adata, use_rep="X_scVI", seed=seed, subsample=subsample, on_progress=lambda f: on_progress(f, ""))
    return np.asarray(adata.obsm["X_tsne"], dtype=np.float32)


def uncorrected_job(adata: ad.AnnData, *, seed: int, on_progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    """PCA of the log-normalised counts (``layers["counts"]``) and the UMAP of its kNN graph."""
    from engine.analysis import embedding as eemb
    from engine.analysis.neighbors import neighbors

    on_progress(0.0, "PCA of the log-normalised counts")
    eemb.pca_uncorrected(adata, layer="counts", seed=seed)
    adata.obsm["X_pca"] = np.asarray(adata.obsm["X_pca"], dtype=np.float32)
    on_progress(0.3, "neighbour graph")
    neighbors(adata, use_rep="X_pca", seed=seed)
    eemb.umap(adata, seed=seed, on_progress=lambda f: on_progress(0.5 + 0.5 * f, "UMAP layout"))
    return adata.obsm["X_pca"], np.asarray(adata.obsm["X_umap"], dtype=np.float32)


def batch_metrics_job(rep: np.ndarray, batch: np.ndarray, labels: np.ndarray, *, on_progress: Progress):
    """Batch-mixing scores (:func:`engine.analysis.batch_metrics.batch_mixing`) of a representation."""
    import pandas as pd

    from engine.analysis.batch_metrics import batch_mixing

    adata = ad.AnnData(obs=pd.DataFrame({"batch": pd.Categorical(batch), "label": pd.Categorical(labels)},
                                        index=pd.RangeIndex(len(batch)).astype(str)))
    adata.obsm["rep"] = np.asarray(rep, dtype=np.float32)
    on_progress(0.1, "neighbours, entropy, iLISI and silhouettes")
    return batch_mixing(adata, rep="rep", batch_key="batch", label_key="label")


def _run(cache_dir: str, run_id: str):
    """A cached run: loaded once per worker process (kept on the worker), or the server's cached copy."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not on a worker: the server's own cache of loaded runs
        from dashboard.training import load_run

        run = load_run(run_id)
    else:
        from engine.runs.storage import load_run

        runs = worker.__dict__.setdefault("_atlas_runs", {})  # this worker process's runs (never changed)
        if (cache_dir, run_id) not in runs:
            if len(runs) >= RUNS_PER_WORKER:
                runs.pop(next(iter(runs)))
            runs[cache_dir, run_id] = load_run(cache_dir, run_id)
        run = runs[cache_dir, run_id]
    if run is None:
        raise ValueError(f"Run {run_id} is not in the run cache {cache_dir}: train it again on the Train page.")
    return run


def markers_job(cache_dir: str, run_id: str, adata: ad.AnnData, *, groupby: str, on_progress: Progress):
    """Markers of every group of ``adata.obs[groupby]`` with the cached run ``run_id`` (loaded here)."""
    from engine.analysis.markers import find_markers

    return find_markers(_run(cache_dir, run_id), adata, groupby=groupby,
                        on_progress=lambda done: on_progress(done, "scVI DE and a Wilcoxon test per group"))


def de_job(cache_dir: str, run_id: str, adata: ad.AnnData, *, group1: np.ndarray, group2: np.ndarray,
           mode: str, batch_correction: bool, on_progress: Progress):
    """Two-group scVI DE of ``adata`` (the run's genes) with the cached run ``run_id`` (loaded here)."""
    from engine.analysis.de import differential_expression

    return differential_expression(
        _run(cache_dir, run_id), adata, group1=group1, group2=group2, mode=mode, batch_correction=batch_correction,
        on_progress=lambda done: on_progress(done, "sampling the model's posterior, then the fold changes"))


# ---- where they run ------------------------------------------------------------------------------
def _with_progress(job: Callable[..., Any], topic: str, args: tuple, kwargs: dict) -> Any:
    """On a worker: run ``job``, sending its progress as events of ``topic`` (at most a few a second)."""
    from distributed import get_worker

    worker = get_worker()
    last = [0.0]

    def publish(fraction: float, step: str = "") -> None:
        now = time.monotonic()
        if now - last[0] >= POLL_SECONDS / 2 or fraction >= 1.0:  # not a scheduler message per epoch
            last[0] = now
            worker.log_event(topic, [float(fraction), str(step)])

    return job(*args, on_progress=publish, **kwargs)


def run_long(job: Callable[..., Any], *args: Any, show: Progress, compute: Compute | None = None,
             **kwargs: Any) -> Any:
    """``job(*args, on_progress=show, **kwargs)`` on the job board's cluster when it is up, else here.

    ``compute``: the cluster to use (default: the job board's, see the module's docstring). The
    worker's progress arrives as Dask events on the client's thread; this (the page's) thread
    shows the latest one, since only it may update the page.
    """
    size = payload_bytes(*args, *kwargs.values())
    compute = (compute or _cluster()) if size <= SHIP_LIMIT_BYTES else None
    if compute is None:
        if size > SHIP_LIMIT_BYTES:
            logger.info("%s runs in the server: its %.1f GiB of input are already here", job.__name__, size / 2**30)
        return job(*args, on_progress=show, **kwargs)
    # A view would pickle its whole parent: send what it shows.
    args = tuple(a.copy() if isinstance(a, ad.AnnData) and a.is_view else a for a in args)
    topic = f"atlas-progress-{uuid.uuid4().hex}"
    latest: list[tuple[float, str] | None] = [None]
    compute.client.subscribe_topic(topic, lambda event: latest.__setitem__(0, tuple(event[1])))
    future = compute.client.submit(_with_progress, job, topic, args, kwargs, pure=False,
                                   key=f"{job.__name__}-{uuid.uuid4().hex[:12]}")
    started = time.perf_counter()
    try:
        shown = None
        while not future.done():
            time.sleep(POLL_SECONDS)
            if latest[0] is not None and latest[0] != shown:
                shown = latest[0]
                show(*shown)
        result = future.result()
        logger.info("%s ran on the cluster in %.1f s", job.__name__, time.perf_counter() - started)
        return result
    finally:
        compute.client.unsubscribe_topic(topic)
        future.release()


def _cluster():
    """The job board's cluster connection when it is ready and long jobs may use it, else None."""
    if os.environ.get(WHERE_ENV, "cluster").strip().lower() == "server":
        return None
    from dashboard.training import job_board

    try:
        return job_board().compute(timeout=0)
    except (RuntimeError, TimeoutError):
        return None  # still starting, or no cluster could be started: the server does it
