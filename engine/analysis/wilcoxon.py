"""Wilcoxon rank-sum test between two groups, and its agreement with the Bayesian DE.

The classical reference next to the model's DE: the test scanpy's ``rank_genes_groups`` runs,
on log1p of counts normalised to 10,000 per cell. p-values are the normal approximation of
``scipy.stats.mannwhitneyu(..., method="asymptotic")`` (tie and continuity corrected).
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.stats

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

    mean1 = np.asarray(logn[in1].mean(axis=0)).ravel()
    mean2 = np.asarray(logn[~in1].mean(axis=0)).ravel()
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
    """log1p(counts normalised to TARGET_SUM per cell) of the chosen cells, sparse by gene."""
    x = sp.csr_matrix(counts[cells], dtype=np.float64)
    totals = np.asarray(x.sum(axis=1)).ravel()
    scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
    x = sp.diags(scale) @ x
    x.data = np.log1p(x.data)
    x.eliminate_zeros()
    return x.tocsc()


def _rank_sums(x: sp.csc_matrix, in1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per gene: sum of group 1's ranks among all cells, and the tie term sum(t^3 - t).

    Sparse-aware: the zeros of a gene share one average rank, only non-zero values are ranked.
    Values are non-negative, so zeros rank first.
    """
    n_cells, n_genes = x.shape
    rank_sum = np.empty(n_genes)
    tie_term = np.empty(n_genes)
    n1 = int(in1.sum())
    for gene in range(n_genes):
        start, stop = x.indptr[gene], x.indptr[gene + 1]
        values, rows = x.data[start:stop], x.indices[start:stop]
        n_zero = n_cells - len(values)
        # Average rank of each distinct non-zero value: after the zeros and all smaller values.
        _, inverse, ties = np.unique(values, return_inverse=True, return_counts=True)
        ties = ties.astype(np.float64)
        distinct_rank = n_zero + np.cumsum(ties) - (ties - 1.0) / 2.0
        row_in1 = in1[rows]
        zeros_in1 = n1 - int(row_in1.sum())
        rank_sum[gene] = distinct_rank[inverse[row_in1]].sum() + zeros_in1 * (n_zero + 1) / 2.0
        tie_term[gene] = float((ties**3 - ties).sum()) + float(n_zero) ** 3 - n_zero
    return rank_sum, tie_term
