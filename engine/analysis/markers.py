"""Marker genes of every group of cells at once: one-vs-rest Bayesian DE per group, Wilcoxon beside it.

For each group of an ``adata.obs`` column (a cell type, a cluster), the cells of the group are
compared with every other cell by :func:`engine.analysis.de.differential_expression`
(``mode="change"``) and, optionally, by the Wilcoxon rank-sum test
(:func:`engine.analysis.wilcoxon.wilcoxon`). The markers of a group are the genes up in it,
expressed in enough of its cells, most probably changed first; this is the rule of scvi-tools'
marker tutorial (``lfc_mean > 0``, a Bayes factor filter, ``non_zeros_proportion1 > 0.1``), with
the ranking by ``proba_de`` standing in for the Bayes factor filter (the Bayes factor of an up gene
grows with ``proba_de``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd

from engine.analysis.de import MIN_CELLS, differential_expression
from engine.analysis.wilcoxon import wilcoxon as wilcoxon_test
from engine.checks import obs_column
from engine.logs import timed

if TYPE_CHECKING:
    from engine.runs.records import Run

__all__ = ["MARKER_COLUMNS", "WILCOXON_COLUMNS", "MarkerResult", "find_markers"]

#: Columns of :attr:`MarkerResult.table`, in order (then :data:`WILCOXON_COLUMNS` when Wilcoxon ran).
MARKER_COLUMNS = (
    "group",
    "rank",
    "gene",
    "var_name",
    "lfc_mean",
    "proba_de",
    "bayes_factor",
    "is_de_fdr",
    "frac_expr_group",
    "frac_expr_rest",
    "mean_norm_group",
    "mean_norm_rest",
)
WILCOXON_COLUMNS = ("wilcoxon_score", "wilcoxon_pvalue_adj")

# DE table column -> marker table column
_FROM_DE = MappingProxyType({
    "gene": "gene",
    "lfc_mean": "lfc_mean",
    "proba_de": "proba_de",
    "bayes_factor": "bayes_factor",
    "is_de_fdr": "is_de_fdr",
    "frac_expr_1": "frac_expr_group",
    "frac_expr_2": "frac_expr_rest",
    "mean_norm_1": "mean_norm_group",
    "mean_norm_2": "mean_norm_rest",
})


@dataclass(frozen=True, eq=False)
class MarkerResult:
    """Marker genes of each group of ``groupby``, one-vs-rest (see :func:`find_markers`).

    ``table`` holds, per analysed group in category order, every gene passing the marker rule,
    ranked (``rank`` 1, 2, ... within the group); :meth:`top_table` keeps the first rows of each.
    ``groups`` are the groups analysed; ``n_cells`` gives the cells of every group considered
    (analysed or skipped); ``skipped`` maps each group left out to the reason.
    """

    table: pd.DataFrame
    groupby: str
    groups: tuple[str, ...]
    n_cells: dict[str, int]
    top: int
    delta: float
    fdr: float
    seed: int
    skipped: dict[str, str] = field(default_factory=dict)

    def top_table(self, n: int | None = None) -> pd.DataFrame:
        """The first ``n`` markers of each group (``top`` when ``n`` is None), in the table's order."""
        n = self.top if n is None else n
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        return self.table[self.table["rank"] <= n].reset_index(drop=True)


@timed
def find_markers(
    run: Run,
    adata: ad.AnnData,
    *,
    groupby: str,
    groups: Sequence[str] | None = None,
    top: int = 10,
    min_cells: int = MIN_CELLS,
    min_fraction: float = 0.1,
    max_cells_per_group: int = 500,
    n_samples: int = 5000,
    delta: float = 0.25,
    fdr: float = 0.05,
    seed: int = 0,
    wilcoxon: bool = True,
    on_progress: Callable[[float], None] | None = None,
) -> MarkerResult:
    """Marker genes of every group of ``adata.obs[groupby]``, each group against all other cells.

    Rule: the markers of a group are the genes with ``lfc_mean > 0`` (up in the group against the
    rest) expressed (a non-zero count) in at least ``min_fraction`` of the group's cells
    (``frac_expr_group``), ranked by ``proba_de`` (descending), then ``lfc_mean`` (descending).
    This mirrors scvi-tools' marker tutorial: ``lfc_mean > 0``, a Bayes factor filter and
    ``non_zeros_proportion1 > 0.1``. Every gene passing the rule is kept, so the table can be read
    past the first ``top``; ``is_de_fdr`` says which are called DE at ``fdr``.

    Parameters
    ----------
    run
        A trained run on ``adata``'s genes (see :func:`engine.analysis.de.differential_expression`).
    adata
        The cells, with raw counts in ``layers["counts"]`` (else ``X``). Gene names shown come from
        ``adata.var["display_name"]`` when present, else ``var_names``.
    groupby
        The ``adata.obs`` column defining the groups; they are taken in category order (sorted
        values for a column that is not categorical), compared as text.
    groups
        Only these groups (in category order all the same); each is still compared with every
        other cell of ``adata``. None: every group.
    top
        Rows per group of :meth:`MarkerResult.top_table`.
    min_cells
        Groups with fewer cells (or fewer cells outside them) are skipped and listed in
        ``skipped``; at least 3, which differential expression needs.
    min_fraction
        Smallest fraction of the group's cells expressing a gene for it to be a marker.
    max_cells_per_group, n_samples, delta, fdr, seed
        Passed to :func:`engine.analysis.de.differential_expression` (``mode="change"``) for each group.
    wilcoxon
        Also run the Wilcoxon rank-sum test of each group against the rest and add its ``score``
        and Benjamini-Hochberg adjusted p-value as ``wilcoxon_score`` and ``wilcoxon_pvalue_adj``.
    on_progress
        Called with the fraction done (0 to 1) before each group, and with 1.0 at the end.

    Returns
    -------
    MarkerResult
        ``table`` (columns :data:`MARKER_COLUMNS`, then :data:`WILCOXON_COLUMNS` when Wilcoxon ran),
        the groups analysed, cell counts and the groups skipped, with why.

    Raises
    ------
    ValueError
        ``groupby`` is not a column of ``adata.obs``; it has fewer than 2 groups with ``min_cells``
        cells; a requested group does not exist; no requested group can be analysed; or a bad option.
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    if min_cells < MIN_CELLS:
        raise ValueError(f"min_cells must be at least {MIN_CELLS} (differential expression needs it), got {min_cells}")
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must lie between 0 and 1, got {min_fraction}")

    codes, names = _group_codes(obs_column(adata, groupby, role="groupby"))
    sizes = np.bincount(codes[codes >= 0], minlength=len(names))
    n_cells = {name: int(size) for name, size in zip(names, sizes, strict=True)}
    large = [name for name in names if n_cells[name] >= min_cells]
    if len(large) < 2:
        shown = ", ".join(f"{name!r} ({n_cells[name]})" for name in names[:20]) or "none"
        raise ValueError(
            f"groupby {groupby!r} has {len(large)} group(s) with at least {min_cells} cells (groups and cells: "
            f"{shown}); markers need two or more: pick a column with several groups"
        )
    wanted = _check_requested(groups, names, groupby)

    todo: list[int] = []
    skipped: dict[str, str] = {}
    for index, name in enumerate(names):
        if name not in wanted:
            continue
        rest = adata.n_obs - n_cells[name]
        if n_cells[name] < min_cells:
            skipped[name] = f"{n_cells[name]} cells, fewer than min_cells={min_cells}"
        elif rest < min_cells:
            skipped[name] = f"only {rest} cells outside it, fewer than min_cells={min_cells}"
        else:
            todo.append(index)
    if not todo:
        reasons = "; ".join(f"{name!r}: {why}" for name, why in skipped.items())
        raise ValueError(f"no group of {groupby!r} can be analysed ({reasons}): pick larger groups or lower min_cells")

    parts = []
    for step, index in enumerate(todo):
        if on_progress is not None:
            on_progress(step / len(todo))
        mask = codes == index
        result = differential_expression(
            run,
            adata,
            group1=mask,
            group2=~mask,
            mode="change",
            delta=delta,
            fdr=fdr,
            max_cells_per_group=max_cells_per_group,
            n_samples=n_samples,
            seed=seed,
        )
        table = result.table()
        keep = (table["lfc_mean"].to_numpy() > 0) & (table["frac_expr_1"].to_numpy() >= min_fraction)
        up = table.loc[keep, list(_FROM_DE)].rename(columns=_FROM_DE)
        # lexsort: last key first; stable, so exact ties keep the DE table's order
        up = up.iloc[np.lexsort((-up["lfc_mean"].to_numpy(), -up["proba_de"].to_numpy()))]
        if wilcoxon:
            test = wilcoxon_test(adata, group1=mask, group2=~mask)
            up["wilcoxon_score"] = test["score"].reindex(up.index).to_numpy()
            up["wilcoxon_pvalue_adj"] = test["pvalue_adj"].reindex(up.index).to_numpy()
        up = up.reset_index()  # var_name becomes a column
        up.insert(0, "rank", np.arange(1, len(up) + 1))
        up.insert(0, "group", names[index])
        parts.append(up)

    columns = list(MARKER_COLUMNS) + (list(WILCOXON_COLUMNS) if wilcoxon else [])
    table = pd.concat(parts, ignore_index=True)[columns]
    if on_progress is not None:
        on_progress(1.0)
    return MarkerResult(
        table=table,
        groupby=groupby,
        groups=tuple(names[index] for index in todo),
        n_cells={name: n_cells[name] for name in names if name in wanted},
        top=top,
        delta=float(delta),
        fdr=float(fdr),
        seed=seed,
        skipped=skipped,
    )


def _group_codes(column: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Each cell's group index (-1 for a missing label) and the group names, as text, in category order."""
    categorical = column if isinstance(column.dtype, pd.CategoricalDtype) else column.astype("category")
    categories = [str(c) for c in categorical.cat.categories]
    codes = categorical.cat.codes.to_numpy().astype(np.int64)
    names = list(dict.fromkeys(categories))  # 1 and "1" are both group "1"
    if len(names) < len(categories):
        position = {name: i for i, name in enumerate(names)}
        remap = np.array([position[c] for c in categories] + [-1])
        codes = remap[codes]  # -1 indexes the last entry: missing stays -1
    return codes, names


def _check_requested(groups: Sequence[str] | None, names: list[str], groupby: str) -> set[str]:
    """The requested groups as a set of names; a ValueError names the ones that do not exist."""
    if groups is None:
        return set(names)
    if isinstance(groups, str):
        groups = [groups]
    requested = [str(g) for g in groups]
    if not requested:
        raise ValueError("groups is empty: pass None for every group, or the groups to analyse")
    missing = [g for g in requested if g not in set(names)]
    if missing:
        shown = ", ".join(map(repr, names[:20])) + (" ..." if len(names) > 20 else "")
        raise ValueError(f"{groupby} has no group {', '.join(map(repr, missing))}; groups present: {shown}")
    return set(requested)
