"""Log-likelihoods against scipy.stats references (float64), on random and edge inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import digamma, expit, gammaln

from engine.model.likelihoods import (
    _digamma,
    log_nb_positive,
    log_normal,
    log_poisson,
    log_zinb_positive,
    log_zip_positive,
    sparse_nb_log_likelihood,
)

RTOL = 1e-5


def t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def nb_reference(x, mu, theta):
    return stats.nbinom.logpmf(x, theta, theta / (theta + mu))


def zinb_reference(x, mu, theta, logits):
    pi = expit(logits)
    nb = np.exp(nb_reference(x, mu, theta))
    return np.where(x == 0, np.log(pi + (1 - pi) * nb), np.log1p(-pi) + nb_reference(x, mu, theta))


def random_inputs(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    mu = np.exp(rng.uniform(np.log(1e-2), np.log(1e4), n))
    theta = np.exp(rng.uniform(np.log(1e-3), np.log(1e4), n))
    x = rng.poisson(mu).astype(float)
    x[rng.random(n) < 0.3] = 0.0
    logits = rng.normal(0, 3, n)
    return x, mu, theta, logits


# x, mu, theta: zero counts, huge counts, theta from 1e-4 to 1e8 (Poisson limit), small mu
EDGE = [
    (0, 1.0, 1.0),
    (0, 1e-3, 1e-4),
    (0, 1e4, 1e-4),
    (1, 1e-3, 1.0),
    (3, 1.0, 1e8),
    (0, 5.0, 1e8),
    (100000, 1e5, 10.0),
    (100000, 9e4, 1e8),
    (100000, 1.0, 1e-4),
    (7, 2.5, 1e-4),
    (50, 1e-3, 1e3),
]


def test_nb_matches_scipy_random():
    x, mu, theta, _ = random_inputs()
    got = log_nb_positive(t(x), t(mu), t(theta)).numpy()
    np.testing.assert_allclose(got, nb_reference(x, mu, theta), rtol=RTOL)


@pytest.mark.parametrize("x,mu,theta", EDGE)
def test_nb_matches_scipy_edges(x, mu, theta):
    got = log_nb_positive(t([x]), t([mu]), t([theta]), eps=0.0).numpy()
    np.testing.assert_allclose(got, nb_reference(x, mu, theta), rtol=RTOL)


def test_nb_tends_to_poisson():
    x = t([0, 1, 5, 40])
    mu = t([0.5, 2.0, 5.0, 30.0])
    nb = log_nb_positive(x, mu, t([1e8] * 4)).numpy()
    np.testing.assert_allclose(nb, stats.poisson.logpmf(x.numpy(), mu.numpy()), rtol=1e-6)


def test_zinb_matches_reference_random_and_edges():
    x, mu, theta, logits = random_inputs(seed=1)
    got = log_zinb_positive(t(x), t(mu), t(theta), t(logits)).numpy()
    np.testing.assert_allclose(got, zinb_reference(x, mu, theta, logits), rtol=RTOL)
    ex, em, et = (np.array(v, dtype=float) for v in zip(*EDGE, strict=True))
    for logit in (-8.0, 0.0, 5.0):
        lg = np.full_like(ex, logit)
        got = log_zinb_positive(t(ex), t(em), t(et), t(lg), eps=0.0).numpy()
        np.testing.assert_allclose(got, zinb_reference(ex, em, et, lg), rtol=RTOL)


def test_zinb_with_no_inflation_is_nb():
    x, mu, theta, _ = random_inputs(seed=2)
    x = np.maximum(x, 1.0)  # at zero, log pi = -800 may still beat a tinier NB(0)
    got = log_zinb_positive(t(x), t(mu), t(theta), t(np.full_like(x, -800.0))).numpy()
    np.testing.assert_allclose(got, nb_reference(x, mu, theta), rtol=RTOL)


def test_poisson_and_zip_match_scipy():
    x, mu, _, logits = random_inputs(seed=3)
    x = np.concatenate([x, [0.0, 100000.0, 2.0]])
    mu = np.concatenate([mu, [1e-8, 1e5, 1e-3]])
    logits = np.concatenate([logits, [0.0, -3.0, 4.0]])
    ref = stats.poisson.logpmf(x, mu)
    np.testing.assert_allclose(log_poisson(t(x), t(mu)).numpy(), ref, rtol=RTOL)
    pi = expit(logits)
    zip_ref = np.where(x == 0, np.log(pi + (1 - pi) * np.exp(-mu)), np.log1p(-pi) + ref)
    np.testing.assert_allclose(log_zip_positive(t(x), t(mu), t(logits)).numpy(), zip_ref, rtol=RTOL)


def test_normal_matches_scipy():
    rng = np.random.default_rng(4)
    x, mean, var = rng.normal(size=500), rng.normal(size=500), np.exp(rng.normal(size=500))
    got = log_normal(t(x), t(mean), t(var)).numpy()
    np.testing.assert_allclose(got, stats.norm.logpdf(x, mean, np.sqrt(var)), rtol=RTOL)


def test_gradients_finite_at_edges():
    ex, em, et = (np.array(v, dtype=float) for v in zip(*EDGE, strict=True))
    mu = t(em).requires_grad_()
    theta = t(et).requires_grad_()
    logits = t(np.zeros_like(ex)).requires_grad_()
    total = log_zinb_positive(t(ex), mu, theta, logits).sum() + log_nb_positive(t(ex), mu, theta).sum()
    total = total + log_poisson(t(ex), mu).sum() + log_zip_positive(t(ex), mu, logits).sum()
    total.backward()
    for param in (mu, theta, logits):
        assert torch.isfinite(param.grad).all()
    # float32 with tiny mu and huge theta (what training sees) stays finite too
    mu32 = torch.tensor([1e-30, 1e-8, 1.0], requires_grad=True)
    value = log_zinb_positive(torch.tensor([0.0, 1.0, 5.0]), mu32, torch.tensor([1e8, 1e-4, 1e8]), torch.zeros(3))
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(mu32.grad).all()


def sparse_inputs(dtype, seed=0, n=8, genes=60):
    """Decoder-like inputs with theta from 1e-4 to 1e8 and counts from 0 to 1e5."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, genes))
    library_log = rng.uniform(np.log(10), np.log(1e5), n)
    theta = np.exp(rng.uniform(np.log(1e-4), np.log(1e8), (n, genes)))
    mu = np.exp(library_log)[:, None] * np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    x = rng.poisson(mu).astype(float)
    x[rng.random(x.shape) < 0.5] = 0.0
    x[0, :3] = [1.0, 1e5, 7.0]
    zi = rng.normal(0, 3, (n, genes))
    rows, cols = np.nonzero(x)
    nz = [torch.as_tensor(a, dtype=torch.int64) for a in (rows * genes + cols, rows, cols)]
    as_t = lambda a: torch.as_tensor(a, dtype=dtype)  # noqa: E731
    return (as_t(logits), as_t(library_log), as_t(theta), as_t(zi), *nz, as_t(x[rows, cols])), (x, mu, theta, zi)


def test_sparse_nb_sum_matches_scipy_per_cell():
    inputs, (x, mu, theta, zi) = sparse_inputs(torch.float64)
    logits, library_log, theta_t, zi_t, flat, rows, cols, values = inputs
    log_factorial = gammaln(x + 1).sum(1)
    # (atol: the fast path adds eps=1e-8 to theta, 1e-4 relative at the smallest theta here)
    zinb = sparse_nb_log_likelihood(logits, library_log, theta_t, zi_t, flat, rows, cols, values).numpy()
    nb = sparse_nb_log_likelihood(logits, library_log, theta_t, None, flat, rows, cols, values).numpy()
    np.testing.assert_allclose(zinb - log_factorial, zinb_reference(x, mu, theta, zi).sum(1), rtol=1e-7, atol=1e-6)
    np.testing.assert_allclose(nb - log_factorial, nb_reference(x, mu, theta).sum(1), rtol=1e-7, atol=1e-6)
    # one theta per gene takes the (G,) path: tables for counts <= 32, lgamma for 1e5 and 2.5
    gene_theta = theta_t[0]
    per_gene = sparse_nb_log_likelihood(logits, library_log, gene_theta, zi_t, flat, rows, cols, values).numpy()
    expected = zinb_reference(x, mu, np.broadcast_to(theta[0], x.shape), zi).sum(1)
    np.testing.assert_allclose(per_gene - log_factorial, expected, rtol=1e-7, atol=1e-6)
    fractional = values.clone()
    fractional[0] = 2.5
    got = sparse_nb_log_likelihood(logits, library_log, gene_theta, zi_t, flat, rows, cols, fractional)
    dense = torch.as_tensor(x).clone()
    dense[rows[0], cols[0]] = 2.5
    mu_t = torch.as_tensor(mu)
    plain = log_zinb_positive(dense, mu_t, gene_theta, zi_t, eps=0.0) + torch.lgamma(dense + 1)
    torch.testing.assert_close(got, plain.sum(1), rtol=1e-7, atol=1e-6)


def test_sparse_nb_sum_float32_is_finite_with_finite_gradients():
    inputs, _ = sparse_inputs(torch.float32, seed=1)
    params = [t_.requires_grad_() for t_ in inputs[:4]]
    value = sparse_nb_log_likelihood(*params, *inputs[4:])
    value.sum().backward()
    assert torch.isfinite(value).all()
    assert all(torch.isfinite(p.grad).all() for p in params)


def test_fast_digamma_matches_scipy():
    y = np.concatenate([np.geomspace(1e-4, 1e8, 4000), np.arange(1, 300) + 0.25])
    np.testing.assert_allclose(_digamma(t(y)).numpy(), digamma(y), rtol=1e-9, atol=1e-9)
    got32 = _digamma(torch.as_tensor(y, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(got32, digamma(y), rtol=2e-6, atol=2e-6)
