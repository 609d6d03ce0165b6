"""Reading single-cell count matrices into AnnData, with every repair reported in plain English.

:func:`read_counts` accepts .h5ad, 10x HDF5, 10x MTX folders (or archives of one), CSV/TSV/TXT
tables in either orientation and Loom. It finds the raw counts (``X``, ``layers["counts"]`` or
``.raw``), stores them as a CSR float32 matrix in both ``X`` and ``layers["counts"]``, drops
all-zero cells and genes, makes names unique, picks readable gene names and writes what it did to
``uns["atlas_load"]``::

    from engine.reading.load import read_counts, summarize
    adata = read_counts("filtered_feature_bc_matrix.h5")
    adata.uns["atlas_load"]["messages"]   # sentences for the page
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from engine.reading.formats import (
    SUPPORTED_FORMATS,
    UPLOAD_EXTENSIONS,
    Format,
    Orientation,
    ParsedFile,
    format_of,
    read_10x_h5,
    read_archive,
    read_h5ad,
    read_loom,
    read_mtx_dir,
    read_table,
)
from engine.reading.genes import (
    best_symbol_column,
    display_source,
    make_unique,
    set_display_names,
    symbol_candidates,
)
from engine.reading.raw_counts import CountsCheck, check_counts

logger = logging.getLogger(__name__)

__all__ = [
    "SUPPORTED_FORMATS",
    "UPLOAD_EXTENSIONS",
    "CountsCheck",
    "DatasetSummary",
    "Format",
    "Orientation",
    "check_counts",
    "format_of",
    "read_counts",
    "set_display_names",
    "summarize",
]

MIN_CELLS = 2
MIN_GENES = 2


def read_counts(
    path: str | os.PathLike[str],
    *,
    transpose: bool | None = None,
    symbol_column: str | None = None,
) -> AnnData:
    """Read a count matrix and return it cleaned, with cells as rows.

    Parameters
    ----------
    path
        A file (.h5ad, .h5, .loom, .csv/.tsv/.txt[.gz], .zip/.tar.gz/.tgz of a 10x folder,
        matrix.mtx[.gz]) or a 10x MTX folder.
    transpose
        Text tables only. ``None`` detects the orientation from the names; ``True`` reads the
        table as genes x cells (rows are genes), ``False`` as cells x genes.
    symbol_column
        The ``var`` column holding the gene names to show. ``None`` picks the best candidate
        (``gene_symbol``, ``feature_name`` ...) or falls back to ``var_names``.

    Returns
    -------
    AnnData
        ``X`` and ``layers["counts"]`` the same CSR float32 counts matrix, ``obs`` from the file,
        ``var["display_name"]`` (unique readable gene names) and the load report in
        ``uns["atlas_load"]`` (format, counts_source, orientation, transposed, n_cells_dropped,
        n_genes_dropped, n_duplicate_genes, n_duplicate_barcodes, symbol_column,
        symbol_candidates, messages). An analysis saved in the file is kept so it can be opened
        without training (:mod:`engine.runs.imported`): ``obsm`` X_scVI, X_pca, X_umap and X_tsne
        (rows of the cells kept) and the resolution in ``uns["leiden"]["params"]``. Other layers,
        ``.raw``, ``obsm``, ``varm``, ``obsp`` and ``uns`` of the file are not kept.

    Raises
    ------
    ValueError
        Unsupported, empty, truncated or corrupt file; no matrix holding raw counts (the message
        names what was found, e.g. log-transformed values); fewer than 2 cells or 2 genes with any
        counts.
    """
    start = time.perf_counter()
    path = Path(path)
    if not path.exists():
        raise ValueError(f"'{path}' does not exist. Check the path, or upload the file again.")
    fmt: Format = "mtx_dir" if path.is_dir() else format_of(path.name)
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(
            f"'{path.name}' is empty (0 bytes): the upload or download was probably interrupted. "
            "Upload the file again."
        )
    if transpose and fmt != "csv":
        raise ValueError(
            f"transpose=True applies to text tables only; {fmt} files store cells and genes in "
            "fixed places. Leave transpose as None for this file."
        )
    parsed = _parse(path, fmt, transpose=transpose)
    counts, source, var, messages = _find_counts(parsed.adata)
    messages = parsed.messages + messages

    obs = parsed.adata.obs.copy()
    has_counts = np.diff(counts.indptr) > 0  # the cells _drop_empty keeps
    saved = _saved_analysis(parsed.adata) if counts.shape[0] == parsed.adata.n_obs else {}
    counts, obs, var, n_cells_dropped, n_genes_dropped = _drop_empty(counts, obs, var, path.name)
    if n_cells_dropped:
        messages.append(f"{n_cells_dropped:,} cells with no counts at all were dropped.")
    if n_genes_dropped:
        messages.append(f"{n_genes_dropped:,} genes with no counts in any cell were dropped.")

    obs.index, n_duplicate_barcodes, examples = make_unique(obs.index)
    if n_duplicate_barcodes:
        messages.append(
            f"{n_duplicate_barcodes:,} duplicated cell barcodes were made unique "
            f"(e.g. {_example(examples)})."
        )
    var.index, n_duplicate_ids, examples = make_unique(var.index)
    for frame in (obs, var):
        frame.index = frame.index.astype(object)
        for column in frame.columns:
            if isinstance(frame[column].dtype, pd.CategoricalDtype):
                frame[column] = frame[column].cat.remove_unused_categories()

    adata = AnnData(X=counts, obs=obs, var=var)
    adata.layers["counts"] = adata.X
    for key, value in saved.items():
        if key == "leiden":
            adata.uns["leiden"] = value
        else:
            adata.obsm[key] = value if has_counts.all() else value[has_counts]

    candidates = symbol_candidates(adata.var)
    if symbol_column is None:
        symbol_column = best_symbol_column(adata)
    _, n_duplicate_genes, examples_display = make_unique(display_source(adata, column=symbol_column))
    set_display_names(adata, column=symbol_column)
    if symbol_column is None:  # the shown names are var_names, already made unique above
        n_duplicate_genes, examples_display = n_duplicate_ids, examples
    elif n_duplicate_ids:
        messages.append(
            f"{n_duplicate_ids:,} duplicated gene ids were made unique (e.g. {_example(examples)})."
        )
    if n_duplicate_genes:
        messages.append(
            f"{n_duplicate_genes:,} duplicated gene names were made unique "
            f"(e.g. {_example(examples_display)})."
        )
    if symbol_column is not None:
        messages.append(f"Gene names are shown from var['{symbol_column}'].")

    adata.uns["atlas_load"] = {
        "format": fmt,
        "counts_source": source,
        "orientation": parsed.orientation,
        "transposed": bool(parsed.transposed),
        "n_cells_dropped": int(n_cells_dropped),
        "n_genes_dropped": int(n_genes_dropped),
        "n_duplicate_genes": int(n_duplicate_genes),
        "n_duplicate_barcodes": int(n_duplicate_barcodes),
        "symbol_column": symbol_column,
        "symbol_candidates": list(candidates),
        "messages": messages,
    }
    logger.info("read %s: %s cells x %s genes in %.1f s", path.name, f"{adata.n_obs:,}", f"{adata.n_vars:,}",
                time.perf_counter() - start)
    return adata


@dataclass(frozen=True)
class DatasetSummary:
    """The numbers the data page shows about a loaded dataset.

    Attributes
    ----------
    n_cells, n_genes
        Matrix shape.
    sparsity
        Fraction of zero entries in the counts.
    counts_source
        Where the counts came from (``"X"``, ``"layers['counts']"`` or ``"raw"``).
    obs_columns
        ``(name, n_categories, dtype)`` per obs column; ``n_categories`` is ``None`` for numeric
        columns.
    """

    n_cells: int
    n_genes: int
    sparsity: float
    counts_source: str
    obs_columns: list[tuple[str, int | None, str]]


def summarize(adata: AnnData) -> DatasetSummary:
    """Summarise a dataset from :func:`read_counts` without densifying anything."""
    counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
    n_cells, n_genes = adata.shape
    total = n_cells * n_genes
    nonzero = counts.count_nonzero() if sparse.issparse(counts) else int(np.count_nonzero(counts))
    columns = []
    for name in adata.obs.columns:
        series = adata.obs[name]
        numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
        n_categories = None if numeric else int(series.nunique(dropna=True))
        columns.append((str(name), n_categories, str(series.dtype)))
    load = adata.uns.get("atlas_load", {})
    return DatasetSummary(
        n_cells=int(n_cells),
        n_genes=int(n_genes),
        sparsity=float(1.0 - nonzero / total) if total else 1.0,
        counts_source=str(load.get("counts_source", "X")),
        obs_columns=columns,
    )


def _parse(path: Path, fmt: Format, *, transpose: bool | None) -> ParsedFile:
    # anndata warns about duplicated names; read_counts makes them unique and reports it instead.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*names are not unique", category=UserWarning)
        return _parse_format(path, fmt, transpose=transpose)


def _parse_format(path: Path, fmt: Format, *, transpose: bool | None) -> ParsedFile:
    if fmt == "h5ad":
        return read_h5ad(path)
    if fmt == "10x_h5":
        return read_10x_h5(path)
    if fmt == "loom":
        return read_loom(path)
    if fmt == "csv":
        return read_table(path, transpose=transpose)
    if fmt == "archive":
        return read_archive(path)
    return read_mtx_dir(path if path.is_dir() else path.parent)


def _find_counts(adata: AnnData) -> tuple[sparse.csr_matrix, str, pd.DataFrame, list[str]]:
    """The first of X, layers['counts'], .raw that holds raw counts, as CSR float32, with its var."""
    candidates = []
    if adata.X is not None:
        candidates.append(("X", adata.X, adata.var))
    if "counts" in adata.layers:
        candidates.append(("layers['counts']", adata.layers["counts"], adata.var))
    if adata.raw is not None:
        candidates.append(("raw", adata.raw.X, adata.raw.var))
    if not candidates:
        raise ValueError(
            "The file holds no expression matrix (X, layers['counts'] and .raw are all absent). "
            "Save the counts in X before uploading."
        )
    checks = [(name, check_counts(matrix, name=name)) for name, matrix, _ in candidates]
    for (name, matrix, var), (_, check) in zip(candidates, checks, strict=True):
        if check.is_counts:
            skipped = [f"{n} looks {c.kind}" for n, c in checks if n != name and not c.is_counts]
            messages = [f"Counts were taken from {name}" + (f" ({'; '.join(skipped)})." if skipped else ".")]
            return _to_csr_float32(matrix), name, var.copy(), messages
    first = checks[0][1]
    if first.kind == "empty":
        raise ValueError(f"{first.message} Upload a file with at least {MIN_CELLS} cells and {MIN_GENES} genes.")
    others = [f"{n} ({c.kind})" for n, c in checks[1:]]
    also = f" Also checked: {', '.join(others)}." if others else ""
    raise ValueError(first.message + also)


def _to_csr_float32(matrix) -> sparse.csr_matrix:
    if sparse.issparse(matrix):
        # No copy when the file's matrix is CSR float32 already: it is this reader's own (read from
        # the file just now), and a copy was a second 2 GB at 1M cells.
        csr = sparse.csr_matrix(matrix, dtype=np.float32, copy=False)
    else:
        csr = sparse.csr_matrix(np.asarray(matrix, dtype=np.float32))
    csr.eliminate_zeros()
    csr.sort_indices()
    return csr


_REMAP_CHUNK = 1 << 24  # stored values renumbered per step: a 64 MB temporary at most


def _without_empty(counts: sparse.csr_matrix, keep_cells: np.ndarray, keep_genes: np.ndarray) -> sparse.csr_matrix:
    """``counts[keep_cells][:, keep_genes]`` where the dropped rows and columns hold no values, without a copy.

    Slicing copies the whole matrix (twice), which put reading a 100k x 15k file at 3.3x the CSR
    size; dropping rows and columns that hold nothing only needs a shorter ``indptr`` and the
    column numbers renumbered in place.
    """
    indptr = counts.indptr[np.concatenate([[0], np.flatnonzero(keep_cells) + 1])]
    indices = counts.indices
    if not keep_genes.all():
        new_column = (np.cumsum(keep_genes) - 1).astype(indices.dtype)
        for start in range(0, indices.size, _REMAP_CHUNK):
            chunk = indices[start:start + _REMAP_CHUNK]
            chunk[:] = new_column[chunk]
    return sparse.csr_matrix((counts.data, indices, indptr), shape=(int(keep_cells.sum()), int(keep_genes.sum())),
                             copy=False)


def _drop_empty(
    counts: sparse.csr_matrix, obs: pd.DataFrame, var: pd.DataFrame, shown: str
) -> tuple[sparse.csr_matrix, pd.DataFrame, pd.DataFrame, int, int]:
    """Drop cells and genes without a single count; fail when too little is left to model."""
    keep_cells = np.diff(counts.indptr) > 0
    keep_genes = np.bincount(counts.indices, minlength=counts.shape[1]) > 0
    n_cells, n_genes = int(keep_cells.sum()), int(keep_genes.sum())
    if n_cells < MIN_CELLS:
        raise ValueError(
            f"'{shown}' has only {n_cells} cell(s) with any counts ({int((~keep_cells).sum()):,} "
            f"all-zero cells dropped): at least {MIN_CELLS} cells are needed to learn anything. "
            "Check that cells are rows (or set transpose for text tables) and that the file is complete."
        )
    if n_genes < MIN_GENES:
        raise ValueError(
            f"'{shown}' has only {n_genes} gene(s) with any counts: at least {MIN_GENES} genes are "
            "needed. Check that genes are columns (or set transpose for text tables) and that the "
            "file holds the whole expression matrix, not a single gene."
        )
    if keep_cells.all() and keep_genes.all():
        return counts, obs, var, 0, 0
    counts = _without_empty(counts, keep_cells, keep_genes)
    return (
        counts,
        obs.iloc[keep_cells].copy(),
        var.iloc[keep_genes].copy(),
        int((~keep_cells).sum()),
        int((~keep_genes).sum()),
    )


# What read_counts keeps of an analysis saved in the file, so it opens without training
# (engine.runs.imported): the cells' representation, their embeddings and the Leiden parameters.
SAVED_OBSM = ("X_scVI", "X_pca", "X_umap", "X_tsne")


def _saved_analysis(adata: AnnData) -> dict:
    saved = {}
    for key in SAVED_OBSM:
        value = adata.obsm.get(key) if adata.obsm is not None else None
        if value is None:
            continue
        if isinstance(value, pd.DataFrame):
            value = value.to_numpy()
        array = np.asarray(value.toarray() if sparse.issparse(value) else value)
        if array.ndim == 2 and array.shape[0] == adata.n_obs and np.issubdtype(array.dtype, np.number):
            saved[key] = array.astype(np.float32, copy=False)
    leiden = adata.uns.get("leiden") if adata.uns is not None else None
    if isinstance(leiden, dict) and isinstance(leiden.get("params"), dict) and "resolution" in leiden["params"]:
        try:
            saved["leiden"] = {"params": {"resolution": float(leiden["params"]["resolution"])}}
        except (TypeError, ValueError):
            pass
    return saved


def _example(pairs: list[tuple[str, str]]) -> str:
    old, new = pairs[0]
    return f"'{old}' -> '{new}'"
