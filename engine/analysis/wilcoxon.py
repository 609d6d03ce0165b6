"""Wilcoxon rank-sum test between two groups, and its agreement with the Bayesian DE.

The classical reference next to the model's DE: the test scanpy's ``rank_genes_groups`` runs,
on log1p of counts normalised to 10,000 per cell. p-values are the normal approximation of
``scipy.stats.mannwhitneyu(..., method="asymptotic")`` (tie and continuity corrected).

Ranks are computed here, vectorised over genes and sparse-aware, rather than by scanpy's
``rank_genes_groups(method="wilcoxon")``, because that was measured slower (7 s against 0.8 s on
the 12,261-cell sample, 1.2 s against 0.2 s on 14,878 genes, plus about a minute of numba
compilation on first use) and leaves out the continuity correction, so its p-values differ from scipy's.
At atlas scale (benchmarks/de_scale.py) 30,000 against 60,000 cells over 14,878 genes take about
2.4 s, 100,000 against 200,000 cells of a 1M-cell atlas about 2 s, and one cell type against the
rest of that atlas (every cell ranked) about 9 s; the loops that are not sorts (the gene-major
copy with its log1p, reading the sorted keys) are small numba kernels in
:mod:`engine.analysis._kernels`, compiled once and cached on disk, split over the cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.stats

from engine.analysis._kernels import gene_run_sums, row_scales, scatter_log_keys
from engine.analysis.de import check_groups, display_names
from engine.logs import timed
from engine.threads import available_cores, split_over_threads

# Normalised total per cell before log1p (scanpy's normalize_total target_sum).
TARGET_SUM = 1e4


@timed
def wilcoxon(adata: ad.AnnData, *, group1: np.ndarray, group2: np.ndarray) -> pd.DataFrame:
    """Wilcoxon rank-sum test of every gene, group 1 against group 2.

    ``group1``/``group2`` are boolean masks over the cells, as for
    :func:`engine.analysis.de.differential_expression`; raw counts are read from ``layers["counts"]``, else
    ``X``.

    Returns one row per gene, index ``var_names`` (named ``"var_name"``), sorted by ``|score|``
    (descending), with columns ``gene`` (display name), ``score`` (z-score of group 1's rank sum,
    positive when higher in group 1), ``pvalue`` (two-sided), ``pvalue_adj`` (Benjamini-Hochberg)
    and ``logfoldchange`` (log2 ratio of the groups' mean normalised expression, as scanpy).
    """
    mask1, mask2, _ = check_groups(adata, group1=group1, group2=group2)
    cells = np.flatnonzero(mask1 | mask2)
    in1 = mask1[cells]
    # Raw counts as training reads them (engine.runs.records.counts_matrix, which needs torch).
    counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
    ranks = _ranks_by_gene(counts, cells, in1)

    n1, n2 = int(in1.sum()), int((~in1).sum())
    rank_sum_1, tie_term = ranks.rank_sum, ranks.tie_term
    u1 = rank_sum_1 - n1 * (n1 + 1) / 2.0
    n = n1 + n2
    sigma = np.sqrt(n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1))))
    excess = u1 - n1 * n2 / 2.0
    # Continuity correction towards zero, as scipy's asymptotic mannwhitneyu.
    corrected = np.maximum(np.abs(excess) - 0.5, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sigma > 0, np.sign(excess) * corrected / sigma, 0.0)
    pvalue = np.minimum(2.0 * scipy.stats.norm.sf(np.abs(z)), 1.0)

    # Zeros add nothing to a sum: each group's mean is its sum of log values over its size.
    mean1, mean2 = ranks.sums[1] / n1, ranks.sums[0] / n2
    logfoldchange = np.log2((np.expm1(mean1) + 1e-9) / (np.expm1(mean2) + 1e-9))

    table = pd.DataFrame(
        {
            "gene": display_names(adata),
            "score": z,
            "pvalue": pvalue,
            "pvalue_adj": scipy.stats.false_discovery_control(pvalue, method="bh"),
            "logfoldchange": logfoldchange,
        },
        index=pd.Index(adata.var_names, name="var_name"),
    )
    return table.iloc[np.argsort(-np.abs(z), kind="stable")]


@dataclass(frozen=True)
class Concordance:
    """Agreement of two gene rankings (Bayesian DE and Wilcoxon) on the same comparison."""

    spearman: float  # Spearman correlation of the genes' rank positions in the two tables
    top_n: int
    overlap: int  # genes in both tables' first top_n rows
    overlap_fraction: float  # overlap / top_n


def concordance(de_table: pd.DataFrame, wilcoxon_table: pd.DataFrame, *, top_n: int = 50) -> Concordance:
    """How well a DE table (:meth:`engine.analysis.de.DEResult.table`) agrees with :func:`wilcoxon`.

    Both tables are taken in their own row order (most to least differential) and matched on
    their index (``var_names``).
    """
    if top_n < 1:
        raise ValueError(f"top_n must be at least 1, got {top_n}")
    if not de_table.index.sort_values().equals(wilcoxon_table.index.sort_values()):
        raise ValueError("the two tables hold different genes: compute both on the same AnnData")
    top_n = min(top_n, len(de_table))
    de_rank = pd.Series(np.arange(len(de_table)), index=de_table.index)
    wilcoxon_rank = pd.Series(np.arange(len(wilcoxon_table)), index=wilcoxon_table.index)
    rho = scipy.stats.spearmanr(de_rank.to_numpy(), wilcoxon_rank.loc[de_rank.index].to_numpy())
    overlap = len(set(de_table.index[:top_n]) & set(wilcoxon_table.index[:top_n]))
    return Concordance(
        spearman=float(rho.statistic),
        top_n=top_n,
        overlap=overlap,
        overlap_fraction=overlap / top_n,
    )


@dataclass(frozen=True)
class _GeneRanks:
    """Per gene: group 1's rank sum among the chosen cells, the tie term sum(t^3 - t), and sums.

    ``sums[1]`` / ``sums[0]``: per gene, the sum of group 1's / group 2's log-normalised values.
    """

    rank_sum: np.ndarray
    tie_term: np.ndarray
    sums: np.ndarray


def _ranks_by_gene(counts: sp.spmatrix | np.ndarray, cells: np.ndarray, in1: np.ndarray) -> _GeneRanks:
    """Ranks of log1p(counts normalised to TARGET_SUM per cell) of ``cells``, gene by gene.

    Sparse-aware: values are non-negative, so a gene's zeros rank first and share one average rank,
    (n_zero + 1) / 2, known from their count; only the non-zero values are sorted.

    Compiled passes (:mod:`engine.analysis._kernels`) over the chosen rows of the CSR counts,
    without copying them first: the per-cell scale factors and each gene's count of non-zeros;
    then, a block of genes at a time (the write cursors stay few, and one buffer of a block's values
    serves every block), each value ``log1p(count * (TARGET_SUM / total))`` in float64 (numpy's
    log1p of scaling a float64 copy, bit for bit) written to its gene's place as a sort key: its
    bits shifted left by one, the lowest bit set for group 1's cells. Sorting the keys sorts the
    values exactly, equal values stay equal, and the group travels with its value without an
    argsort. Each gene's keys are sorted in place (numpy) and each run of equal values gets the
    average of the ranks it spans (:func:`engine.analysis._kernels.gene_run_sums`, one pass).
    The rows, then the genes, are split over the cores; each thread writes after the rows of the
    threads before it, so the result does not depend on the number of threads. Zeros (explicit
    ones, or cells without counts) are not stored. (At 1M cells the single-threaded gene-major copy,
    a separate log1p and a padded sort took 20-31 s; this takes 5-9 s, benchmarks/de_scale.py.)

    A run of t equal values starting at position p (0-based) among a gene's non-zeros holds ranks
    n_zero + p + 1 ... n_zero + p + t, average n_zero + p + (t + 1) / 2. Sums of half-integers
    below 2**52 are exact in float64, so the order of summation does not matter.
    """
    if sp.issparse(counts) and counts.format == "csr":
        csr, rows = counts, np.asarray(cells, dtype=np.int64)
    else:
        csr, rows = sp.csr_matrix(counts[cells]), np.arange(len(cells), dtype=np.int64)
    if not csr.has_sorted_indices:  # scatter_log_keys walks each row's genes in order
        csr = csr.copy()
        csr.sort_indices()
    n_rows, n_genes = len(rows), csr.shape[1]
    parts = max(min(available_cores(), n_rows // _ROWS_PER_THREAD), 1)
    bounds = [n_rows * c // parts for c in range(parts + 1)]  # split_over_threads' row ranges
    part_of = {start: c for c, start in enumerate(bounds[:-1])}
    scale = np.zeros(n_rows)
    per_part = np.zeros((parts, n_genes), dtype=np.int64)  # non-zeros per gene in each part's rows
    split_over_threads(lambda start, stop: row_scales(
        csr.data, csr.indices, csr.indptr, rows, start, stop, TARGET_SUM, scale, per_part[part_of[start]]),
        n_rows, parts)
    nnz = per_part.sum(axis=0)
    indptr = np.zeros(n_genes + 1, dtype=np.int64)
    np.cumsum(nnz, out=indptr[1:])
    # where each part starts writing in each gene: after the parts before it
    part_start = indptr[:-1] + np.cumsum(per_part, axis=0) - per_part
    cursors = [csr.indptr[rows[bounds[c] : bounds[c + 1]]].astype(np.int64) for c in range(parts)]
    group = np.ascontiguousarray(in1, dtype=np.uint64)
    sums = np.zeros((parts, 2, n_genes))
    blocks = [(first, min(first + _GENE_BLOCK, n_genes)) for first in range(0, n_genes, _GENE_BLOCK)]
    keys = np.empty(max((int(indptr[last] - indptr[first]) for first, last in blocks), default=0), dtype=np.uint64)
    n_zero = (n_rows - nnz).astype(np.float64)
    rank_sum = np.zeros(n_genes)  # group 1's ranks of non-zero values
    count = np.zeros(n_genes)  # group 1's cells with a non-zero value
    ties = np.zeros(n_genes)
    for first, last in blocks:
        position = part_start - indptr[first]  # into ``keys``; only genes first..last-1 are written

        def scatter(start: int, stop: int, last: int = last, position: np.ndarray = position) -> None:
            c = part_of[start]
            scatter_log_keys(csr.data, csr.indices, csr.indptr, rows, start, stop, scale, group, cursors[c], last,
                             position[c], keys, keys.view(np.float64), sums[c])

        split_over_threads(scatter, n_rows, parts)
        block = slice(first, last)
        _sort_and_sum(keys, indptr[first : last + 1] - indptr[first], n_zero[block], rank_sum[block], count[block],
                      ties[block])
    zeros_in1 = int(in1.sum()) - count
    return _GeneRanks(rank_sum=rank_sum + zeros_in1 * (n_zero + 1.0) / 2.0, tie_term=n_zero**3 - n_zero + ties,
                      sums=sums.sum(axis=0))


def _sort_and_sum(keys: np.ndarray, indptr: np.ndarray, n_zero: np.ndarray, rank_sum: np.ndarray,
                  count: np.ndarray, ties: np.ndarray) -> None:
    """Sort each gene's keys ``keys[indptr[g]:indptr[g + 1]]`` in place and fill its outputs (gene_run_sums).

    The genes are split over the cores in ranges of about equal numbers of keys.
    """
    n_genes, n_keys = len(indptr) - 1, int(indptr[-1])

    def work(start: int, stop: int) -> None:
        # the genes whose keys start in [start, stop); the last range also takes trailing empty genes
        a = int(np.searchsorted(indptr[:-1], start, side="left"))
        b = n_genes if stop == n_keys else int(np.searchsorted(indptr[:-1], stop, side="left"))
        for gene in range(a, b):
            keys[indptr[gene] : indptr[gene + 1]].sort()  # numpy releases the GIL while it sorts
        gene_run_sums(keys, indptr, a, b, n_zero, rank_sum, count, ties)

    split_over_threads(work, n_keys, max(min(available_cores(), n_keys // _KEYS_PER_THREAD), 1))


# Genes whose values are written and sorted per pass (measured at 1M cells x 1,287 genes: 512 beat
# 128 and 2,048 for the writes).
_GENE_BLOCK = 512
# Fewest rows given a thread of their own (small comparisons run on the calling thread).
_ROWS_PER_THREAD = 2_000
# Fewest sort keys worth a thread of their own.
_KEYS_PER_THREAD = 100_000
