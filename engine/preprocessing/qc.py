"""Quality control on raw counts: per-cell and per-gene metrics and filters.

Metric names follow scanpy (``total_counts``, ``n_genes_by_counts``, ``pct_counts_mt`` ...), so an
exported file reads the same in scanpy. Everything works on the sparse ``layers["counts"]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

__all__ = [
    "QCThresholds",
    "apply_filters",
    "calculate_qc_metrics",
    "filter_masks",
]

_CELL_METRICS = ("total_counts", "n_genes_by_counts", "pct_counts_mt")


def calculate_qc_metrics(adata: AnnData, *, mito_prefixes: tuple[str, ...] = ("MT-", "mt-")) -> None:
    """Write per-cell and per-gene QC metrics computed from ``layers["counts"]``.

    Mitochondrial genes are those whose display name (``var["display_name"]``, else ``var_names``)
    starts with one of ``mito_prefixes``.

    Writes:
        obs: ``total_counts``, ``n_genes_by_counts``, ``pct_counts_mt`` (0-100).
        var: ``mt`` (bool), ``n_cells_by_counts``, ``pct_cells_by_counts`` (detection rate, 0-100),
        ``total_counts``.
    """
    names = adata.var["display_name"] if "display_name" in adata.var else adata.var_names.to_series()
    mt = names.astype(str).str.startswith(tuple(mito_prefixes)).to_numpy()
    _write_metrics(adata, mt)


def _write_metrics(adata: AnnData, mt: np.ndarray) -> None:
    counts = _counts(adata)
    n_cells = counts.shape[0]
    total = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    total_mt = np.asarray(counts[:, mt].sum(axis=1), dtype=np.float64).ravel() if mt.any() else np.zeros(n_cells)
    positive = counts.copy()
    positive.data = (positive.data > 0).astype(np.float32)
    adata.obs["total_counts"] = total
    adata.obs["n_genes_by_counts"] = np.asarray(positive.sum(axis=1)).ravel().astype(np.int64)
    adata.obs["pct_counts_mt"] = np.divide(100.0 * total_mt, total, out=np.zeros(n_cells), where=total > 0)
    n_cells_by_counts = np.asarray(positive.sum(axis=0)).ravel().astype(np.int64)
    adata.var["mt"] = mt
    adata.var["n_cells_by_counts"] = n_cells_by_counts
    adata.var["pct_cells_by_counts"] = 100.0 * n_cells_by_counts / max(n_cells, 1)
    adata.var["total_counts"] = np.asarray(counts.sum(axis=0), dtype=np.float64).ravel()


@dataclass(frozen=True)
class QCThresholds:
    """Which cells and genes to keep.

    Attributes
    ----------
    min_genes
        A cell needs at least this many detected genes.
    min_cells
        A gene needs to be detected in at least this many of the kept cells.
    max_pct_mt
        A cell may have at most this percentage of counts in mitochondrial genes.
    min_counts
        A cell needs at least this many counts.
    max_counts
        A cell may have at most this many counts (``None``: no upper limit).
    """

    min_genes: int = 0
    min_cells: int = 0
    max_pct_mt: float = 100.0
    min_counts: float = 0.0
    max_counts: float | None = None

    def __post_init__(self) -> None:
        for name in ("min_genes", "min_cells"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}.")
        if not 0.0 <= float(self.max_pct_mt) <= 100.0:
            raise ValueError(f"max_pct_mt is a percentage between 0 and 100, got {self.max_pct_mt!r}.")
        if not (np.isfinite(self.min_counts) and self.min_counts >= 0):
            raise ValueError(f"min_counts must be a finite number >= 0, got {self.min_counts!r}.")
        if self.max_counts is not None and not self.max_counts >= self.min_counts:
            raise ValueError(
                f"max_counts ({self.max_counts!r}) must be at least min_counts ({self.min_counts!r}), "
                "or None for no upper limit."
            )


def filter_masks(adata: AnnData, thresholds: QCThresholds) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the cells and genes that ``thresholds`` keep, without changing ``adata``.

    Cells are judged on the metrics of :func:`calculate_qc_metrics`; genes are then counted among
    the kept cells only (as scanpy's ``filter_cells`` followed by ``filter_genes``).
    """
    obs = _require_metrics(adata)
    total = obs["total_counts"].to_numpy()
    cells = (
        (obs["n_genes_by_counts"].to_numpy() >= thresholds.min_genes)
        & (total >= thresholds.min_counts)
        & (obs["pct_counts_mt"].to_numpy() <= thresholds.max_pct_mt)
    )
    if thresholds.max_counts is not None:
        cells &= total <= thresholds.max_counts
    n_genes = adata.n_vars
    if thresholds.min_cells == 0:
        return cells, np.ones(n_genes, dtype=bool)
    if "n_cells_by_counts" not in adata.var.columns:
        raise ValueError("var lacks 'n_cells_by_counts': "
                         "run engine.preprocessing.qc.calculate_qc_metrics(adata) first.")
    counts = _counts(adata)
    # Detections among kept cells = all detections minus those in removed cells; visiting only the
    # smaller of the two row sets keeps a live slider at a few ms on 12k cells.
    if (~cells).sum() <= cells.sum():
        removed = counts[np.flatnonzero(~cells)]
        n_cells_by_gene = adata.var["n_cells_by_counts"].to_numpy() - _detections_per_gene(removed)
    else:
        n_cells_by_gene = _detections_per_gene(counts[np.flatnonzero(cells)])
    return cells, n_cells_by_gene >= thresholds.min_cells


def _detections_per_gene(counts: sparse.csr_matrix) -> np.ndarray:
    return np.bincount(counts.indices[counts.data > 0], minlength=counts.shape[1])


def apply_filters(adata: AnnData, thresholds: QCThresholds) -> AnnData:
    """A new AnnData with only the cells and genes ``thresholds`` keep; ``adata`` is unchanged.

    Counts stay CSR (``X`` and ``layers["counts"]`` the same matrix), QC metrics are recomputed,
    highly-variable-gene results are dropped (they depend on the cells; recompute them), and
    ``uns["atlas_qc"]`` records the thresholds and how many cells and genes were removed.

    Raises
    ------
    ValueError
        Fewer than 2 cells or 2 genes would remain; the message names the threshold.
    """
    cells, genes = filter_masks(adata, thresholds)
    if cells.sum() < 2:
        raise ValueError(_what_removed_cells(adata.obs, thresholds, int(cells.sum())))
    if genes.sum() < 2:
        raise ValueError(
            f"min_cells={thresholds.min_cells} leaves {int(genes.sum())} gene(s): no other gene is "
            f"detected in that many of the {int(cells.sum()):,} kept cells. Lower min_cells."
        )
    counts = _subset(_counts(adata), cells, genes)
    hvg_columns = [c for c in adata.var.columns if c.startswith("highly_variable") or c == "variances_norm"]
    filtered = AnnData(
        X=counts,
        obs=adata.obs.iloc[cells].copy(),
        var=adata.var.iloc[genes].drop(columns=hvg_columns).copy(),
        obsm={k: v[cells] for k, v in adata.obsm.items()},
        uns={k: v for k, v in adata.uns.items() if k != "hvg"},
    )
    filtered.layers["counts"] = filtered.X
    for column in filtered.obs.columns:
        if isinstance(filtered.obs[column].dtype, pd.CategoricalDtype):
            filtered.obs[column] = filtered.obs[column].cat.remove_unused_categories()
    _write_metrics(filtered, filtered.var["mt"].to_numpy(dtype=bool))
    record = {k: v for k, v in asdict(thresholds).items() if v is not None}
    record.update(
        n_cells_before=int(adata.n_obs),
        n_genes_before=int(adata.n_vars),
        n_cells_removed=int((~cells).sum()),
        n_genes_removed=int((~genes).sum()),
    )
    filtered.uns["atlas_qc"] = record
    return filtered


def _subset(counts: sparse.csr_matrix, cells: np.ndarray, genes: np.ndarray) -> sparse.csr_matrix:
    """``counts[cells][:, genes]`` as one new matrix: no intermediate copy when a mask keeps everything.

    At 1M cells the intermediate of indexing twice is another 2 GB at the peak.
    """
    if cells.all() and genes.all():
        return counts.copy()
    if genes.all():
        return counts[cells]
    if cells.all():
        return counts[:, genes]
    return counts[cells][:, genes]


def _counts(adata: AnnData) -> sparse.csr_matrix:
    if "counts" not in adata.layers:
        raise ValueError(
            "layers['counts'] is missing. Load the data with engine.reading.load.read_counts, which puts the raw "
            "counts there."
        )
    counts = adata.layers["counts"]
    return counts if isinstance(counts, sparse.csr_matrix) else sparse.csr_matrix(counts)


def _require_metrics(adata: AnnData) -> pd.DataFrame:
    missing = [m for m in _CELL_METRICS if m not in adata.obs.columns]
    if missing:
        raise ValueError(f"obs lacks {missing}: run engine.preprocessing.qc.calculate_qc_metrics(adata) first.")
    return adata.obs


def _what_removed_cells(obs: pd.DataFrame, t: QCThresholds, n_left: int) -> str:
    total = obs["total_counts"].to_numpy()
    tests = {
        f"min_genes={t.min_genes}": obs["n_genes_by_counts"].to_numpy() >= t.min_genes,
        f"min_counts={t.min_counts:g}": total >= t.min_counts,
        f"max_pct_mt={t.max_pct_mt:g}": obs["pct_counts_mt"].to_numpy() <= t.max_pct_mt,
    }
    if t.max_counts is not None:
        tests[f"max_counts={t.max_counts:g}"] = total <= t.max_counts
    alone = [name for name, kept in tests.items() if kept.sum() < 2]
    culprit = (
        f"{' and '.join(alone)} alone remove{'s' if len(alone) == 1 else ''} (nearly) every cell"
        if alone
        else f"together, {', '.join(tests)} remove (nearly) every cell"
    )
    return (
        f"These thresholds would leave {n_left} cell(s) of {len(obs):,}: {culprit}. "
        "Loosen them (at least 2 cells must remain)."
    )
