"""The Data page's list of workspaces (issue 17 part 3): open, rename or delete any of them.

A workspace is a trained run with what was made on it (cluster names, cell groups, DE and marker
results), on any dataset. Opening one does what opening its link does (:func:`workspace.open_link`):
its data is read again with its filters and the run becomes active.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from types import MappingProxyType

import pandas as pd
import streamlit as st

from dashboard import workspace
from dashboard.state import AppState
from engine.runs.workspaces import MAX_NAME_LENGTH, Workspace

__all__ = ["panel", "table", "when"]

_PICK = "workspace_pick"
_NOTE = "workspace_note"
_CONFIRM = "workspace_confirm_delete"
# What each count is, for the table's column headers.
COUNT_HELP = MappingProxyType({"Names": "Cluster names given (all clustering resolutions)",
                               "Groups": "Cell groups saved on the Explore page",
                               "DE": "Differential expression results kept",
                               "Markers": "Marker gene tables kept"})


def when(moment: float | str, *, zone: bool = True) -> str:
    """A time as "2 Dec 2026, 14:05 UTC", from seconds since the epoch or an ISO time ("" if unknown)."""
    try:
        if isinstance(moment, str):
            stamp = dt.datetime.fromisoformat(moment)
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=dt.timezone.utc)
        else:
            stamp = dt.datetime.fromtimestamp(float(moment), dt.timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return ""
    stamp = stamp.astimezone(dt.timezone.utc)
    return f"{stamp.day} {stamp:%b %Y}, {stamp:%H:%M}" + (" UTC" if zone else "")


def table(items: list[Workspace], active: str | None = None) -> pd.DataFrame:
    """The list as the page shows it: one row per workspace (times in UTC)."""
    return pd.DataFrame({
        "Name": [w.name + (" (open)" if w.run_id == active else "") for w in items],
        "Dataset": [w.dataset or "not recorded" for w in items],
        "Run": [w.run_id[:10] for w in items],
        "Trained": [when(w.created, zone=False).split(",")[0] for w in items],
        "Last used": [when(w.last_used, zone=False) for w in items],
        "Names": [w.n_names for w in items],
        "Groups": [w.n_groups for w in items],
        "DE": [w.n_de for w in items],
        "Markers": [w.n_markers for w in items],
    })


def _note(kind: str, text: str) -> None:
    st.session_state[_NOTE] = (kind, text)


def _counts(w: Workspace) -> str:
    parts = [(w.n_names, "cluster name"), (w.n_groups, "cell group"), (w.n_de, "DE result"),
             (w.n_markers, "marker table")]
    return ", ".join(f"{n} {what}{'s' if n != 1 else ''}" for n, what in parts)


def _open(state: AppState, w: Workspace) -> None:
    saved = copy.copy(state)
    try:
        with st.spinner(f"Opening {w.name}: reading its data and applying its filters..."):
            workspace.open_link(state, w.run_id, {})
    except (ValueError, OSError) as err:
        for f in dataclasses.fields(state):  # put the session back as it was: nothing is lost
            setattr(state, f.name, getattr(saved, f.name))
        _note("error", f"{w.name} could not be opened. {err} Your session is unchanged.")
    else:
        _note("success", f"Opened {w.name}: {w.dataset or 'its data'} is loaded with the filters it was "
                         "trained with, and its run is active. Its names, groups and results are on the "
                         "Explore, Markers and Differential expression pages.")
    st.rerun(scope="app")


@st.fragment
def panel(state: AppState) -> None:
    """The list, the choice of a workspace and its actions (a fragment: choosing reruns only this)."""
    st.subheader("Your workspaces")
    st.caption("Each trained model keeps what you make on it: cluster names, cell groups, DE and marker "
               "results. Open a workspace to carry on where you left off, on any dataset. Times are UTC.")
    note = st.session_state.pop(_NOTE, None)
    if note:
        getattr(st, note[0])(note[1])
    try:
        items = workspace.workspaces()
    except Exception as err:  # noqa: BLE001 - a damaged store must not take the Data page down
        st.error(f"The list of workspaces could not be read: {err}")
        return
    if not items:
        st.caption("None yet: train a model on the Train page, and it appears here with everything "
                   "you make on it.")
        return
    # Widths that fit the page beside the sidebar on a 1400-pixel screen (long names are cut; hover shows them).
    config = {"Name": st.column_config.TextColumn(width=180),
              "Dataset": st.column_config.TextColumn(width=110),
              "Run": st.column_config.TextColumn(width=90, help="The trained model's id"),
              "Trained": st.column_config.TextColumn(width=90, help="The day the model was trained"),
              "Last used": st.column_config.TextColumn(width=120, help="Last change or opening (UTC)")}
    config |= {c: st.column_config.NumberColumn(width=52, help=h) for c, h in COUNT_HELP.items()}
    st.dataframe(table(items, state.active_run_id), hide_index=True, width="stretch",  # scrolls past 10 rows
                 column_config=config)
    by_id = {w.run_id: w for w in items}
    if st.session_state.get(_PICK) not in by_id:
        st.session_state[_PICK] = state.active_run_id if state.active_run_id in by_id else items[0].run_id
    rid = st.selectbox("Workspace", list(by_id), key=_PICK,
                       format_func=lambda r: by_id[r].name + (f" (run {r[:10]})" if by_id[r].named else ""))
    chosen = by_id[rid]
    st.caption(f"{chosen.dataset or 'Dataset not recorded'}"
               + (f", {chosen.description}" if chosen.description else "") + f": {_counts(chosen)}.")

    open_col, name_col, rename_col, delete_col = st.columns([1, 4, 1, 1], vertical_alignment="bottom")
    is_open = rid == state.active_run_id
    if open_col.button("Open", type="primary", disabled=is_open or not chosen.can_reopen,
                       help="This workspace is open in this session." if is_open else
                       "Load its data with its filters and make its run active."):
        _open(state, chosen)
    if is_open:
        st.caption("This workspace is open in this session: its run is the active one.")
    elif not chosen.can_reopen:
        st.caption("How this run's data was opened was not recorded, so it cannot be opened from here: "
                   "load its data above, then pick the run on the Train page.")

    new_name = name_col.text_input("New name", value=chosen.name, max_chars=MAX_NAME_LENGTH,
                                     key=f"workspace_new_name_{rid}")
    if rename_col.button("Rename"):
        try:
            name = workspace.rename(rid, new_name)
        except ValueError as err:
            st.error(str(err))
        else:
            _note("success", f"Renamed to {name!r}.")
            st.rerun(scope="app")

    if delete_col.button("Delete...", help="Asks before deleting."):
        st.session_state[_CONFIRM] = rid
    if st.session_state.get(_CONFIRM) == rid:
        st.warning(f"Delete {chosen.name}? This removes the trained model and everything kept with it "
                   f"({_counts(chosen)}) for everyone using this server. It cannot be undone; the data "
                   "file itself is not touched.")
        yes, no, _ = st.columns([1, 1, 3])
        if yes.button("Delete for good", type="primary"):
            st.session_state.pop(_CONFIRM, None)
            workspace.delete(state, rid)
            _note("success", f"Deleted {chosen.name}.")
            st.rerun(scope="app")
        if no.button("Keep it"):
            st.session_state.pop(_CONFIRM, None)
            st.rerun(scope="app")
