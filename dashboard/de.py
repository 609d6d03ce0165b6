"""Differential expression page glue: which two groups, the cached DE and Wilcoxon, gene values.

The comparison the user ran lives in this session's :class:`DESession` (``st.session_state``), the
results in ``st.cache_data`` keyed on the run, the filtered data and the two cell masks, so a rerun,
a slider move or a visit to another page never recomputes them. ``delta`` and ``fdr`` are not part
of the key: :meth:`engine.analysis.de.DEResult.table` re-thresholds a stored result in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import streamlit as st

from dashboard import explore
from dashboard.long_jobs import de_job, run_long
from dashboard.progress import progress_bar
from dashboard.state import AppState
from dashboard.summary import grouping_columns
from dashboard.training import cache_dir
from engine.analysis import de as ede
from engine.analysis import wilcoxon as ewilcoxon
from engine.checks import as_text

# Pseudo-columns offered next to the obs annotations.
CLUSTERS = "Leiden clusters"
LASSO = "Lasso groups"
REST = "rest"
# The mode of a comparison made with the Wilcoxon test alone (a run without a model).
WILCOXON = "wilcoxon"
WILCOXON_METHOD = ("Wilcoxon rank-sum test on log1p(counts per 10,000), two-sided (normal approximation, "
                   "tie and continuity corrected), Benjamini-Hochberg adjusted")
# obs columns with more values than this are not offered as groups (cell ids, barcodes).
_SESSION_KEY = "de_session"


@dataclass(frozen=True)
class Comparison:
    """Two groups of cells: ``group1`` against ``group2`` (a value of ``groupby`` or ``REST``).

    ``groupby`` is an obs column, ``CLUSTERS`` (renamed Leiden clusters) or ``LASSO`` (groups drawn
    on the Explore page). ``within=(column, value)`` restricts both groups to those cells, e.g.
    ``Comparison("condition", "stim", "ctrl", within=(CLUSTERS, "3"))``.
    """

    groupby: str
    group1: str
    group2: str
    within: tuple[str, str] | None = None

    def names(self) -> tuple[str, str]:
        """Short names of the two groups, for axes and legends."""
        return self.group1, ("rest" if self.group2 == REST else self.group2)

    def describe(self) -> str:
        """One line saying what is compared, for titles and export headers."""
        g1, g2 = self.names()
        text = f"{self.groupby}: {g1} vs {g2}"
        return text if self.within is None else f"{text}, inside {self.within[0]} = {self.within[1]}"


@dataclass(frozen=True)
class DERequest:
    """What the user asked to compute (everything that changes the posterior draws)."""

    run_id: str
    comparison: Comparison
    mode: ede.Mode | str = "change"  # or WILCOXON, for a run without a model
    batch_correction: bool = False


@dataclass(frozen=True)
class WilcoxonResult:
    """A two-group Wilcoxon test, the DE of a run without a model: thresholded like a scVI DE result.

    :meth:`table` gives the columns the volcano and the export read: ``lfc_mean`` is the Wilcoxon
    table's ``logfoldchange`` (log2 ratio of mean normalised expression), ``neg_log10_padj`` the
    volcano's y, ``is_de_fdr`` the genes with an adjusted p-value under ``fdr`` and
    ``|log2 FC| >= delta``.
    """

    raw: pd.DataFrame  # engine.analysis.wilcoxon.wilcoxon's table
    n_cells_1: int
    n_cells_2: int
    mode: str = WILCOXON
    batch_correction: bool = False
    warnings: tuple[str, ...] = ()

    def table(self, *, delta: float = 0.25, fdr: float = 0.05) -> pd.DataFrame:
        """The test's table with the calls at these thresholds (milliseconds: nothing is recomputed)."""
        view = self.raw.copy()
        lfc = view["logfoldchange"].to_numpy(dtype=float)
        padj = view["pvalue_adj"].to_numpy(dtype=float)
        view["lfc_mean"] = lfc
        view["neg_log10_padj"] = -np.log10(np.maximum(padj, 1e-300))
        view["is_de_fdr"] = (padj < fdr) & (np.abs(lfc) >= delta)
        return view

    def provenance(self) -> dict[str, object]:
        """How the table was computed, for export headers."""
        return {"method": WILCOXON_METHOD, "n_cells_1": self.n_cells_1, "n_cells_2": self.n_cells_2,
                "model": "none: scVI's Bayesian DE needs a trained model (Train page)"}


@dataclass
class DESession:
    """The session's DE page: the last request and the current view of its result."""

    request: DERequest | None = None
    delta: float = 0.25
    fdr: float = 0.05
    selected_gene: str | None = None  # var_name clicked on the volcano or picked in the table
    # What the volcano click and the table row selection reported last: the one that changes wins.
    last_picks: tuple[str | None, str | None] = (None, None)

    def pick(self, *, volcano: str | None, table: str | None) -> None:
        """Follow the user's latest gene choice, from a volcano click or a table row."""
        old_volcano, old_table = self.last_picks
        if volcano is not None and volcano != old_volcano:
            self.selected_gene = volcano
        elif table is not None and table != old_table:
            self.selected_gene = table
        self.last_picks = (volcano, table)


def de_session() -> DESession:
    """The session's DE page state, created on first use."""
    if _SESSION_KEY not in st.session_state:
        st.session_state[_SESSION_KEY] = DESession()
    return st.session_state[_SESSION_KEY]


def label_columns(state: AppState, run) -> dict[str, pd.Series]:
    """Cell labels that define groups: the renamed Leiden clusters and categorical obs columns.

    Each series is indexed like ``state.filtered.obs_names`` and holds text, as a categorical: at 1M
    cells, 1M Python strings cost 0.75 s per column on every rerun of the page.
    """
    filtered = state.filtered
    columns = {CLUSTERS: as_text(explore.cluster_labels(state, run, filtered))}
    for name in grouping_columns(filtered):
        columns[name] = as_text(filtered.obs[name])
    return columns


def group_values(labels: dict[str, pd.Series], groupby: str, cell_groups: dict[str, np.ndarray]) -> list[str]:
    """The values a group can take under ``groupby``, largest group first, ties by name."""
    if groupby == LASSO:
        return list(cell_groups)
    counts = labels[groupby].value_counts()
    return sorted(map(str, counts.index), key=lambda value: (-counts[value], value))


def group_masks(
    comparison: Comparison,
    *,
    labels: dict[str, pd.Series],
    cell_groups: dict[str, np.ndarray],
    obs_names: pd.Index,
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks over ``obs_names`` of the comparison's two groups.

    Raises ``ValueError`` (with what to do) for a missing value or an empty group; the engine
    refuses groups under 3 cells and overlapping groups when the DE runs.
    """
    if comparison.within is not None and comparison.within[0] not in labels:
        raise ValueError(f"There is no annotation {comparison.within[0]!r} to restrict to: pick another.")
    if comparison.groupby != LASSO:
        if comparison.groupby not in labels:
            raise ValueError(f"There is no annotation {comparison.groupby!r}: pick another.")
        frame = pd.DataFrame({name: s.array for name, s in labels.items()}, index=obs_names)
        return ede.groups_from_obs(ad.AnnData(obs=frame), groupby=comparison.groupby,
                                   group1=comparison.group1, group2=comparison.group2,
                                   within=comparison.within)
    missing = [g for g in (comparison.group1, comparison.group2)
               if g != REST and g not in cell_groups]
    if missing:
        raise ValueError(f"No lasso group named {missing[0]!r}: draw it on the Explore page first.")
    mask1 = obs_names.isin(cell_groups[comparison.group1])
    mask2 = ~mask1 if comparison.group2 == REST else obs_names.isin(cell_groups[comparison.group2])
    if comparison.within is not None:
        column, value = comparison.within
        inside = np.asarray(labels[column].array == value)
        mask1, mask2 = mask1 & inside, mask2 & inside
    for name, mask in zip(comparison.names(), (mask1, mask2), strict=True):
        if not mask.any():
            where = "" if comparison.within is None else f" inside {comparison.within[0]} = {comparison.within[1]}"
            raise ValueError(f"The group {name!r} has no cells{where}: pick another group.")
    return np.asarray(mask1), np.asarray(mask2)


def run_data(filtered: ad.AnnData, run) -> ad.AnnData:
    """The filtered cells restricted to the genes the run was trained on (a view, or ``filtered`` itself).

    A run trained on every gene gets the filtered data itself: reading a view's counts copies them
    (2 GB and seconds at 1M cells).
    """
    if filtered.var_names.equals(pd.Index(run.var_names)):
        return filtered
    return filtered[:, list(run.var_names)]


@st.cache_data(show_spinner=False, max_entries=16)
def _differential_expression(run_id: str, key: str, mask1: np.ndarray, mask2: np.ndarray,
                             mode: str, batch_correction: bool, _adata: ad.AnnData) -> ede.DEResult:
    what = f"Posterior expression of {int(mask1.sum()):,} vs {int(mask2.sum()):,} cells"
    with progress_bar(what) as show:
        return run_long(de_job, str(cache_dir()), run_id, _adata, group1=mask1, group2=mask2, mode=mode,
                        batch_correction=batch_correction, show=show)


def differential_expression(state: AppState, request: DERequest, mask1: np.ndarray,
                            mask2: np.ndarray, run) -> ede.DEResult:
    """The DE of a request, computed once per run, data, groups, mode and batch correction.

    A request in the Wilcoxon mode (a run without a model) gives a :class:`WilcoxonResult`.
    """
    if request.mode == WILCOXON:
        from engine.analysis.de import check_groups

        _, _, notes = check_groups(state.filtered, group1=mask1, group2=mask2)  # too small, overlapping
        return WilcoxonResult(wilcoxon(state, mask1, mask2, run), int(mask1.sum()), int(mask2.sum()),
                              warnings=tuple(notes))
    if not run.has_model:
        raise ValueError("scVI's Bayesian differential expression needs a trained model: train one on "
                         "the Train page, or use the Wilcoxon test.")
    return _differential_expression(request.run_id, state.filtered_key, mask1, mask2, request.mode,
                                    request.batch_correction, run_data(state.filtered, run))


@st.cache_data(show_spinner=False, max_entries=16)
def _wilcoxon(key: str, genes: tuple[str, ...], mask1: np.ndarray, mask2: np.ndarray,
              _adata: ad.AnnData) -> pd.DataFrame:
    return ewilcoxon.wilcoxon(_adata, group1=mask1, group2=mask2)


def wilcoxon(state: AppState, mask1: np.ndarray, mask2: np.ndarray, run) -> pd.DataFrame:
    """The Wilcoxon rank-sum table of the same comparison on the run's genes (cached)."""
    return _wilcoxon(state.filtered_key, tuple(run.var_names), mask1, mask2,
                     run_data(state.filtered, run))


def gene_values(state: AppState, run, var_name: str) -> tuple[str, np.ndarray]:
    """A gene's display name and its log1p-normalised counts in every filtered cell (Explore's cache)."""
    position = state.filtered.var_names.get_loc(var_name)
    gene = str(explore.gene_names(state.filtered)[position])
    return gene, explore.gene_expression(state, run, gene, expression="observed")


def gene_options(table: pd.DataFrame, query: str) -> pd.DataFrame:
    """Rows of a DE table whose display name or var_name contains ``query`` (case-insensitive)."""
    query = query.strip()
    if not query:
        return table
    hit = (table["gene"].astype(str).str.contains(query, case=False, regex=False)
           | table.index.astype(str).str.contains(query, case=False, regex=False))
    return table[hit.to_numpy()]


def request_masks(state: AppState, run, request: DERequest) -> tuple[np.ndarray, np.ndarray]:
    """The two groups of a request on the current data (labels as they are now)."""
    return group_masks(request.comparison, labels=label_columns(state, run),
                       cell_groups=state.cell_groups, obs_names=state.filtered.obs_names)


def last_result(state: AppState, run) -> tuple[DERequest, ede.DEResult] | None:
    """The comparison this session last ran on the active run, and its (cached) result."""
    request = de_session().request
    if request is None or request.run_id != run.run_id:
        return None
    mask1, mask2 = request_masks(state, run, request)
    return request, differential_expression(state, request, mask1, mask2, run)


def provenance(request: DERequest, result: ede.DEResult, *, delta: float, fdr: float,
               dataset: str) -> dict[str, object]:
    """Header lines of an exported DE table: run, groups, thresholds and how it was computed."""
    g1, g2 = request.comparison.names()
    return {
        "run_id": request.run_id,
        "dataset": dataset,
        "comparison": request.comparison.describe(),
        "group1": g1,
        "group2": g2,
        "delta": (delta if result.mode in ("change", WILCOXON) else "unused (vanilla mode)"),
        "fdr": fdr,
        **result.provenance(),
    }
