"""Train page glue: which data to train on, checks of the user's choices, the job board, runs."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import streamlit as st

from dashboard.jobs import JobBoard, TrainingJob
from dashboard.state import AppState
from dashboard.train_form import TrainForm, duration_text
from engine.analysis import diagnostics as ediag
from engine.model.params import RunParams
from engine.preprocessing.hvg import highly_variable_genes
from engine.runs import records as ecache
from engine.runs import storage as estorage

REPO = Path(__file__).resolve().parents[1]
CACHE_ENV = "ATLAS_CACHE_DIR"
# More batch categories than this is allowed but probably a mistake (a cell id column, say).
MANY_BATCHES = 100
FEW_CELLS = 50


def cache_dir() -> Path:
    """Where runs are cached: $ATLAS_CACHE_DIR, or .atlas/runs in the project folder."""
    return Path(os.environ.get(CACHE_ENV) or REPO / ".atlas" / "runs")


@st.cache_resource
def job_board() -> JobBoard:
    """The server's one job board (shared by sessions: jobs are keyed by content hashes).

    It starts the server's local Dask cluster (or connects to ``ATLAS_DASK_SCHEDULER``'s) in the
    background; the cluster stops with the server (see :mod:`dashboard.compute`).
    """
    return JobBoard(cache_dir())


@st.cache_resource(max_entries=16, show_spinner=False)
def load_run(run_id: str):
    """A cached run, loaded once per server; never mutated. None if not in the cache."""
    return estorage.load_run(cache_dir(), run_id)


@dataclass
class TrainingCheck:
    """What the page must say before training: errors block, warnings inform."""

    batch_key: str | None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_training(adata: ad.AnnData, *, params: RunParams, batch_key: str | None) -> TrainingCheck:
    """Check the user's choices against the data before a job starts."""
    check = TrainingCheck(batch_key=batch_key)
    if batch_key is not None:
        labels = adata.obs[batch_key]
        missing = int(labels.isna().sum())
        n_batches = labels.nunique(dropna=True)
        if missing:
            check.errors.append(
                f"The batch column '{batch_key}' has {missing:,} cells with no value. Fill them in "
                f"(for example with 'unknown') or choose another batch key.")
        elif n_batches < 2:
            check.batch_key = None
            check.warnings.append(
                f"The batch column '{batch_key}' has a single value, so there is no batch effect to "
                f"correct: training without a batch key.")
        elif n_batches > MANY_BATCHES:
            check.warnings.append(
                f"The batch column '{batch_key}' has {n_batches:,} values. Is it really a batch "
                f"(sample, donor, technology)? Training goes ahead.")
    if params.n_latent > adata.n_vars:
        check.errors.append(
            f"The latent size ({params.n_latent}) is larger than the number of genes "
            f"({adata.n_vars:,}). Choose a latent size of at most {adata.n_vars}.")
    if adata.n_obs < 2:
        check.errors.append("Training needs at least 2 cells; the filtered data has "
                            f"{adata.n_obs}. Relax the filters on the Data page.")
    elif adata.n_obs < FEW_CELLS:
        check.warnings.append(
            f"Only {adata.n_obs} cells: the model will be unreliable. scVI is meant for hundreds "
            f"to millions of cells.")
    return check


@st.cache_resource(show_spinner=False, max_entries=8)  # shared and never mutated, as the datasets
def _training_data(key: str, n_top_genes: int, _filtered: ad.AnnData) -> ad.AnnData:
    if n_top_genes <= 0 or n_top_genes >= _filtered.n_vars:
        return _filtered  # every gene: the filtered data itself (a copy is 2+ GB at 1M cells)
    adata = _filtered.copy()
    highly_variable_genes(adata, n_top_genes=n_top_genes,
                              batch_key=adata.uns.get("hvg", {}).get("batch_key"))
    return adata[:, adata.var["highly_variable"].to_numpy()].copy()


def training_data(filtered: ad.AnnData, key: str, *, n_top_genes: int) -> ad.AnnData:
    """The filtered data restricted to its ``n_top_genes`` most variable genes (0: all genes)."""
    return _training_data(key, n_top_genes, filtered)


def runs_for(filtered: ad.AnnData) -> list[ecache.RunInfo]:
    """Cached runs trained on exactly these cells (any gene subset), newest first."""
    cells = ecache.cells_hash(filtered)
    return [r for r in ecache.list_runs(cache_dir()) if r.metrics.get("cells_hash") == cells]


def submit(state: AppState, form: TrainForm, board: JobBoard, *, device: str = "auto") -> None:
    """Handle a press of Train: load the run from the cache, or start (or join) a training job.

    ``device="cuda"`` asks the cluster for a worker with a GPU (see :meth:`JobBoard.start`).
    """
    state.training_message = None
    try:
        params = form.params()
    except ValueError as err:
        state.training_message = ("error", str(err))
        return
    data = training_data(state.filtered, state.filtered_key, n_top_genes=form.n_top_genes)
    check = check_training(data, params=params, batch_key=form.batch_key)
    if check.errors:
        state.training_message = ("error", " ".join(check.errors))
        return
    notes = " ".join(check.warnings)
    rid = ecache.run_id(data, params=params, batch_key=check.batch_key)
    t0 = time.perf_counter()
    if ecache.has_run(cache_dir(), rid):
        try:
            run = load_run(rid)
        except ecache.CorruptRunError:
            pass  # damaged on disk: train it again below (fit replaces the folder)
        else:
            state.active_run_id = rid
            state.training_message = (
                "success", f"{loaded_run_message(rid, run.metrics, load_seconds=time.perf_counter() - t0)} "
                f"{notes}".strip())
            return
    board.start(data, params=params, batch_key=check.batch_key, dataset_name=state.dataset.name, device=device)
    state.watched_job = rid
    st.query_params["run"] = rid
    if notes:
        state.training_message = ("warning", notes)


def make_active(state: AppState, info: ecache.RunInfo) -> None:
    """Make a run of the history table the active run, saying when it was trained (not as if just now)."""
    state.active_run_id = info.run_id
    state.training_message = ("success", loaded_run_message(info.run_id, info.metrics))


def loaded_run_message(rid: str, metrics: Mapping, *, load_seconds: float | None = None) -> str:
    """What the page says about a run taken from the cache: when it was trained and how long it took.

    E.g. "Loaded run trained on 2 Dec 2026 at 14:05 UTC, 40 epochs in 47 s (run 3f2a9c1d0e, read
    from the cache in 0.02 s). It is now the active run." A run trained in this session says
    "Trained N epochs in S s" instead (:func:`finish_job`). ``metrics`` are the run's
    (``created``, ``n_epochs_trained``, ``train_seconds``); missing ones are left out.
    """
    when = _trained_on(metrics.get("created"))
    epochs, seconds = metrics.get("n_epochs_trained"), metrics.get("train_seconds")
    took = ""
    if epochs is not None:
        took = f"{int(epochs)} epoch{'s' if int(epochs) != 1 else ''}"
    if seconds is not None:
        took = f"{took} in {duration_text(float(seconds))}".strip()
    what = ", ".join(part for part in (f"Loaded run trained {when}" if when else "Loaded a cached run", took) if part)
    source = f"run {rid[:10]}"
    if load_seconds is not None:
        source += f", read from the cache in {load_seconds:.2f} s"
    return f"{what} ({source}). It is now the active run."


def _trained_on(created: str | None) -> str:
    """When a run was trained, from its ISO creation time: "on 2 Dec 2026 at 14:05 UTC" ("" if unknown)."""
    try:
        when = dt.datetime.fromisoformat(str(created))
    except ValueError:
        return ""
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc)
    return f"on {when.day} {when:%b %Y} at {when:%H:%M} UTC"


def finish_job(state: AppState, job: TrainingJob) -> None:
    """A followed job has ended: make its run active, or say why not."""
    state.watched_job = None
    st.query_params.pop("run", None)
    if job.status == "finished":
        state.active_run_id = job.run_id
        state.training_message = (
            "success", f"Trained {job.epochs_done} epoch{'s' if job.epochs_done != 1 else ''} in "
            f"{job.elapsed:.0f} s (run {job.run_id[:10]}). It is now the active run: see Explore.")
    elif job.status == "cancelled":
        state.training_message = ("warning", "Training was cancelled. Nothing was saved.")
    else:
        state.training_message = ("error", f"Training failed: {job.error}")


def delete_run(state: AppState, rid: str) -> None:
    """Delete run ``rid`` from the run cache; if it was the session's active run, there is none now."""
    ecache.delete_run(cache_dir(), rid)
    load_run.clear()
    if state.active_run_id == rid:
        state.active_run_id = None


@st.cache_data(show_spinner=False, max_entries=16)
def _diagnostics(rid: str, key: str, _filtered: ad.AnnData):
    run = load_run(rid)
    return ediag.diagnose(run, _filtered[:, run.var_names].copy())


def diagnostics(rid: str, filtered: ad.AnnData, key: str):
    """Held-out ELBO, latent activity and predictive checks of one run on the filtered data."""
    return _diagnostics(rid, key, filtered)
