"""The Markers page's computations: markers of every group at once, cached, and their figures' data.

The groups are the Leiden clusters (with the user's names) or any annotation of the cells, as on the
Differential expression page; :func:`engine.analysis.markers.find_markers` does the work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import streamlit as st

from dashboard import de as dede
from dashboard import explore
from dashboard.long_jobs import markers_job, run_long
from dashboard.marker_figures import GroupExpression, group_expression
from dashboard.progress import progress_bar
from dashboard.state import AppState
from dashboard.training import cache_dir
from engine.analysis.annotation import suggest_names
from engine.analysis.markers import MarkerResult

_SESSION_KEY = "markers_session"
_GROUP = "group"  # the obs column the groups are written to for find_markers


@dataclass(frozen=True)
class MarkersRequest:
    """What the user asked for: markers of the groups of one grouping of one run."""

    run_id: str
    groupby: str  # dede.CLUSTERS or an obs column


def last_request() -> MarkersRequest | None:
    """The session's last request on the Markers page, if any."""
    return st.session_state.get(_SESSION_KEY)


def remember(request: MarkersRequest) -> None:
    """Keep ``request`` as the session's current markers."""
    st.session_state[_SESSION_KEY] = request


@st.cache_data(show_spinner=False, max_entries=8)
def _markers(run_id: str, key: str, labels: np.ndarray, _adata: ad.AnnData) -> MarkerResult:
    adata = _adata.copy()
    adata.obs[_GROUP] = pd.Categorical(labels, categories=_ordered(labels))
    groups = adata.obs[_GROUP].cat.categories
    with progress_bar(f"Markers of {len(groups)} groups, each against all other cells") as show:
        return run_long(markers_job, str(cache_dir()), run_id, adata, groupby=_GROUP, show=show)


def _ordered(labels: np.ndarray) -> list[str]:
    """Group names in a natural order: numbers as numbers ("2" before "10"), then by name."""
    names = pd.unique(np.asarray(labels, dtype=str))
    return sorted(names, key=lambda n: (0, int(n), "") if n.isdigit() else (1, 0, n))


def markers(state: AppState, run, request: MarkersRequest) -> MarkerResult:
    """The markers of ``request`` on the current data (computed once per run, data and labels).

    Clusters are computed by their ids and shown by their names, so naming a cluster (here or on
    the Explore page) does not compute its markers again.
    """
    if request.groupby != dede.CLUSTERS:
        labels = dede.label_columns(state, run)[request.groupby].to_numpy(dtype=str)
        return _markers(run.run_id, state.filtered_key, labels, dede.run_data(state.filtered, run))
    ids = np.asarray(explore.leiden_clusters(state, run), dtype=str)
    result = _markers(run.run_id, state.filtered_key, ids, dede.run_data(state.filtered, run))
    return _renamed(result, _cluster_display_names(state, run))


def _cluster_display_names(state: AppState, run) -> dict[str, str]:
    """Cluster id -> what the pages call it: its name, or its id; "name (id)" when names repeat."""
    table = explore.cluster_table(state, run)
    names = {str(c): (str(n).strip() or str(c)) for c, n in zip(table["cluster"], table["name"], strict=True)}
    repeated = {n for n in names.values() if list(names.values()).count(n) > 1}
    return {c: (f"{n} ({c})" if n in repeated else n) for c, n in names.items()}


def _renamed(result: MarkerResult, names: dict[str, str]) -> MarkerResult:
    if all(names.get(g, g) == g for g in result.n_cells):
        return result
    table = result.table.assign(group=result.table["group"].astype(str).map(lambda g: names.get(g, g)))
    return dataclasses.replace(
        result, table=table, groups=tuple(names.get(g, g) for g in result.groups),
        n_cells={names.get(g, g): n for g, n in result.n_cells.items()},
        skipped={names.get(g, g): why for g, why in result.skipped.items()},
    )


def plot_genes(result: MarkerResult, n: int) -> list[str]:
    """The display names of the top ``n`` markers of each group, in group order, each gene once."""
    top = result.top_table(n)
    return list(dict.fromkeys(top["gene"].astype(str)))


def expression_by_group(state: AppState, run, request: MarkersRequest, genes: list[str]) -> GroupExpression:
    """Mean log1p expression and fraction of cells expressing, per group, of ``genes`` (display names)."""
    filtered = state.filtered
    labels = dede.label_columns(state, run)[request.groupby]
    if request.groupby == dede.CLUSTERS:  # the markers' group names, one row per cluster
        display = _cluster_display_names(state, run)
        labels = pd.Series(np.asarray(explore.leiden_clusters(state, run), dtype=str)).map(display)
    names = explore.gene_names(filtered)
    positions = [names.get_loc(g) for g in genes]
    counts = filtered.layers["counts"] if "counts" in filtered.layers else filtered.X
    groups = list(markers(state, run, request).groups)
    return group_expression(counts, labels, positions, genes, groups)


RULE = "up in the group (lfc_mean > 0), expressed in >= 10% of its cells, ranked by P(DE) then LFC"


def csv_bytes(result: MarkerResult, *, run_id: str, groupby: str, dataset: str) -> bytes:
    """Every marker of every group as CSV, with ``# key: value`` provenance lines first."""
    header = {"run_id": run_id, "dataset": dataset, "groups": groupby, "rule": RULE}
    lines = [f"# {k}: {v}" for k, v in header.items()]
    return ("\n".join(lines) + "\n" + result.table.to_csv(index=False)).encode()


def provenance(result: MarkerResult, *, run_id: str, groupby: str, dataset: str) -> dict[str, object]:
    """How a marker table was made, for the export: run, grouping, groups and their cells, thresholds."""
    return {
        "run_id": run_id,
        "dataset": dataset,
        "groupby": groupby,
        "rule": RULE,
        "mode": "change",
        "groups": list(result.groups),
        # one row per group considered: its cells, and why it was left out (empty if analysed)
        "n_cells": pd.DataFrame({"group": list(result.n_cells), "n_cells": list(result.n_cells.values()),
                                 "skipped": [result.skipped.get(g, "") for g in result.n_cells]}),
        "top": result.top,
        "delta": result.delta,
        "fdr": result.fdr,
        "seed": result.seed,
    }


def suggestions(result: MarkerResult, reference: pd.DataFrame) -> pd.DataFrame:
    """Suggested cell-type names of the groups, with their evidence (see :mod:`engine.analysis.annotation`)."""
    return suggest_names(result.table, reference)


def name_clusters(state: AppState, run, names: dict[str, str]) -> int:
    """Give the Leiden clusters the names chosen on the Markers page (keys: the clusters' current labels).

    Returns how many clusters were (re)named. Names are kept as on the Explore page's cluster table.
    """
    explore.sync_cluster_names(state)
    table = explore.cluster_table(state, run)
    edits = {}
    for row, (cluster, current) in enumerate(zip(table["cluster"], table["name"], strict=True)):
        new = (names.get(current or cluster) or "").strip()
        if new and new != (current or cluster):
            edits[row] = {"name": new}
    explore.apply_cluster_edits(state, list(table["cluster"]), edits)
    return len(edits)
