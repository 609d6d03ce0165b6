"""Suggested cell-type names for clusters, from their markers and a table of known marker genes.

A suggestion is evidence, not a verdict: for each group, every reference cell type scores the known
markers it finds among the group's top markers, each weighted by how high it ranks (rank 1 counts
1, rank ``top`` counts ``1 / top``), and the best scorer is suggested with the genes that support it.
Groups whose best score is below ``min_score`` (a single gene half-way down the list) get no
suggestion. The reference is a small curated table for blood and pancreas
(:data:`REFERENCE_MARKERS`) or the user's own CSV (columns ``cell_type`` and ``gene``).
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

__all__ = ["REFERENCE_MARKERS", "read_reference", "reference_markers", "suggest_names"]

#: The curated table shipped with the engine (tissue, cell_type, gene).
REFERENCE_MARKERS = Path(__file__).with_name("cell_type_markers.csv")


def reference_markers(tissue: str | None = None) -> pd.DataFrame:
    """The shipped marker table, optionally one tissue ("blood", "pancreas"); columns tissue, cell_type, gene."""
    table = pd.read_csv(REFERENCE_MARKERS, comment="#")
    if tissue is None:
        return table
    tissues = sorted(set(table["tissue"]))
    if tissue not in tissues:
        raise ValueError(f"No markers for tissue {tissue!r}: choose one of {', '.join(tissues)}")
    return table[table["tissue"] == tissue].reset_index(drop=True)


def read_reference(data: bytes | str | Path) -> pd.DataFrame:
    """A user's marker table (CSV with columns ``cell_type`` and ``gene``; others are ignored).

    Raises ValueError with what is wrong and what the file should look like.
    """
    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else data
        table = pd.read_csv(source, comment="#")
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise ValueError(f"The marker table could not be read as CSV ({err}).") from err
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = {"cell_type", "gene"} - set(table.columns)
    if missing:
        raise ValueError(
            f"The marker table has no column {' or '.join(sorted(missing))}: it needs one row per marker "
            "with columns cell_type and gene, e.g. 'B cells,CD79A'."
        )
    table = table.dropna(subset=["cell_type", "gene"])
    if table.empty:
        raise ValueError("The marker table has no rows with both a cell_type and a gene.")
    return table.assign(cell_type=table["cell_type"].astype(str).str.strip(),
                        gene=table["gene"].astype(str).str.strip())[["cell_type", "gene"]]


def suggest_names(markers: pd.DataFrame, reference: pd.DataFrame, *, top: int = 25,
                  min_score: float = 0.5) -> pd.DataFrame:
    """One suggestion per group of a marker table (:attr:`engine.analysis.markers.MarkerResult.table`).

    Parameters
    ----------
    markers
        Columns ``group``, ``rank`` and ``gene`` (symbols), one row per marker of a group.
    reference
        Columns ``cell_type`` and ``gene``. Genes are matched case-insensitively (human and mouse
        symbols differ in case only, mostly).
    top
        How many of each group's markers count as evidence.
    min_score
        Below this best score the suggestion is left empty.

    Returns
    -------
    One row per group, in the groups' order: ``group``, ``suggestion`` (empty when the evidence is too
    thin), ``score``, ``evidence`` ("CD79A (#2), CD74 (#3)"), ``runner_up`` and ``runner_up_score``.
    """
    for name, needed in (("markers", {"group", "rank", "gene"}), ("reference", {"cell_type", "gene"})):
        frame = markers if name == "markers" else reference
        if missing := needed - set(frame.columns):
            raise ValueError(f"{name} has no column {', '.join(sorted(missing))}")
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    known: dict[str, list[str]] = {}
    for cell_type, gene in zip(reference["cell_type"].astype(str), reference["gene"].astype(str), strict=True):
        known.setdefault(gene.upper(), []).append(cell_type)
    rows = []
    for group, table in markers.groupby("group", sort=False, observed=True):
        best = table.sort_values("rank").head(top)
        scores: dict[str, float] = {}
        evidence: dict[str, list[str]] = {}
        for rank, gene in zip(best["rank"].astype(int), best["gene"].astype(str), strict=True):
            for cell_type in known.get(gene.upper(), []):
                scores[cell_type] = scores.get(cell_type, 0.0) + (top - rank + 1) / top
                evidence.setdefault(cell_type, []).append(f"{gene} (#{rank})")
        ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
        first = ranked[0] if ranked and ranked[0][1] >= min_score else ("", 0.0)
        second = ranked[1] if len(ranked) > 1 else ("", 0.0)
        rows.append({
            "group": str(group),
            "suggestion": first[0],
            "score": round(first[1], 2),
            "evidence": ", ".join(evidence.get(first[0], [])),
            "runner_up": second[0],
            "runner_up_score": round(second[1], 2),
        })
    return pd.DataFrame(rows, columns=["group", "suggestion", "score", "evidence", "runner_up", "runner_up_score"])
