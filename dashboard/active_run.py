"""The run a session works with: the Explore, Differential expression and Export pages all need one."""

from __future__ import annotations

import streamlit as st

from dashboard.state import AppState
from dashboard.training import load_run

__all__ = ["active_run", "require_active_run"]


def active_run(state: AppState):
    """The active run, or None. Raises ValueError when it does not match the filtered cells."""
    if state.active_run_id is None or state.filtered is None:
        return None
    run = load_run(state.active_run_id)
    if run is None:
        return None
    if run.latent.shape[0] != state.filtered.n_obs:
        raise ValueError(
            f"The active run was trained on {run.latent.shape[0]:,} cells but the filtered data has "
            f"{state.filtered.n_obs:,}: the QC settings changed since. Train again or pick a run "
            f"trained on these cells on the Train page.")
    return run


def require_active_run(state: AppState):
    """The active run for a page that needs one; otherwise say what to do and stop the page."""
    if state.filtered is None or state.dataset is None:
        st.info("Load a dataset on the Data page first.", icon=":material/info:")
        st.stop()
    try:
        run = active_run(state)
    except ValueError as err:
        st.warning(str(err), icon=":material/warning:")
        st.stop()
    if run is None:
        st.info("Train a model or pick a run on the Train page first.", icon=":material/info:")
        st.stop()
    # The run's names and groups as kept on the server (other sessions' changes included).
    from dashboard.workspace import set_url, sync

    sync(state)
    set_url({"run": run.run_id})  # the page's address opens this run in any browser
    return run
