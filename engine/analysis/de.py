"""Bayesian differential expression between two groups of cells (Lopez et al. 2018; Boyeau et al. 2019).

The procedure follows scvi-tools' ``differential_expression`` (``DifferentialComputation``):

1. Up to ``max_cells_per_group`` cells are drawn from each group (seeded, without replacement).
2. ``n_samples`` posterior draws of the normalised expression rho (counts per 10,000, i.e.
   scVI's ``scale`` times 1e4) are taken per group, spread evenly over the drawn cells.
3. ``n_pairs`` draws of group 1 are paired at random with draws of group 2 (scVI's
   ``m_permutation``). With ``batch_correction=True`` every draw is decoded once per batch
   category (``transform_batch``) and pairs only join draws decoded in the same batch, so batch
   effects cancel in the comparison.
4. Per gene, the log2 fold change LFC = log2(rho1 + eps) - log2(rho2 + eps) over the pairs.

Decisions, as in scvi-tools (``DifferentialComputation.get_bayes_factors``, ``test_mode="three"``):

- ``mode="change"`` (Boyeau et al. 2019): ``proba_de = max(P(LFC >= delta), P(LFC < -delta))``,
  the posterior probability that the gene changes by at least ``delta`` (log2 units) in the
  direction the data favour; ``bayes_factor = sign * log(proba_de / (1 - proba_de))`` with
  ``sign = +1`` when up in group 1, ``-1`` when down.
- ``mode="vanilla"`` (Lopez et al. 2018): ``bayes_factor = log(P(rho1 > rho2) / P(rho1 <= rho2))``
  and ``proba_de = max(P(rho1 > rho2), P(rho1 <= rho2))``, the posterior probability of the
  favoured direction (scVI reports the one-sided ``proba_m1``; the two-sided value keeps
  ``proba_de`` and the FDR calls meaningful for genes down in group 1 too). ``delta`` is unused.
- ``is_de_fdr``: scVI's posterior expected FDR procedure: sort genes by ``proba_de`` (descending)
  and call the longest prefix whose running mean of ``1 - proba_de`` stays at or below ``fdr``.

The pseudocount ``eps`` is estimated as scvi-tools 1.4.2 does (``estimate_pseudocounts_offset``):
per group, the 90% quantile, over the genes with a mean raw count below 0.01 in that group, of the
largest posterior draw of rho; the larger of the two groups' values, divided by the number of genes,
and at least 1e-10 of the library. It shrinks the fold changes of genes that are not expressed
towards 0 without flattening those of expressed genes: it is about the size of one gene's share of
the library, not of the largest artefact. The reported LFC summaries (``lfc_mean``, ``lfc_median``,
``lfc_std``, ``lfc_low``, ``lfc_high``) use ``1e-3 * eps``, as scvi-tools does, so that they are close
to the plain fold change of expressed genes.

Differences from scvi-tools, on purpose: ``bayes_factor`` carries the sign of the change (scvi-tools
reports ``log(proba_de / (1 - proba_de))`` for genes up and down alike), so a volcano can colour
direction from it; and the "vanilla" ``proba_de`` is two-sided (below).

Re-thresholding: :class:`DEResult` keeps, per gene, evenly spaced order statistics of the LFC
distribution (sorted, float32), so :meth:`DEResult.table` recomputes ``proba_de``,
``bayes_factor`` and ``is_de_fdr`` for any ``delta`` and ``fdr`` in milliseconds, without drawing
from the model again.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from engine.checks import as_text, obs_column
from engine.logs import timed
from engine.memory import check_dense_size
from engine.preprocessing.normalize import TARGET_SUM

if TYPE_CHECKING:
    from engine.runs.records import Run

Mode = Literal["vanilla", "change"]

# Bayes factors of certain calls stay finite: log((1 + 1e-8) / 1e-8) ~ 18.4, as scvi-tools.
_BF_EPS = 1e-8
# Genes with a mean raw count below this in a group count as "not expressed" there (scVI).
_NOT_EXPRESSED_COUNTS = 0.01
# Smallest pseudocount as a fraction of the library (scvi-tools 1.4.2: 1e-10).
_MIN_PSEUDOCOUNT_FRACTION = 1e-10
# Cells per group below which a DE is refused, and below which it is flagged as uncertain.
MIN_CELLS = 3
FEW_CELLS = 10
# Fewer genes called than this and the page says why (why_few_calls).
FEW_CALLS = 10
# Runs trained for fewer epochs than this have a broad posterior: few genes pass (why_few_calls).
FEW_EPOCHS = 50
# Groups smaller than this make uncertain expression estimates (why_few_calls).
SMALL_GROUP = 50
# Order statistics kept per gene for re-thresholding: P(LFC > delta) to within 1e-3.
N_STORED_QUANTILES = 1000
# Genes processed at once when turning draws into fold changes: bounds memory for 15k+ genes.
_GENE_CHUNK = 128

TABLE_COLUMNS = (
    "gene",
    "lfc_mean",
    "lfc_median",
    "lfc_std",
    "lfc_low",
    "lfc_high",
    "proba_de",
    "bayes_factor",
    "is_de_fdr",
    "mean_norm_1",
    "mean_norm_2",
    "mean_counts_1",
    "mean_counts_2",
    "frac_expr_1",
    "frac_expr_2",
)



@dataclass(frozen=True, eq=False)
class DEResult:
    """Posterior fold-change distributions of one two-group comparison, ready to threshold.

    Per-gene arrays have one entry per gene, in ``var_names`` order. Normalised expression is in
    counts per 10,000 (``TARGET_SUM``); fold changes are log2.
    """

    var_names: pd.Index
    gene: np.ndarray  # display name: adata.var["display_name"] if present, else var_names
    mode: Mode
    delta: float  # default threshold for table(); unused in "vanilla" mode
    fdr: float  # default target posterior expected FDR for table()
    lfc_sorted: np.ndarray  # (n_genes, n_stored) sorted LFC order statistics (pseudocount eps)
    lfc_mean: np.ndarray
    lfc_median: np.ndarray
    lfc_std: np.ndarray
    lfc_low: np.ndarray  # lower end of the equal-tailed credible interval at credible_level
    lfc_high: np.ndarray
    credible_level: float
    mean_norm_1: np.ndarray  # posterior mean of normalised expression, group 1, per 10k counts
    mean_norm_2: np.ndarray
    mean_counts_1: np.ndarray  # mean raw count over all cells of group 1
    mean_counts_2: np.ndarray
    frac_expr_1: np.ndarray  # fraction of group 1's cells with a non-zero count
    frac_expr_2: np.ndarray
    n_cells_1: int  # cells in group 1
    n_cells_2: int
    n_sampled_1: int  # cells of group 1 the posterior was drawn from (at most max_cells_per_group)
    n_sampled_2: int
    pseudocount: float  # eps added to rho (per 10k counts) before the log
    n_samples: int
    n_pairs: int
    batch_correction: bool
    seed: int
    warnings: list[str] = field(default_factory=list)  # plain sentences for the user

    def table(self, *, delta: float | None = None, fdr: float | None = None) -> pd.DataFrame:
        """The result as a tidy table, one row per gene, thresholded at ``delta`` and ``fdr``.

        ``delta`` and ``fdr`` default to the values the result was computed with. Rows are
        sorted by ``proba_de`` (descending), ties by ``|lfc_mean|`` (descending); the index holds
        ``var_names`` (named ``"var_name"``). Columns: see ``TABLE_COLUMNS``.
        """
        delta = self.delta if delta is None else _check_delta(delta)
        fdr = self.fdr if fdr is None else _check_fdr(fdr)
        proba_de, bayes_factor = _decide(self.lfc_sorted, mode=self.mode, delta=delta)
        columns = {
            "gene": self.gene,
            "lfc_mean": self.lfc_mean,
            "lfc_median": self.lfc_median,
            "lfc_std": self.lfc_std,
            "lfc_low": self.lfc_low,
            "lfc_high": self.lfc_high,
            "proba_de": proba_de,
            "bayes_factor": bayes_factor,
            "is_de_fdr": fdr_calls(proba_de, fdr=fdr),
            "mean_norm_1": self.mean_norm_1,
            "mean_norm_2": self.mean_norm_2,
            "mean_counts_1": self.mean_counts_1,
            "mean_counts_2": self.mean_counts_2,
            "frac_expr_1": self.frac_expr_1,
            "frac_expr_2": self.frac_expr_2,
        }
        table = pd.DataFrame(columns, index=pd.Index(self.var_names, name="var_name"))
        order = np.lexsort((-np.abs(self.lfc_mean), -proba_de))
        return table.iloc[order]

    def provenance(self) -> dict[str, object]:
        """The parameters that produced this result, for export headers."""
        return {
            "mode": self.mode,
            "n_cells_1": self.n_cells_1,
            "n_cells_2": self.n_cells_2,
            "n_sampled_1": self.n_sampled_1,
            "n_sampled_2": self.n_sampled_2,
            "n_samples": self.n_samples,
            "n_pairs": self.n_pairs,
            "batch_correction": self.batch_correction,
            "pseudocount": round(self.pseudocount, 6),
            "credible_level": self.credible_level,
            "seed": self.seed,
        }


@timed
def differential_expression(
    run: Run,
    adata: ad.AnnData,
    *,
    group1: np.ndarray,
    group2: np.ndarray,
    mode: Mode = "change",
    delta: float = 0.25,
    fdr: float = 0.05,
    max_cells_per_group: int = 500,
    n_samples: int = 5000,
    n_pairs: int = 10000,
    batch_correction: bool = False,
    credible_level: float = 0.9,
    seed: int = 0,
    on_progress: Callable[[float], None] | None = None,
) -> DEResult:
    """Bayesian differential expression of group 1 against group 2 with a trained run.

    Parameters
    ----------
    run
        A trained run (:func:`engine.runs.fit.fit` or :func:`engine.runs.storage.load_run`) on ``adata``'s genes.
    adata
        The cells, with raw counts in ``layers["counts"]`` (else ``X``) and the run's genes, in any
        order; the result follows the run's gene order.
    group1, group2
        Boolean masks over ``adata``'s cells (see :func:`groups_from_obs`); they must not overlap
        and each needs at least 3 cells (fewer than 10 gives a warning in ``result.warnings``).
    mode
        ``"change"`` (Boyeau et al. 2019, LFC beyond ``delta``) or ``"vanilla"`` (Lopez et al. 2018,
        rho1 > rho2). See the module docstring.
    delta
        Smallest |LFC| (log2) that counts as a change in ``"change"`` mode (scVI's default 0.25).
    fdr
        Target posterior expected false discovery rate for ``is_de_fdr``.
    max_cells_per_group
        Cells drawn from each group for posterior sampling (raw statistics use every cell).
    n_samples
        Posterior draws of normalised expression per group (scVI's ``n_samples_overall``), split
        evenly over batch categories with ``batch_correction``.
    n_pairs
        Random pairs of draws forming the LFC distribution (scVI's ``m_permutation``).
    batch_correction
        Decode every draw in each batch category of the run and pair draws of the same category,
        so the comparison is free of batch effects. Needs a run trained with a batch key.
    credible_level
        Probability mass of the equal-tailed credible interval ``[lfc_low, lfc_high]``.
    seed
        Seeds cell sampling, posterior draws and pairing: the same inputs give the same result.
    on_progress
        Called with the fraction done (0 to 1) before each group's posterior draws and the summary.
    """
    # Imported here so that tables, CSV export and groups work without loading torch.
    from engine.model.inference import normalized_expression, run_inputs

    mode = _check_mode(mode)
    delta = _check_delta(delta)
    fdr = _check_fdr(fdr)
    if not 0.0 < credible_level < 1.0:
        raise ValueError(f"credible_level must lie strictly between 0 and 1, got {credible_level}")
    sizes = {"max_cells_per_group": max_cells_per_group, "n_samples": n_samples, "n_pairs": n_pairs}
    for name, value in sizes.items():
        if value < 2:
            raise ValueError(f"{name} must be at least 2, got {value}")
    counts, _ = run_inputs(run, adata)  # raw counts in the run's gene order; checks the genes
    mask1, mask2, notes = check_groups(adata, group1=group1, group2=group2)

    if batch_correction:
        if run.batch_categories is None:
            raise ValueError(
                "batch_correction=True needs a run trained with a batch key; this run has none: "
                "train with a batch key or pass batch_correction=False"
            )
        batches: list[str | None] = list(run.batch_categories)
    else:
        batches = [None]  # each cell decoded in its own observed batch

    rng = np.random.default_rng(seed)
    cells1 = _sample_cells(np.flatnonzero(mask1), max_cells_per_group, rng)
    cells2 = _sample_cells(np.flatnonzero(mask2), max_cells_per_group, rng)
    draws_per_batch = max(n_samples // len(batches), 2)
    pairs_per_batch = max(n_pairs // len(batches), 2)
    # Every draw of both groups is held at once, and again gene-major in summarize_lfc.
    check_dense_size(
        2 * len(batches) * (draws_per_batch + max_cells_per_group), counts.shape[1], n_matrices=2,
        what="The posterior samples for differential expression",
        advice="lower n_samples (posterior draws per group), train on fewer genes, or turn batch "
               "correction off",
    )

    draws1: list[np.ndarray] = []
    draws2: list[np.ndarray] = []
    steps = 2 * len(batches) + 1  # the posterior draws of each group in each batch, then the summary
    # The drawn cells alone, counts already in the run's gene order: normalized_expression reads its
    # input's counts and batch labels, which would copy the whole atlas's counts on every call.
    group1 = _drawn_cells(run, adata, counts, cells1)
    group2 = _drawn_cells(run, adata, counts, cells2)
    jobs = [(batch, cells, out) for batch in batches for cells, out in ((group1, draws1), (group2, draws2))]
    for step, (batch, cells, out) in enumerate(jobs):
        if on_progress is not None:
            on_progress(step / steps)
        per_cell = -(-draws_per_batch // cells.n_obs)  # ceil: enough draws, then subsample
        seed = int(rng.integers(2**31 - 1))
        if per_cell == 1:  # one draw from each of draws_per_batch cells: decode only those
            chosen = rng.choice(cells.n_obs, size=draws_per_batch, replace=False)
            out.append(normalized_expression(
                run, cells, indices=chosen, library_size=TARGET_SUM, transform_batch=batch, seed=seed
            )[0])
            continue
        rho = normalized_expression(
            run,
            cells,
            n_samples=per_cell,
            library_size=TARGET_SUM,
            transform_batch=batch,
            seed=seed,
        ).reshape(-1, counts.shape[1])
        out.append(rho[rng.choice(rho.shape[0], size=draws_per_batch, replace=False)])

    if on_progress is not None:
        on_progress((steps - 1) / steps)
    mean_counts_1, frac_expr_1 = _count_statistics(counts, mask1)
    mean_counts_2, frac_expr_2 = _count_statistics(counts, mask2)
    summary = summarize_lfc(
        draws1,
        draws2,
        not_expressed_1=mean_counts_1 < _NOT_EXPRESSED_COUNTS,
        not_expressed_2=mean_counts_2 < _NOT_EXPRESSED_COUNTS,
        n_pairs_per_batch=pairs_per_batch,
        credible_level=credible_level,
        rng=rng,
    )
    return DEResult(
        var_names=pd.Index(run.var_names),
        gene=display_names(adata)[adata.var_names.get_indexer(run.var_names)],
        mode=mode,
        delta=delta,
        fdr=fdr,
        lfc_sorted=summary.lfc_sorted,
        lfc_mean=summary.lfc_mean,
        lfc_median=summary.lfc_median,
        lfc_std=summary.lfc_std,
        lfc_low=summary.lfc_low,
        lfc_high=summary.lfc_high,
        credible_level=credible_level,
        mean_norm_1=np.mean([d.mean(axis=0) for d in draws1], axis=0),
        mean_norm_2=np.mean([d.mean(axis=0) for d in draws2], axis=0),
        mean_counts_1=mean_counts_1,
        mean_counts_2=mean_counts_2,
        frac_expr_1=frac_expr_1,
        frac_expr_2=frac_expr_2,
        n_cells_1=int(mask1.sum()),
        n_cells_2=int(mask2.sum()),
        n_sampled_1=len(cells1),
        n_sampled_2=len(cells2),
        pseudocount=summary.pseudocount,
        n_samples=n_samples,
        n_pairs=n_pairs,
        batch_correction=batch_correction,
        seed=seed,
        warnings=notes,
    )


@dataclass(frozen=True, eq=False)
class LFCSummary:
    """Per-gene summaries of a paired LFC distribution (see :func:`summarize_lfc`)."""

    lfc_sorted: np.ndarray  # (n_genes, n_stored) float32, ascending in each row
    lfc_mean: np.ndarray
    lfc_median: np.ndarray
    lfc_std: np.ndarray
    lfc_low: np.ndarray
    lfc_high: np.ndarray
    pseudocount: float


def summarize_lfc(
    draws1: list[np.ndarray],
    draws2: list[np.ndarray],
    *,
    not_expressed_1: np.ndarray,
    not_expressed_2: np.ndarray,
    n_pairs_per_batch: int,
    credible_level: float,
    rng: np.random.Generator,
    n_stored: int = N_STORED_QUANTILES,
) -> LFCSummary:
    """Pair posterior draws of two groups and summarise the per-gene LFC distribution.

    ``draws1[b]`` and ``draws2[b]`` are (n_draws, n_genes) normalised expression decoded in the
    same batch category ``b``; pairs only join draws of the same ``b``. ``not_expressed_*`` flag
    the genes used to estimate the pseudocount (see the module docstring).
    """
    if len(draws1) != len(draws2) or not draws1:
        raise ValueError("draws1 and draws2 need one array per batch category, the same number")
    pseudocount = estimate_pseudocount(
        _stacked(draws1), _stacked(draws2), not_expressed_1, not_expressed_2
    )
    pairs = [
        (rng.integers(len(d1), size=n_pairs_per_batch), rng.integers(len(d2), size=n_pairs_per_batch))
        for d1, d2 in zip(draws1, draws2, strict=True)
    ]
    n_genes = draws1[0].shape[1]
    n_total = n_pairs_per_batch * len(pairs)
    n_keep = min(n_stored, n_total)
    # Order statistics at the middle of n_keep equal-probability bins.
    keep = ((np.arange(n_keep) + 0.5) * n_total / n_keep).astype(np.int64)
    tail = (1.0 - credible_level) / 2.0
    lfc_mean, lfc_median, lfc_std, lfc_low, lfc_high = np.empty((5, n_genes), dtype=np.float32)
    lfc_sorted = np.empty((n_genes, n_keep), dtype=np.float32)
    small = 1e-3 * pseudocount  # scVI reports LFC summaries with a 1000x smaller pseudocount
    for start in range(0, n_genes, _GENE_CHUNK):
        genes = slice(start, min(start + _GENE_CHUNK, n_genes))
        # This chunk's draws gene-major: copied out, then transposed while small enough to stay in
        # cache (transposing whole arrays, or a strided slice, misses the cache on every value).
        block1 = [np.ascontiguousarray(np.ascontiguousarray(d[:, genes]).T) for d in draws1]
        block2 = [np.ascontiguousarray(np.ascontiguousarray(d[:, genes]).T) for d in draws2]
        decision = _paired_lfc(block1, block2, pairs, pseudocount)
        lfc_sorted[genes] = decision[:, keep]
        reported = _paired_lfc(block1, block2, pairs, small)
        lfc_mean[genes] = reported.mean(axis=1)
        lfc_std[genes] = reported.std(axis=1)
        lfc_median[genes] = _sorted_quantile(reported, 0.5)
        lfc_low[genes] = _sorted_quantile(reported, tail)
        lfc_high[genes] = _sorted_quantile(reported, 1.0 - tail)
    return LFCSummary(
        lfc_sorted=lfc_sorted,
        lfc_mean=lfc_mean,
        lfc_median=lfc_median,
        lfc_std=lfc_std,
        lfc_low=lfc_low,
        lfc_high=lfc_high,
        pseudocount=pseudocount,
    )


def _stacked(draws: list[np.ndarray]) -> np.ndarray:
    """The draws of every batch category in one array (the array itself when there is one)."""
    return draws[0] if len(draws) == 1 else np.concatenate(draws)


def _paired_lfc(
    draws1: list[np.ndarray],
    draws2: list[np.ndarray],
    pairs: list[tuple[np.ndarray, np.ndarray]],
    pseudocount: float,
) -> np.ndarray:
    """log2 fold changes of the paired draws, (n_genes, n_pairs), each row sorted.

    ``draws1``/``draws2`` are gene-major here, (n_genes, n_draws): sorting and gathering along
    contiguous rows is several times faster than along columns.
    """
    parts = []
    for (u, v), d1, d2 in zip(pairs, draws1, draws2, strict=True):
        lfc = np.take(np.log2(d1 + pseudocount), u, axis=1)
        lfc -= np.take(np.log2(d2 + pseudocount), v, axis=1)
        parts.append(lfc)
    lfc = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    lfc.sort(axis=1)
    return lfc


def _sorted_quantile(rows: np.ndarray, q: float) -> np.ndarray:
    """Quantile ``q`` of each sorted row, linear interpolation (numpy's default method)."""
    position = q * (rows.shape[1] - 1)
    below = int(np.floor(position))
    above = min(below + 1, rows.shape[1] - 1)
    weight = position - below
    return (1.0 - weight) * rows[:, below] + weight * rows[:, above]


def estimate_pseudocount(
    draws1: np.ndarray,
    draws2: np.ndarray,
    not_expressed_1: np.ndarray,
    not_expressed_2: np.ndarray,
    *,
    quantile: float = 0.9,
    library_size: float = TARGET_SUM,
) -> float:
    """The pseudocount added to rho before the log: scvi-tools 1.4.2's ``estimate_pseudocounts_offset``.

    ``draws1``/``draws2`` are posterior draws of rho, (n_draws, n_genes), in counts per
    ``library_size`` (scvi-tools' ``scale`` is ``library_size=1``). For each group, the ``quantile``
    over its not-expressed genes of the largest draw (1e-10 of the library when it has none); the
    larger of the two, divided by the number of genes, and at least 1e-10 of the library.
    """
    floor = _MIN_PSEUDOCOUNT_FRACTION * library_size
    values = []
    for draws, not_expressed in ((draws1, not_expressed_1), (draws2, not_expressed_2)):
        if draws.shape[1] != len(not_expressed):
            raise ValueError(
                f"draws have {draws.shape[1]} genes but the not-expressed mask has {len(not_expressed)}"
            )
        if not_expressed.any():
            # the largest draw of every gene, then those of the genes not expressed: no column copy
            values.append(float(np.quantile(draws.max(axis=0)[not_expressed], quantile)))
        else:
            values.append(floor)
    return max(floor, max(values) / draws1.shape[1])


def explain_calls(mode: Mode, *, delta: float, fdr: float) -> str:
    """One sentence for the page: what ``proba_de`` and the FDR target mean for these settings."""
    if mode == "change":
        what = (f"P(DE) is the model's probability that a gene's expression differs between the groups by "
                f"more than {2 ** delta:.2f}-fold (|log2 fold change| > {delta:g})")
    else:
        what = "P(DE) is the model's probability that a gene is more highly expressed in the group it favours"
    return (f"{what}; genes are called DE from the most probable down, as long as the expected share of "
            f"false calls among them stays at or below the FDR target ({fdr:.0%}).")


def why_few_calls(
    result: DEResult,
    table: pd.DataFrame,
    *,
    delta: float,
    fdr: float,
    n_epochs_trained: int | None = None,
    few: int = FEW_CALLS,
) -> list[str]:
    """Plain reasons why fewer than ``few`` genes are called, each with what to try.

    ``table`` is ``result.table(delta=delta, fdr=fdr)`` (the page has it already; re-thresholding
    it again would double the work of a slider move). Empty when enough genes are called.
    ``n_epochs_trained``: the run's, when known.
    """
    if int(table["is_de_fdr"].sum()) >= few:
        return []
    reasons = []
    if n_epochs_trained is not None and n_epochs_trained < FEW_EPOCHS:
        reasons.append(
            f"The model was trained for only {n_epochs_trained} epochs, so its posterior is still broad "
            "and few genes reach a high P(DE): train with the automatic number of epochs and run again."
        )
    smaller = min(result.n_cells_1, result.n_cells_2)
    if smaller < SMALL_GROUP:
        reasons.append(
            f"The smaller group has only {smaller:,} cells, so the model is unsure of its expression: "
            "compare larger groups (for example merge clusters) if you can."
        )
    if result.mode == "change" and delta >= 1.0:
        reasons.append(
            f"delta is {delta:g}: only changes beyond {2 ** delta:.1f}-fold count. Lower delta to see "
            "smaller changes."
        )
    best = float(table["proba_de"].max()) if len(table) else 0.0
    if best < 1.0 - fdr:
        reasons.append(
            f"No gene reaches P(DE) {1.0 - fdr:.2f} (the highest is {math.floor(best * 1000) / 1000:.3f}): "
            "the two groups may hardly "
            "differ, as two halves of one cell type would."
        )
    elif fdr < 0.05:
        reasons.append(f"The FDR target is strict ({fdr:.0%}): raise it to 5% or 10% to call more genes.")
    if not reasons:
        reasons.append("The groups differ in few genes at these thresholds.")
    return reasons


def fdr_calls(proba_de: np.ndarray, *, fdr: float) -> np.ndarray:
    """ScVI's posterior expected FDR procedure: which genes to call DE at target ``fdr``.

    Genes sorted by ``proba_de`` (descending); the first ``k`` are called, ``k`` the number of
    prefixes whose mean of ``1 - proba_de`` (their expected share of false discoveries) is at
    most ``fdr``. Returns a boolean array in the input order.
    """
    proba_de = np.asarray(proba_de, dtype=np.float64)
    order = np.argsort(-proba_de, kind="stable")
    expected_fdr = np.cumsum(1.0 - proba_de[order]) / np.arange(1, len(order) + 1)
    calls = np.zeros(len(proba_de), dtype=bool)
    calls[order[: int((expected_fdr <= fdr).sum())]] = True
    return calls


def groups_from_obs(
    adata: ad.AnnData,
    *,
    groupby: str,
    group1: str,
    group2: str,
    within: tuple[str, str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of two groups of cells defined by an ``adata.obs`` column.

    ``group2="rest"`` means every cell not in ``group1``. ``within=(column, value)`` restricts both
    groups to the cells where ``adata.obs[column] == value``, e.g. ``groupby="condition",
    group1="stim", group2="ctrl", within=("leiden", "3")`` compares conditions inside cluster 3.
    Values are compared as text, so ``"3"`` matches a cluster stored as the number 3.
    """
    labels = _obs_labels(adata, groupby)
    _check_value(labels, groupby, group1)
    mask1 = labels == group1
    if group2 == "rest":
        mask2 = ~mask1
    else:
        if group2 == group1:
            raise ValueError(f"group1 and group2 are both {group1!r}: pick two different groups")
        _check_value(labels, groupby, group2)
        mask2 = labels == group2
    if within is not None:
        column, value = within
        within_labels = _obs_labels(adata, column)
        _check_value(within_labels, column, value)
        inside = within_labels == value
        mask1 &= inside
        mask2 &= inside
    where = "" if within is None else f" inside {within[0]} == {within[1]!r}"
    for name, value, mask in (("group1", group1, mask1), ("group2", group2, mask2)):
        if not mask.any():
            raise ValueError(f"{name} ({groupby} == {value!r}) has no cells{where}: pick another group")
    return mask1, mask2


def check_groups(
    adata: ad.AnnData, *, group1: np.ndarray, group2: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validate two boolean cell masks; return them as numpy arrays with warnings for the user."""
    masks = []
    for name, group in (("group1", group1), ("group2", group2)):
        mask = np.asarray(group)
        if mask.dtype != bool or mask.shape != (adata.n_obs,):
            raise ValueError(
                f"{name} must be a boolean mask with one entry per cell ({adata.n_obs}), got dtype "
                f"{mask.dtype} and shape {mask.shape}: turn indices into a mask with "
                "np.isin(np.arange(adata.n_obs), indices)"
            )
        masks.append(mask)
    mask1, mask2 = masks
    shared = int((mask1 & mask2).sum())
    if shared:
        raise ValueError(f"group1 and group2 share {shared} cells: each cell may be in one group only")
    notes = []
    for name, mask in (("group1", mask1), ("group2", mask2)):
        size = int(mask.sum())
        if size < MIN_CELLS:
            raise ValueError(
                f"{name} has {size} cells; differential expression needs at least {MIN_CELLS} "
                "cells per group: pick a larger group"
            )
        if size < FEW_CELLS:
            notes.append(
                f"{name} has only {size} cells: its expression estimates are uncertain, so treat "
                "the DE calls with caution."
            )
    return mask1, mask2, notes


def display_names(adata: ad.AnnData) -> np.ndarray:
    """Gene names to show: ``adata.var["display_name"]`` if present, else ``var_names``."""
    if "display_name" in adata.var.columns:
        return adata.var["display_name"].astype(str).to_numpy()
    return np.asarray(adata.var_names, dtype=str)


def write_de_csv(table: pd.DataFrame, path: str | Path, *, provenance: dict[str, object]) -> None:
    """Write a DE table as CSV headed by ``# key: value`` provenance lines.

    The date and package versions are added unless ``provenance`` already has them. Read it back
    with ``pd.read_csv(path, comment="#", index_col=0)``.
    """
    header = dict(provenance)
    header.setdefault("date", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    header.setdefault("versions", _package_versions())
    lines = []
    for key, value in header.items():
        text = str(value)
        if "\n" in text or "#" in text:
            raise ValueError(f"provenance value for {key!r} may not contain a newline or '#': {text!r}")
        lines.append(f"# {key}: {text}\n")
    path = Path(path)
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.writelines(lines)
        table.to_csv(handle)


def _decide(lfc_sorted: np.ndarray, *, mode: Mode, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """proba_de and bayes_factor from stored LFC order statistics."""
    if mode == "change":
        p_up = (lfc_sorted >= delta).mean(axis=1)
        p_down = (lfc_sorted < -delta).mean(axis=1)
        proba_de = np.maximum(p_up, p_down)
        sign = np.sign(p_up - p_down)
        bayes_factor = sign * (np.log(proba_de + _BF_EPS) - np.log(1.0 - proba_de + _BF_EPS))
    else:
        p_up = (lfc_sorted > 0).mean(axis=1)
        proba_de = np.maximum(p_up, 1.0 - p_up)
        bayes_factor = np.log(p_up + _BF_EPS) - np.log(1.0 - p_up + _BF_EPS)
    return proba_de, bayes_factor


def _check_mode(mode: str) -> Mode:
    allowed = get_args(Mode)
    if mode not in allowed:
        raise ValueError(f"mode must be one of {', '.join(map(repr, allowed))}, got {mode!r}")
    return mode  # type: ignore[return-value]


def _check_delta(delta: float) -> float:
    if not np.isfinite(delta) or delta < 0:
        raise ValueError(f"delta must be a non-negative log2 fold change, got {delta}")
    return float(delta)


def _check_fdr(fdr: float) -> float:
    if not 0.0 < fdr < 1.0:
        raise ValueError(f"fdr must lie strictly between 0 and 1, got {fdr}")
    return float(fdr)


def _sample_cells(cells: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    if len(cells) <= cap:
        return cells
    return np.sort(rng.choice(cells, size=cap, replace=False))


def _drawn_cells(run: Run, adata: ad.AnnData, counts: sp.csr_matrix, cells: np.ndarray) -> ad.AnnData:
    """The cells ``cells`` of ``adata`` as a small AnnData: their counts (in the run's gene order) and batch."""
    obs = pd.DataFrame(index=adata.obs_names[cells])
    if run.batch_key is not None:
        obs[run.batch_key] = adata.obs[run.batch_key].to_numpy()[cells]
    return ad.AnnData(X=counts[cells], obs=obs, var=pd.DataFrame(index=pd.Index(run.var_names)))


def _count_statistics(counts: sp.csr_matrix, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per gene over the cells in ``mask``: the mean raw count and the fraction with a non-zero count.

    One pass over the group's stored values, without copying them (a lasso may hold most of an
    atlas); explicit zeros are not expression.
    """
    from engine.analysis._kernels import masked_column_sums  # numba: compiled once, cached on disk

    rows = np.flatnonzero(mask)
    total, expressing = masked_column_sums(counts.data, counts.indices, counts.indptr, rows, counts.shape[1])
    n_cells = max(len(rows), 1)
    return total / n_cells, expressing / n_cells


def _obs_labels(adata: ad.AnnData, column: str) -> pd.Categorical:
    return as_text(obs_column(adata, column)).array


def _check_value(labels: pd.Categorical, column: str, value: str) -> None:
    present = set(labels.categories[np.unique(labels.codes)])
    if value not in present:
        present = sorted(present)
        shown = ", ".join(map(repr, present[:20])) + (" ..." if len(present) > 20 else "")
        raise ValueError(f"{column} has no value {value!r}; values present: {shown}")


def _package_versions() -> str:
    names = ("atlas-explorer", "numpy", "pandas", "anndata", "torch")
    parts = [f"python {platform.python_version()}"]
    for name in names:
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(parts)

