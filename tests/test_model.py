"""The VAE module: shapes for every option, the fast likelihood equals the plain one, KL terms."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from engine.model import likelihoods as L
from engine.model.params import RunParams
from engine.model.vae import VAE, CellConstants, iterate_minibatches


@pytest.fixture(scope="module")
def counts() -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    dense = rng.negative_binomial(2, 0.3, size=(24, 40)).astype(np.float32)
    dense[rng.random(dense.shape) < 0.6] = 0.0
    dense[:, 0] = 1.0  # no empty cell
    dense[3, 5] = 1e5  # a huge count
    return sp.csr_matrix(dense)


BATCH = np.arange(24) % 3


def minibatch(counts, dtype=torch.float32):
    return next(iterate_minibatches(counts, BATCH, np.arange(24), 24, dtype=dtype))


# every likelihood x dispersion pair; library, prior and depth rotate so each value of each option
# meets every likelihood (the full product is 120 cases of the same code paths)
COMBOS = [
    (lik, disp, ["observed", "learned"][(i + j) % 2], ["normal", "mixture"][(i + j // 2) % 2], 1 + (i + j) % 2)
    for i, lik in enumerate(["zinb", "nb", "poisson", "zip", "gaussian"])
    for j, disp in enumerate(["gene", "gene-batch", "gene-cell"])
] + [("zinb", "gene", "learned", "mixture", 2), ("nb", "gene-cell", "observed", "mixture", 1)]


@pytest.mark.parametrize("likelihood,dispersion,library,prior,n_layers", COMBOS)
def test_forward_shapes_every_option(counts, likelihood, dispersion, library, prior, n_layers):
    if likelihood == "gaussian":
        library = "observed"  # RunParams rejects a learned library with the gaussian likelihood
    params = RunParams(
        likelihood=likelihood, dispersion=dispersion, library=library, prior=prior,
        n_layers=n_layers, n_latent=3, n_hidden=8, n_components=4,
    )
    gen_ = torch.Generator().manual_seed(0)
    module = VAE(40, 3, params, generator=gen_)
    mb = minibatch(counts)
    inf = module.inference(mb, generator=gen_)
    assert inf.z.shape == (24, 3) and inf.qz_var.min() > 0
    gen = module.generative(inf.z, inf.library_log, mb.batch_index)
    assert gen.mu.shape == (24, 40) and gen.log_rho.shape == (24, 40)
    torch.testing.assert_close(torch.exp(gen.log_rho).sum(-1), torch.ones(24))
    parts = module.loss(mb, generator=gen_)
    for term in (parts.reconstruction, parts.kl_z, parts.kl_library, parts.elbo):
        assert term.shape == (24,) and torch.isfinite(term).all()
    if library == "observed":
        assert (parts.kl_library == 0).all()
    parts.training_loss(0.5).backward()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("likelihood", ["zinb", "nb", "poisson", "zip"])
@pytest.mark.parametrize("dispersion", ["gene", "gene-batch", "gene-cell"])
@pytest.mark.parametrize("library", ["observed", "learned"])
def test_fast_reconstruction_equals_plain_likelihood_sum(counts, likelihood, dispersion, library):
    params = RunParams(likelihood=likelihood, dispersion=dispersion, library=library, n_hidden=16)
    module = VAE(40, 3, params, generator=torch.Generator().manual_seed(1)).double()
    mb = minibatch(counts, torch.float64)
    inf = module.inference(mb, generator=torch.Generator().manual_seed(2))
    gen = module.generative(inf.z, inf.library_log, mb.batch_index)
    x = torch.as_tensor(counts.toarray(), dtype=torch.float64)
    plain = {
        "zinb": lambda: L.log_zinb_positive(x, gen.mu, gen.theta, gen.zi_logits, eps=0.0),
        "nb": lambda: L.log_nb_positive(x, gen.mu, gen.theta, eps=0.0),
        "poisson": lambda: L.log_poisson(x, gen.mu),
        "zip": lambda: L.log_zip_positive(x, gen.mu, gen.zi_logits),
    }[likelihood]().sum(-1)
    torch.testing.assert_close(module.reconstruction(mb, gen), plain, rtol=1e-7, atol=1e-6)


@pytest.mark.parametrize("likelihood", ["zinb", "nb"])
@pytest.mark.parametrize("dispersion", ["gene", "gene-batch", "gene-cell"])
@pytest.mark.parametrize("library", ["observed", "learned"])
def test_fused_nb_gradients_equal_autograd_of_plain_likelihood(counts, likelihood, dispersion, library):
    # the fused NB/ZINB sum has hand-written gradients: every parameter's gradient of a weighted
    # sum of per-cell reconstructions must equal autograd through the plain formulas
    params = RunParams(likelihood=likelihood, dispersion=dispersion, library=library, n_hidden=16)
    module = VAE(40, 3, params, generator=torch.Generator().manual_seed(1)).double()
    mb = minibatch(counts, torch.float64)
    x = torch.as_tensor(counts.toarray(), dtype=torch.float64)
    weights = torch.linspace(0.5, 2.0, 24, dtype=torch.float64)

    def gradients(fast: bool) -> dict[str, torch.Tensor]:
        module.zero_grad()
        inf = module.inference(mb, generator=torch.Generator().manual_seed(2))
        gen = module.generative(inf.z, inf.library_log, mb.batch_index)
        if fast:
            rec = module.reconstruction(mb, gen)
        else:  # the plain formulas with the fast path's eps (1e-8 added to theta), through autograd
            theta, log_mu, eps = gen.theta, gen.logits + gen.log_mu_offset.unsqueeze(-1), 1e-8
            nb_zero = -theta * torch.log1p(torch.exp(log_mu) / (theta + eps))
            log_nb = (
                nb_zero + x * (log_mu - torch.log(theta + eps + torch.exp(log_mu)))
                + torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)
            )  # fmt: skip
            if likelihood == "zinb":
                zi = gen.zi_logits
                zero = torch.nn.functional.softplus(nb_zero - zi) - torch.nn.functional.softplus(-zi)
                log_nb = torch.where(x == 0, zero, log_nb - torch.nn.functional.softplus(zi))
            rec = log_nb.sum(-1)
        (rec * weights).sum().backward()
        return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}

    fast, plain = gradients(True), gradients(False)
    assert fast.keys() == plain.keys() and "px_scale.weight" in fast
    for name in plain:
        torch.testing.assert_close(fast[name], plain[name], rtol=1e-6, atol=1e-6, msg=name)


def test_gaussian_reconstruction_is_log_normal_of_normalised_counts(counts):
    module = VAE(40, 3, RunParams(likelihood="gaussian"), generator=torch.Generator().manual_seed(0)).double()
    mb = minibatch(counts, torch.float64)
    inf = module.inference(mb, sample=False)
    gen = module.generative(inf.z, inf.library_log, mb.batch_index)
    x = counts.toarray().astype(float)
    observed = torch.as_tensor(np.log1p(x / x.sum(1, keepdims=True) * 1e4))
    mean = torch.log1p(torch.softmax(gen.logits, -1) * 1e4)
    expected = L.log_normal(observed, mean, gen.var).sum(-1)
    torch.testing.assert_close(module.reconstruction(mb, gen), expected)


def test_normal_kl_closed_form_and_mixture_monte_carlo(counts):
    mb = minibatch(counts, torch.float64)
    normal = VAE(40, 3, RunParams(n_latent=2), generator=torch.Generator().manual_seed(0)).double()
    inf = normal.inference(mb, generator=torch.Generator().manual_seed(0))
    q = torch.distributions.Normal(inf.qz_mean, inf.qz_var.sqrt())
    p = torch.distributions.Normal(torch.zeros_like(inf.qz_mean), torch.ones_like(inf.qz_mean))
    torch.testing.assert_close(normal.kl_z(inf), torch.distributions.kl_divergence(q, p).sum(-1))
    mixture = VAE(40, 3, RunParams(n_latent=2, prior="mixture", n_components=3),
                  generator=torch.Generator().manual_seed(0)).double()
    inf = mixture.inference(mb, generator=torch.Generator().manual_seed(0))
    comps = torch.distributions.Independent(
        torch.distributions.Normal(mixture.prior_means, torch.exp(0.5 * mixture.prior_log_vars)), 1
    )
    prior = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=mixture.prior_logits), comps)
    log_q = torch.distributions.Normal(inf.qz_mean, inf.qz_var.sqrt()).log_prob(inf.z).sum(-1)
    torch.testing.assert_close(mixture.kl_z(inf), log_q - prior.log_prob(inf.z))


def test_same_generator_same_initialisation():
    a = VAE(30, 2, RunParams(), generator=torch.Generator().manual_seed(5))
    torch.manual_seed(123)  # the global RNG must not matter
    b = VAE(30, 2, RunParams(), generator=torch.Generator().manual_seed(5))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_precomputed_cell_constants_give_the_same_minibatches(counts):
    order = np.random.default_rng(0).permutation(24)
    plain = list(iterate_minibatches(counts, BATCH, order, 5))
    fast = list(iterate_minibatches(counts, BATCH, order, 5, constants=CellConstants.of(counts)))
    assert len(plain) == len(fast) == 5
    for a, b in zip(plain, fast, strict=True):
        for field in ("nz_flat", "nz_values", "batch_index", "library_log", "log_factorial"):
            torch.testing.assert_close(getattr(a, field), getattr(b, field))
    dense = counts.toarray()
    np.testing.assert_allclose(fast[0].dense().numpy(), dense[order[:5]])
    np.testing.assert_allclose(fast[1].library_log.numpy(), np.log(dense[order[5:10]].sum(1)), rtol=1e-6)


def test_cell_constants_in_slices_equal_the_whole_matrix_sum(monkeypatch):
    # issue 15: the per-cell log-factorials of a whole atlas are summed a slice of rows at a time
    # (bounded float64 temporaries); every row's sum must be the same number as in one pass
    from scipy.special import gammaln

    from engine.model import vae

    rng = np.random.default_rng(1)
    dense = rng.negative_binomial(1, 0.2, size=(50, 30)).astype(np.float32)
    dense[rng.random(dense.shape) < 0.5] = 0.0
    dense[7] = 0.0  # an empty row
    dense[20] = 3.0  # a row longer than a slice
    matrix = sp.csr_matrix(dense)
    whole = np.asarray(
        sp.csr_matrix((gammaln(matrix.data.astype(np.float64) + 1.0), matrix.indices, matrix.indptr),
                      shape=matrix.shape).sum(axis=1)
    ).ravel()
    for chunk in (1, 7, 29, 10**6):
        monkeypatch.setattr(vae, "CONSTANTS_CHUNK_NONZEROS", chunk)
        np.testing.assert_array_equal(CellConstants.of(matrix).log_factorial, whole)


def test_cell_constants_memory_is_bounded_by_a_slice(monkeypatch):
    # 2M non-zeros: one pass made two float64 temporaries of 16 MB each; slices of 64k non-zeros
    # must stay near 1 MB (numpy reports its allocations to tracemalloc)
    import tracemalloc

    from engine.model import vae

    n_rows, per_row = 20_000, 100
    indptr = np.arange(n_rows + 1, dtype=np.int32) * per_row
    indices = np.tile(np.arange(per_row, dtype=np.int32), n_rows)
    data = np.random.default_rng(0).integers(1, 20, size=n_rows * per_row).astype(np.float32)
    matrix = sp.csr_matrix((data, indices, indptr), shape=(n_rows, 200))
    monkeypatch.setattr(vae, "CONSTANTS_CHUNK_NONZEROS", 1 << 16)
    tracemalloc.start()
    try:
        CellConstants.of(matrix)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB"
