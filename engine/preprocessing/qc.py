"""Quality control on raw counts: per-cell and per-gene metrics, filters, highly variable genes.

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
    "highly_variable_genes",
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

    Attributes:
        min_genes: a cell needs at least this many detected genes.
        min_cells: a gene needs to be detected in at least this many of the kept cells.
        max_pct_mt: a cell may have at most this percentage of counts in mitochondrial genes.
        min_counts: a cell needs at least this many counts.
        max_counts: a cell may have at most this many counts (``None``: no upper limit).
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
        raise ValueError("var lacks 'n_cells_by_counts': run engine.preprocessing.qc.calculate_qc_metrics(adata) first.")
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

    Raises:
        ValueError: fewer than 2 cells or 2 genes would remain; the message names the threshold.
    """
    cells, genes = filter_masks(adata, thresholds)
    if cells.sum() < 2:
        raise ValueError(_what_removed_cells(adata.obs, thresholds, int(cells.sum())))
    if genes.sum() < 2:
        raise ValueError(
            f"min_cells={thresholds.min_cells} leaves {int(genes.sum())} gene(s): no other gene is "
            f"detected in that many of the {int(cells.sum()):,} kept cells. Lower min_cells."
        )
    counts = _counts(adata)[cells][:, genes]
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


def highly_variable_genes(adata: AnnData, *, n_top_genes: int = 2000, batch_key: str | None = None) -> None:
    """Flag highly variable genes with the Seurat v3 method (variance-stabilising transformation).

    Per batch: fit log10 variance against log10 mean with a local quadratic regression (loess,
    span 0.3), standardise the counts by the fitted standard deviation, clip at sqrt(n_cells) and
    take the variance of the clipped values (``variances_norm``). Genes are then ordered by the
    number of batches in which they are among the top ``n_top_genes``, ties broken by their median
    rank over those batches (Seurat's SelectIntegrationFeatures; scanpy's ``seurat_v3_paper``
    order, identical to ``seurat_v3`` without batches). Works on ``layers["counts"]``.

    ``n_top_genes`` above the number of genes flags every gene.

    Writes:
        var: ``highly_variable`` (bool), ``highly_variable_rank`` (median rank, NaN when the gene
        is in no batch's top list), ``highly_variable_nbatches``, ``variances_norm`` (mean over
        batches); uns["hvg"] = {"flavor": "seurat_v3", "n_top_genes": <genes flagged>,
        "batch_key": batch_key}.
    """
    if isinstance(n_top_genes, bool) or not isinstance(n_top_genes, (int, np.integer)) or n_top_genes < 1:
        raise ValueError(f"n_top_genes must be a whole number >= 1, got {n_top_genes!r}.")
    counts = _counts(adata)
    n_genes = adata.n_vars
    n_top = int(min(n_top_genes, n_genes))
    batches = _batch_labels(adata, batch_key)

    norm_vars = np.vstack([_normalized_variance(counts[batches == b]) for b in pd.unique(batches)])
    ranks = np.argsort(np.argsort(-norm_vars, axis=1, kind="stable"), axis=1).astype(np.float64)
    in_top = ranks < n_top
    nbatches = in_top.sum(axis=0)
    # Median over the batches where the gene is in the top list; NaN where it is in none.
    median_rank = np.ma.median(np.ma.masked_array(ranks, mask=~in_top), axis=0).filled(np.nan)
    order = np.lexsort((median_rank, -nbatches))  # NaN ranks sort last
    highly_variable = np.zeros(n_genes, dtype=bool)
    highly_variable[order[:n_top]] = True

    adata.var["highly_variable"] = highly_variable
    adata.var["highly_variable_rank"] = median_rank
    adata.var["highly_variable_nbatches"] = nbatches.astype(np.int64)
    adata.var["variances_norm"] = norm_vars.mean(axis=0)
    adata.uns["hvg"] = {"flavor": "seurat_v3", "n_top_genes": n_top, "batch_key": batch_key}


def _normalized_variance(counts: sparse.csr_matrix) -> np.ndarray:
    """Seurat v3's variance of counts standardised by the loess-fitted mean-variance trend."""
    n_obs = counts.shape[0]
    mean = np.asarray(counts.mean(axis=0), dtype=np.float64).ravel()
    sq_mean = np.asarray(counts.multiply(counts).mean(axis=0), dtype=np.float64).ravel()
    var = (sq_mean - mean**2) * n_obs / (n_obs - 1)
    varies = var > 0
    fitted_log_var = np.zeros_like(mean)
    fitted_log_var[varies] = _loess(np.log10(mean[varies]), np.log10(var[varies]), span=0.3)
    reg_std = np.sqrt(10**fitted_log_var)
    # Clip each count at mean + sqrt(n) * sd, as Seurat does, so single outlier cells cannot dominate.
    clip = reg_std * np.sqrt(n_obs) + mean
    csc = counts.tocsc()
    gene_of_entry = np.repeat(np.arange(csc.shape[1]), np.diff(csc.indptr))
    clipped = np.minimum(csc.data.astype(np.float64), clip[gene_of_entry])
    total = np.bincount(gene_of_entry, weights=clipped, minlength=csc.shape[1])
    total_sq = np.bincount(gene_of_entry, weights=clipped**2, minlength=csc.shape[1])
    # Sum over all cells of (x - mean)^2, zeros included, expanded so only stored values are visited.
    ss = n_obs * mean**2 + total_sq - 2 * total * mean
    return ss / ((n_obs - 1) * reg_std**2)


def _loess(x: np.ndarray, y: np.ndarray, *, span: float, cell: float = 0.2) -> np.ndarray:
    """Fitted values of a 1-D loess: local quadratic, tricube weights, no robustness iterations.

    Mirrors Cleveland's loess (as in R and scikit-misc) with its default "interpolate" surface:
    each local fit uses the ``span`` fraction of points nearest in x; fits (value and slope) are
    made at the vertices of a k-d tree whose cells hold at most ``span * cell * n`` points, and
    joined by cubic Hermite interpolation. That keeps it fast on tens of thousands of genes.
    """
    n = x.size
    if n == 0:
        return np.zeros(0)
    xs = np.sort(x)
    order = np.argsort(x, kind="stable")
    ys = y[order]
    q = min(n, max(int(np.floor(n * span)), 3))  # a quadratic needs at least 3 points
    vertices = _kd_vertices(xs, max(int(np.floor(n * span * cell)), 1))
    value, slope = _local_quadratic(xs, ys, vertices, q)
    return _hermite(x, vertices, value, slope)


def _kd_vertices(xs: np.ndarray, leaf_size: int) -> np.ndarray:
    """Cell bounds of a 1-D k-d tree over sorted ``xs``: split at medians until cells are small."""
    margin = 0.005 * max(xs[-1] - xs[0], 1e-10 * max(abs(xs[0]), abs(xs[-1])) + 1e-30)
    vertices = [xs[0] - margin, xs[-1] + margin]
    stack = [(0, xs.size - 1)]
    while stack:
        lo, hi = stack.pop()
        if hi - lo + 1 <= leaf_size or xs[lo] == xs[hi]:
            continue
        mid = (lo + hi) // 2
        split = (xs[mid] + xs[mid + 1]) / 2
        vertices.append(split)
        stack += [(lo, mid), (mid + 1, hi)]
    return np.unique(vertices)


def _local_quadratic(
    xs: np.ndarray, ys: np.ndarray, points: np.ndarray, q: int
) -> tuple[np.ndarray, np.ndarray]:
    """Value and slope at ``points`` of tricube-weighted quadratic fits to the q nearest neighbours."""
    n = xs.size
    # Window start minimising the distance to the farthest of q neighbours: the first s with
    # xs[s] + xs[s + q] >= 2v (moving the window right stops paying off there).
    starts = np.searchsorted(xs[: n - q] + xs[q:], 2 * points, side="left")
    idx = starts[:, None] + np.arange(q)
    dx = xs[idx] - points[:, None]
    h = np.abs(dx).max(axis=1, keepdims=True)
    h = np.where(h > 0, h * 1.0001, 1.0)  # keep the farthest neighbour's weight just above zero
    u = dx / h
    w = (1 - np.abs(u) ** 3) ** 3
    powers = [w * u**k for k in range(5)]
    sums = [p.sum(axis=1) for p in powers]
    gram = np.stack([np.stack(sums[i : i + 3], axis=-1) for i in range(3)], axis=-2)
    rhs = np.stack([(powers[k] * ys[idx]).sum(axis=1) for k in range(3)], axis=-1)
    coef = (np.linalg.pinv(gram, rcond=1e-10) @ rhs[..., None])[..., 0]
    return coef[:, 0], coef[:, 1] / h[:, 0]  # u = (x - v) / h, so d/dx = b1 / h


def _hermite(x: np.ndarray, knots: np.ndarray, value: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """Cubic Hermite interpolation through ``(knots, value)`` with the given slopes."""
    i = np.clip(np.searchsorted(knots, x, side="right") - 1, 0, knots.size - 2)
    width = knots[i + 1] - knots[i]
    t = (x - knots[i]) / width
    h00, h10 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t
    h01, h11 = -2 * t**3 + 3 * t**2, t**3 - t**2
    return h00 * value[i] + h10 * width * slope[i] + h01 * value[i + 1] + h11 * width * slope[i + 1]


def _batch_labels(adata: AnnData, batch_key: str | None) -> np.ndarray:
    if batch_key is None:
        return np.zeros(adata.n_obs, dtype=np.int64)
    if batch_key not in adata.obs.columns:
        raise ValueError(
            f"batch_key {batch_key!r} is not a column of obs. Choose one of {list(adata.obs.columns)} or None."
        )
    labels = adata.obs[batch_key].astype(str).to_numpy()
    sizes = pd.Series(labels).value_counts()
    small = sizes[sizes < 2]
    if len(small):
        raise ValueError(
            f"Batch {small.index[0]!r} of {batch_key!r} has fewer than 2 cells, so its gene variances "
            "are undefined. Filter those cells out or pick another batch_key."
        )
    return labels


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
