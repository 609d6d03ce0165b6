"""Gene names: telling identifiers from symbols, and choosing the names people read.

Files name genes in two ways: stable identifiers (Ensembl ids such as ``ENSG00000105369``) and
symbols (``CD79A``). ``var_names`` keep whatever identifier the file used; ``var["display_name"]``
holds the unique names shown on the page, taken from a symbol column when the file has one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

# Column names that hold gene symbols, most specific first. Matched case-insensitively.
SYMBOL_COLUMN_NAMES = (
    "gene_symbol",
    "gene_symbols",
    "feature_name",
    "gene_name",
    "gene_names",
    "symbol",
    "symbols",
    "gene_short_name",
    "name",
    "features",
    "gene",
    "genes",
)

_ENSEMBL = re.compile(r"^ENS[A-Z]*[GT]\d{6,}(\.\d+)?$")
# Letters first, then letters/digits/dashes/dots/underscores: HGNC/MGI-style symbols.
_SYMBOL = re.compile(r"^[A-Za-z][A-Za-z0-9\-._/@]{0,40}$")
# Cell barcodes: a run of nucleotides, optionally with a sample prefix or a "-1" suffix.
_BARCODE = re.compile(r"^([A-Za-z0-9]+[_:\-.#])?[ACGTN]{8,}([_\-.:][A-Za-z0-9]+)*$")
_CELL_LABEL = re.compile(r"^(cell|barcode|sample|bc)[_\-.]?\d+$", re.IGNORECASE)


def fraction_ensembl(labels: Sequence[str]) -> float:
    """Fraction of ``labels`` that are Ensembl gene or transcript ids."""
    return _fraction(labels, _ENSEMBL)


def fraction_barcode_like(labels: Sequence[str]) -> float:
    """Fraction of ``labels`` that look like cell names: nucleotide barcodes, ``cell_12``, or plain numbers."""
    sample = _sample(labels)
    if not sample:
        return 0.0
    hits = sum(
        bool(_BARCODE.match(s) or _CELL_LABEL.match(s) or s.isdigit()) for s in sample
    )
    return hits / len(sample)


def fraction_symbol_like(labels: Sequence[str]) -> float:
    """Fraction of ``labels`` shaped like gene symbols (and not like Ensembl ids or barcodes)."""
    sample = _sample(labels)
    if not sample:
        return 0.0
    hits = sum(
        bool(_SYMBOL.match(s)) and not _ENSEMBL.match(s) and not _BARCODE.match(s)
        for s in sample
    )
    return hits / len(sample)


def symbol_candidates(var: pd.DataFrame) -> list[str]:
    """Columns of ``var`` that could hold gene symbols, best first.

    A column qualifies when it holds text that is mostly symbol-shaped (not Ensembl ids). Columns
    with a known symbol name (``gene_symbol``, ``feature_name`` ...) come first, in the order of
    :data:`SYMBOL_COLUMN_NAMES`, then any other qualifying column.
    """
    priority = {name: i for i, name in enumerate(SYMBOL_COLUMN_NAMES)}
    scored: list[tuple[int, str]] = []
    for column in var.columns:
        if column == "display_name" or not _is_text(var[column]):
            continue
        values = var[column].astype(str).tolist()
        known = priority.get(str(column).lower())
        # An unnamed column must look convincingly like symbols; a named one just must not be ids.
        if fraction_ensembl(values) > 0.5:
            continue
        if known is None and (fraction_symbol_like(values) < 0.8 or "id" in str(column).lower()):
            continue
        scored.append((known if known is not None else len(priority), str(column)))
    return [column for _, column in sorted(scored)]


def best_symbol_column(adata: AnnData) -> str | None:
    """The column to show as gene names, or ``None`` to show ``var_names``.

    A column with a known symbol name (``gene_symbol``, ``feature_name`` ...) always wins. Another
    symbol-like column is used only when ``var_names`` are not symbols themselves (Ensembl ids,
    numbers): a file indexed by symbols often carries derived copies (e.g. R's ``make.names``)
    that read worse than the index.
    """
    candidates = symbol_candidates(adata.var)
    known = [c for c in candidates if c.lower() in SYMBOL_COLUMN_NAMES]
    if known:
        return known[0]
    if candidates and fraction_symbol_like(adata.var_names.tolist()) < 0.5:
        return candidates[0]
    return None


def make_unique(names: Iterable[str]) -> tuple[pd.Index, int, list[tuple[str, str]]]:
    """Make names unique the way anndata does: the 2nd, 3rd ... copy of ``X`` becomes ``X-1``, ``X-2``.

    Returns the unique names, how many were renamed, and up to three ``(old, new)`` examples.
    """
    index = pd.Index([str(n) for n in names])
    if index.is_unique:
        return index, 0, []
    unique = pd.Index(_anndata_make_unique(index))
    renamed = np.flatnonzero(index.to_numpy() != unique.to_numpy())
    examples = [(index[i], unique[i]) for i in renamed[:3]]
    return unique, int(renamed.size), examples


def set_display_names(adata: AnnData, *, column: str | None) -> None:
    """Choose the gene names shown to people: ``var[column]``, or ``var_names`` when ``column`` is None.

    Writes unique names to ``var["display_name"]`` (duplicates get ``-1``, ``-2`` suffixes; empty
    entries fall back to ``var_names``) and records the choice in ``uns["atlas_load"]["symbol_column"]``
    when a load report exists.
    """
    names = display_source(adata, column=column)
    unique, _, _ = make_unique(names)
    adata.var["display_name"] = unique.to_numpy(dtype=object)
    report = adata.uns.get("atlas_load")
    if isinstance(report, dict):
        report["symbol_column"] = column


def display_source(adata: AnnData, *, column: str | None) -> pd.Index:
    """The gene names ``column`` would show, before making them unique (``var_names`` if None).

    Raises
    ------
    ValueError
        ``column`` is not a column of ``var``; the message lists the columns.
    """
    if column is None:
        return pd.Index(adata.var_names.astype(str), dtype=object)
    if column not in adata.var.columns or column == "display_name":
        available = [c for c in adata.var.columns if c != "display_name"]
        raise ValueError(
            f"Gene-name column {column!r} is not in var. Choose one of {available} "
            "or None to show var_names."
        )
    values = adata.var[column].astype(object)
    missing = values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()
    return pd.Index(np.where(missing, adata.var_names.astype(str), values.astype(str)), dtype=object)


def _anndata_make_unique(index: pd.Index) -> list[str]:
    # Same scheme as anndata.utils.make_index_unique; its warning about "-1"-like collisions would
    # only repeat what the load report already says.
    import warnings

    from anndata.utils import make_index_unique

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return list(make_index_unique(index, join="-"))


def _is_text(series: pd.Series) -> bool:
    return (
        isinstance(series.dtype, pd.CategoricalDtype)
        and (series.cat.categories.dtype == object or pd.api.types.is_string_dtype(series.cat.categories))
    ) or pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)


def _sample(labels: Sequence[str], size: int = 2000) -> list[str]:
    # A spread-out sample keeps detection fast on 100k-row tables.
    labels = list(labels) if not isinstance(labels, list) else labels
    step = max(1, len(labels) // size)
    return [str(s).strip() for s in labels[::step]]


def _fraction(labels: Sequence[str], pattern: re.Pattern[str]) -> float:
    sample = _sample(labels)
    if not sample:
        return 0.0
    return sum(bool(pattern.match(s)) for s in sample) / len(sample)
