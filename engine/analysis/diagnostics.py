"""Diagnostics to compare trained runs: held-out fit, latent activity, posterior predictive checks.

Used by the Train page to choose between likelihoods on evidence: a model that fits the counts
reproduces, gene by gene, their fraction of zeros and their variance-to-mean ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np

from engine.analysis.de import display_names
from engine.logs import timed
from engine.memory import check_dense_size
from engine.model.inference import (
    heldout_elbo,
    latent_activity,
    posterior_predictive,
    run_inputs,
)
from engine.model.params import COUNT_LIKELIHOODS


@dataclass(frozen=True)
class PredictiveCheck:
    """Per-gene statistics of observed counts and of counts sampled from the model, same cells.

    Arrays follow the run's genes in the run's order (``genes`` holds their display names): runs
    trained on different gene sets have checks of different lengths.
    """

    genes: np.ndarray
    observed_zero_fraction: np.ndarray
    sampled_zero_fraction: np.ndarray
    observed_mean: np.ndarray
    sampled_mean: np.ndarray
    observed_variance: np.ndarray
    sampled_variance: np.ndarray
    n_cells: int


@dataclass(frozen=True)
class RunDiagnostics:
    """A trained run's held-out ELBO and its parts, latent activity and posterior predictive check."""

    elbo: float
    reconstruction: float
    kl: float
    activity: np.ndarray
    check: PredictiveCheck | None  # None for the Gaussian likelihood, which does not model counts


def posterior_predictive_check(run, adata: ad.AnnData, *, n_cells: int = 1000,
                               seed: int = 0) -> PredictiveCheck:
    """Compare per-gene zero fraction, mean and variance of observed counts with one posterior predictive sample.

    The sample is of the same cells (at most ``n_cells``, seeded random).
    """
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(adata.n_obs, min(n_cells, adata.n_obs), replace=False))
    # observed and sampled counts, float32, plus the float64 samples of one minibatch
    check_dense_size(len(idx), len(run.var_names), n_matrices=4,
                     what="The posterior predictive check",
                     advice="check fewer cells (n_cells) or train on fewer genes")
    counts, _ = run_inputs(run, adata)  # the run's genes, in the run's order, as the samples are
    observed = counts[idx].toarray()
    sampled = posterior_predictive(run, adata, indices=idx, n_samples=1, seed=seed)[0]
    names = display_names(adata)[adata.var_names.get_indexer(run.var_names)]
    return PredictiveCheck(
        genes=np.asarray(names, dtype=str),
        observed_zero_fraction=(observed == 0).mean(axis=0),
        sampled_zero_fraction=(sampled == 0).mean(axis=0),
        observed_mean=observed.mean(axis=0), sampled_mean=sampled.mean(axis=0),
        observed_variance=observed.var(axis=0), sampled_variance=sampled.var(axis=0),
        n_cells=len(idx),
    )


@timed
def diagnose(run, adata: ad.AnnData, *, n_cells: int = 1000, seed: int = 0) -> RunDiagnostics:
    """Held-out ELBO parts, latent activity and, for count likelihoods, a posterior predictive check.

    The ELBO parts are computed on the run's validation cells when known.
    """
    parts = heldout_elbo(run, adata)
    check = (posterior_predictive_check(run, adata, n_cells=n_cells, seed=seed)
             if run.params.likelihood in COUNT_LIKELIHOODS else None)
    return RunDiagnostics(elbo=float(parts.elbo), reconstruction=float(parts.reconstruction),
                          kl=float(parts.kl), activity=np.asarray(latent_activity(run, adata)),
                          check=check)
