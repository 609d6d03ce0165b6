"""Log-likelihoods of count (and log-normalised) data, in log space.

One parameterisation everywhere: ``mu`` (mean, > 0), ``theta`` (inverse dispersion, > 0) and
``zi_logits`` (logits of the zero-inflation probability). All functions broadcast their arguments
and return the element-wise log-probability; callers sum over genes. They are written to stay finite
for zero counts, counts of 1e5, ``theta`` from 1e-4 to 1e8 (where the negative binomial tends to the
Poisson) and tiny ``mu``; ``tests/test_likelihoods.py`` checks them against ``scipy.stats``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "log_nb_positive",
    "log_normal",
    "log_poisson",
    "log_zinb_positive",
    "log_zip_positive",
    "nb_log_prob_at_zero",
]


def nb_log_prob_at_zero(mu: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``log NB(0 | mu, theta) = theta * log(theta / (theta + mu))``.

    Written as ``-theta * log1p(mu / theta)`` so that it stays exact when ``theta >> mu`` (it then
    tends to ``-mu``, the Poisson value) instead of cancelling two nearly equal logarithms.
    """
    return -theta * torch.log1p(mu / (theta + eps))


def log_nb_positive(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Negative binomial log-probability of counts ``x`` with mean ``mu`` and inverse dispersion ``theta``.

    ``Var[x] = mu + mu**2 / theta``; equals ``scipy.stats.nbinom(n=theta, p=theta / (theta + mu))``.
    """
    log_theta_mu = torch.log(theta + mu + eps)
    return (
        nb_log_prob_at_zero(mu, theta, eps)
        + x * (torch.log(mu + eps) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
    )


def log_zinb_positive(
    x: torch.Tensor,
    mu: torch.Tensor,
    theta: torch.Tensor,
    zi_logits: torch.Tensor,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Zero-inflated negative binomial log-probability.

    With ``pi = sigmoid(zi_logits)``: ``p(0) = pi + (1 - pi) NB(0)`` and ``p(x) = (1 - pi) NB(x)`` for
    ``x > 0``. Both cases use softplus identities so that no probability is ever exponentiated:
    ``log p(0) = softplus(log NB(0) - zi_logits) - softplus(-zi_logits)`` and
    ``log(1 - pi) = -softplus(zi_logits)``.
    """
    nb_zero = nb_log_prob_at_zero(mu, theta, eps)
    case_zero = F.softplus(nb_zero - zi_logits) - F.softplus(-zi_logits)
    case_non_zero = -F.softplus(zi_logits) + log_nb_positive(x, mu, theta, eps)
    return torch.where(x == 0, case_zero, case_non_zero)


def log_poisson(x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Poisson log-probability ``x log(mu) - mu - log(x!)``; ``0 * log(0)`` counts as 0."""
    return torch.xlogy(x, mu) - mu - torch.lgamma(x + 1)


def log_zip_positive(x: torch.Tensor, mu: torch.Tensor, zi_logits: torch.Tensor) -> torch.Tensor:
    """Zero-inflated Poisson log-probability (``pi = sigmoid(zi_logits)``), same identities as ZINB."""
    case_zero = F.softplus(-mu - zi_logits) - F.softplus(-zi_logits)
    case_non_zero = -F.softplus(zi_logits) + log_poisson(x, mu)
    return torch.where(x == 0, case_zero, case_non_zero)


def log_normal(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Gaussian log-density (used on log1p-normalised counts): ``log N(x | mean, var)``."""
    return -0.5 * (math.log(2 * math.pi) + torch.log(var) + (x - mean) ** 2 / var)
