"""Wilcoxon rank-sum test between two groups, and its agreement with the Bayesian DE.

The classical reference next to the model's DE: the test scanpy's ``rank_genes_groups`` runs,
on log1p of counts normalised to 10,000 per cell. p-values are the normal approximation of
``scipy.stats.mannwhitneyu(..., method="asymptotic")`` (tie and continuity corrected).

Ranks are computed here, vectorised over genes and sparse-aware, rather than by scanpy's
``rank_genes_groups(method="wilcoxon")``, because that was measured slower (7 s against 0.8 s on
the 12,261-cell sample, 1.2 s against 0.2 s on 14,878 genes, plus about a minute of numba
compilation on first use) and leaves out the continuity correction, so its p-values differ from scipy's.
At atlas scale (benchmarks/de_scale.py) 30,000 against 60,000 cells over 14,878 genes take about 5 s,
100,000 against 200,000 cells of a 1M-cell atlas about 4 s; the loops that are not sorts (the
gene-major copy, filling and reading the sort keys) are small numba kernels in
:mod:`engine.analysis._kernels`, compiled once and cached on disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.stats

from engine.analysis._kernels import csc_scaled, fill_keys, row_run_sums
from engine.analysis.de import check_groups, display_names
from engine.logs import timed

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
    logn = _log_normalized(counts, cells)

    n1, n2 = int(in1.sum()), int((~in1).sum())
    rank_sum_1, tie_term = _rank_sums(logn, in1)
    u1 = rank_sum_1 - n1 * (n1 + 1) / 2.0
    n = n1 + n2
    sigma = np.sqrt(n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1))))
    excess = u1 - n1 * n2 / 2.0
    # Continuity correction towards zero, as scipy's asymptotic mannwhitneyu.
    corrected = np.maximum(np.abs(excess) - 0.5, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sigma > 0, np.sign(excess) * corrected / sigma, 0.0)
    pvalue = np.minimum(2.0 * scipy.stats.norm.sf(np.abs(z)), 1.0)

    mean1, mean2 = _group_means(logn, in1)
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


def _log_normalized(counts: sp.spmatrix | np.ndarray, cells: np.ndarray) -> sp.csc_matrix:
    """log1p(counts normalised to TARGET_SUM per cell) of the chosen cells, sparse by gene.

    One compiled pass (:func:`engine.analysis._kernels.csc_scaled`) reads the chosen rows of the
    CSR counts and writes them gene-major, each value count * (TARGET_SUM / total) in float64,
    without copying the rows first (scipy's row indexing and ``tocsc`` took 6 of the 9 s at 90k
    cells x 15k genes). Zeros (explicit ones, or cells without counts) are not stored: they rank
    as zeros. Then numpy's log1p, so values are bit for bit those of scaling a float64 copy.
    """
    if sp.issparse(counts) and counts.format == "csr":
        csr, rows = counts, np.asarray(cells, dtype=np.int64)
    else:
        csr, rows = sp.csr_matrix(counts[cells]), np.arange(len(cells), dtype=np.int64)
    if not csr.has_sorted_indices:  # csc_scaled walks each row's genes in order
        csr = csr.copy()
        csr.sort_indices()
    data, indices, indptr = csc_scaled(csr.data, csr.indices, csr.indptr, rows, csr.shape[1], TARGET_SUM)
    np.log1p(data, out=data)
    return sp.csc_matrix((data, indices, indptr), shape=(len(rows), csr.shape[1]))


def _group_means(x: sp.csc_matrix, in1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per gene: mean of ``x`` over group 1's cells and over the others (as ``x[in1].mean(axis=0)``)."""
    n1, n2 = int(in1.sum()), int((~in1).sum())
    weights1 = np.where(in1, 1.0 / n1, 0.0)
    weights2 = np.where(in1, 0.0, 1.0 / n2)
    return x.T @ weights1, x.T @ weights2


# Padded non-zero values sorted at once, per chunk of genes (bounds the temporaries to ~100 MB).
_CHUNK_SIZE = 1 << 21
# Genes are sorted in buckets of similar non-zero counts, each padded to its widest gene.
_BUCKET_RATIO = 1.25
_PAD = np.uint64(np.iinfo(np.uint64).max - 1)  # sorts after every finite value, group bit 0


def _rank_sums(x: sp.csc_matrix, in1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per gene: sum of group 1's ranks among all cells, and the tie term sum(t^3 - t).

    Sparse-aware: values are non-negative, so a gene's zeros rank first and share one average rank,
    (n_zero + 1) / 2, known from their count; only the non-zero values are sorted, many genes per
    call (:func:`_sorted_keys`), and each run of equal values in a gene gets the average of the
    ranks it spans (:func:`_run_sums`, one pass over the sorted values).
    """
    n_cells, n_genes = x.shape
    nnz = np.diff(x.indptr)
    n_zero = (n_cells - nnz).astype(np.float64)
    nonzero_rank_sum = np.zeros(n_genes)  # group 1's ranks of non-zero values
    nonzero_in1 = np.zeros(n_genes)  # group 1's cells with a non-zero value
    tie_term = n_zero**3 - n_zero
    bits = np.ascontiguousarray(x.data, dtype=np.float64).view(np.uint64)
    group = np.ascontiguousarray(in1, dtype=np.uint64)
    for genes in _gene_chunks(nnz):
        keys = _sorted_keys(bits, x.indices, x.indptr, genes, int(nnz[genes].max()), group)
        rank_sum, count, ties = _run_sums(keys, nnz[genes], n_zero[genes])
        nonzero_rank_sum[genes] += rank_sum
        nonzero_in1[genes] += count
        tie_term[genes] += ties
    zeros_in1 = int(in1.sum()) - nonzero_in1
    return nonzero_rank_sum + zeros_in1 * (n_zero + 1.0) / 2.0, tie_term


def _gene_chunks(nnz: np.ndarray) -> Iterator[np.ndarray]:
    """The genes with non-zero values, in groups of similar count padding to at most _CHUNK_SIZE."""
    order = np.argsort(nnz, kind="stable")
    order = order[nnz[order] > 0]
    if order.size == 0:
        return
    bucket = np.floor(np.log(nnz[order]) / np.log(_BUCKET_RATIO)).astype(np.int64)
    edges = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1], True])
    for first, stop in zip(edges[:-1], edges[1:], strict=True):
        step = max(1, _CHUNK_SIZE // int(nnz[order[stop - 1]]))
        for start in range(first, stop, step):
            yield order[start : min(start + step, stop)]


def _sorted_keys(
    bits: np.ndarray, indices: np.ndarray, indptr: np.ndarray, genes: np.ndarray, width: int, group: np.ndarray
) -> np.ndarray:
    """One row per gene: its non-zero values as sort keys, ascending, padded with _PAD to ``width``.

    ``bits`` are the CSC matrix's float64 values as uint64, ``indices``/``indptr`` its structure,
    ``group`` 1 for group 1's cells, else 0. A key is the float's bits (which order non-negative
    floats as their values) shifted left by one, with the lowest bit set for group 1's cells:
    sorting keys sorts values exactly, equal values stay equal, and the group travels with its
    value without an argsort.
    """
    keys = np.full((len(genes), width), _PAD, dtype=np.uint64)
    fill_keys(bits, indices, indptr, genes, group, keys)
    keys.sort(axis=1)
    return keys


def _run_sums(
    keys: np.ndarray, lengths: np.ndarray, n_zero: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of sorted keys: group 1's rank sum, group 1's count, and the tie term sum(t^3 - t).

    Row ``i`` holds ``lengths[i]`` keys, then padding; the gene has ``n_zero[i]`` zeros.

    A run of t equal values starting at position p (0-based) among a gene's non-zeros holds ranks
    n_zero + p + 1 ... n_zero + p + t, average n_zero + p + (t + 1) / 2. Sums of half-integers
    below 2**52 are exact in float64, so the order of summation does not matter.
    """
    rank_sum = np.zeros(len(lengths))
    count = np.zeros(len(lengths))
    ties = np.zeros(len(lengths))
    row_run_sums(keys, np.ascontiguousarray(lengths, dtype=np.int64), np.ascontiguousarray(n_zero, dtype=np.float64),
                  rank_sum, count, ties)
    return rank_sum, count, ties
