"""Opening an analysis saved in the loaded file (X_scVI or X_pca, X_umap, leiden) without training.

The Data page offers it when :func:`saved_in` finds a representation; :func:`open_saved` imports it
into the run cache (:func:`engine.runs.imported.import_run`) and makes it the session's active run.
Pages ask :func:`needs_model` before anything that only a trained model can do, and say so with a
link to the Train page.
"""

from __future__ import annotations

import streamlit as st

from dashboard import loading
from dashboard.state import AppState
from dashboard.training import cache_dir, load_run
from engine.preprocessing.qc import QCThresholds
from engine.runs import imported as eimp

__all__ = ["EXPLORE_PAGE", "TRAIN_PAGE", "active_imported", "needs_model", "open_saved", "saved_in",
           "saved_resolution", "source_text"]

TRAIN_PAGE = "../pages/train.py"  # relative to the entry script, dashboard/app.py
EXPLORE_PAGE = "../pages/explore.py"
RESOLUTIONS = (0.1, 3.0)  # the Explore page's slider


def saved_in(state: AppState) -> eimp.SavedAnalysis | None:
    """What the loaded file holds that opens without training, or None."""
    if state.dataset is None:
        return None
    return eimp.saved_analysis(state.dataset.adata)


def saved_resolution(run) -> float | None:
    """The Leiden resolution (on the Explore slider's grid) at which the run's own clusters are shown."""
    info = run.imported or {}
    if run.clusters is None or info.get("resolution") is None:
        return None
    return round(min(max(float(info["resolution"]), RESOLUTIONS[0]), RESOLUTIONS[1]), 1)


def open_saved(state: AppState):
    """Import the loaded file's saved analysis and make it the active run; returns the run.

    The representation belongs to every cell of the file, so the QC thresholds go back to keeping
    every cell (and gene) first; the highly variable gene choice is kept. Raises ValueError with a message for the page.
    """
    if state.dataset is None:
        raise ValueError("Load a dataset first.")
    if state.filtered is None or state.thresholds != QCThresholds():
        loading.apply_settings(state, QCThresholds(), state.n_top_genes, state.hvg_batch_key)
    run = eimp.import_run(state.filtered, cache_dir(), source=state.dataset.name)
    load_run.clear()  # a run id that was looked up (and missing) before is there now
    state.active_run_id = run.run_id
    state.workspace = None
    resolution = saved_resolution(run)
    if resolution is not None:
        state.leiden_resolution = resolution
        st.session_state["explore_resolution"] = resolution
    return run


def active_imported(state: AppState):
    """The active run when it is an imported one that matches the filtered cells, else None."""
    from dashboard.active_run import active_run

    try:
        run = active_run(state)
    except ValueError:
        return None
    return run if run is not None and not run.has_model else None


def source_text(run) -> str:
    """What an imported run is, for a caption: where its representation, embedding and clusters come from."""
    info = run.imported or {}
    where = f" of {info['source']}" if info.get("source") else ""
    parts = [f"`obsm['{info.get('representation')}']`{where}"]
    if run.embeddings:
        parts.append(" and ".join(f"`obsm['{e}']`" for e in sorted(run.embeddings)))
    if run.clusters is not None:
        parts.append(f"`obs['leiden']` (shown at resolution {saved_resolution(run):g})")
    return ", ".join(parts)


def needs_model(what: str) -> None:
    """Say that ``what`` needs a trained model, with a link to the Train page."""
    st.info(f"{what} need a trained model: this run was opened from a file without one. Train one "
            "on the Train page (it then replaces this run as the active one).", icon=":material/info:")
    st.page_link(TRAIN_PAGE, label="Train a model", icon=":material/model_training:")
