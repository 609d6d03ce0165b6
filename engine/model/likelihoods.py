"""Log-likelihoods of count (and log-normalised) data, in log space.

One parameterisation everywhere: ``mu`` (mean, > 0), ``theta`` (inverse dispersion, > 0) and
``zi_logits`` (logits of the zero-inflation probability). All functions broadcast their arguments
and return the element-wise log-probability; callers sum over genes. They are written to stay finite
for zero counts, counts of 1e5, ``theta`` from 1e-4 to 1e8 (where the negative binomial tends to the
Poisson) and tiny ``mu``; ``tests/test_likelihoods.py`` checks them against ``scipy.stats``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from engine.threads import split_over_threads

__all__ = [
    "log_nb_positive",
    "log_normal",
    "log_poisson",
    "log_zinb_positive",
    "log_zip_positive",
    "nb_log_prob_at_zero",
    "sparse_nb_log_likelihood",
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


def _digamma(y: torch.Tensor) -> torch.Tensor:
    """``digamma(y)`` for ``y > 0`` in ~20 vectorised ops (torch's CPU digamma is ~10x slower per entry).

    Six steps of ``digamma(y) = digamma(y + 1) - 1 / y``, then the asymptotic series at ``y + 6 >= 6``
    (truncation error below 1e-10).
    """
    shifted = y + 6.0
    inv = shifted.reciprocal()
    inv2 = inv * inv
    series = inv2 * (1.0 / 12 - inv2 * (1.0 / 120 - inv2 * (1.0 / 252 - inv2 * (1.0 / 240 - inv2 / 132))))
    out = torch.log(shifted).sub_(inv * 0.5).sub_(series)
    for k in range(6):
        out.sub_((y + k).reciprocal_())
    return out


def _softplus(y: torch.Tensor) -> torch.Tensor:
    """``softplus(y) = max(y, 0) + log(1 + exp(-|y|))`` with vectorised exp/log (2x torch's CPU softplus).

    ``log(1 + e)`` for ``e <= 1`` is off by less than 1.2e-7 in float32, far below what a per-cell
    sum over genes resolves. ``sigmoid(y) = exp(y - softplus(y))`` reuses it.
    """
    return y.abs().neg_().exp_().add_(1.0).log_().add_(y.clamp_min(0.0))


# Counts up to this are looked up in per-gene tables of lgamma/digamma differences (most counts
# in single-cell data are small integers); larger or non-integer counts use lgamma/digamma.
_TABLE_COUNTS = 32


def _gamma_ratios_per_gene(
    x: torch.Tensor, theta: torch.Tensor, genes: torch.Tensor, with_digamma: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``lgamma(x + theta) - lgamma(theta)`` and ``digamma(x + theta) - digamma(theta)`` at counts ``x``.

    The counts are of genes ``genes``, with one ``theta`` per gene.

    For integer ``x = k <= 32`` they are ``sum_{j<k} log(theta + j)`` and ``sum_{j<k} 1 / (theta + j)``:
    cumulative sums over a (genes, 32) table, gathered, instead of lgamma and digamma per entry
    (several times faster on CPU, and exact in float32 where a difference of two lgammas of a
    large theta cancels catastrophically). Other counts fall back to lgamma/digamma.
    """
    k = _TABLE_COUNTS
    steps = theta.unsqueeze(-1) + torch.arange(k, dtype=theta.dtype, device=theta.device)  # theta + j
    counts = x.clamp(1, k).long()
    index = genes * k + (counts - 1)
    lgamma_ratio = torch.log(steps).cumsum_(-1).view(-1).index_select(0, index)
    digamma_ratio = steps.reciprocal_().cumsum_(-1).view(-1).index_select(0, index) if with_digamma else None
    other = (counts != x).nonzero().squeeze(1)  # counts above the table, or not integers
    if other.numel():
        x_other, theta_other = x.index_select(0, other), theta.index_select(0, genes.index_select(0, other))
        lgamma_ratio.index_copy_(0, other, torch.lgamma(x_other + theta_other).sub_(torch.lgamma(theta_other)))
        if digamma_ratio is not None:
            digamma_ratio.index_copy_(0, other, _digamma(x_other + theta_other).sub_(_digamma(theta_other)))
    return lgamma_ratio, digamma_ratio


class _SparseNegativeBinomialSum(torch.autograd.Function):
    """Per-cell sum of the (zero-inflated) NB log-likelihood from the decoder's raw outputs.

    Inputs: softmax ``logits`` (n, G), ``library_log`` (n,), ``theta`` (G,) or (n, G), ``zi_logits``
    (n, G) or None, and the minibatch's non-zero counts ``x`` at flat positions ``nz_flat`` (rows
    ``nz_rows``, genes ``nz_cols``). Returns ``sum_g log p(x_g) + sum_g lgamma(x_g + 1)`` per cell
    (the data constant is left to the caller). The value is "all counts zero" on the full matrix
    plus a correction at the non-zeros; the gradients are analytic and computed in the same pass:
    autograd through the plain formula's ~20 element-wise ops per entry costs twice the forward and
    keeps every intermediate alive. On CPU in float32 (training) one numba kernel
    (:mod:`engine.model.nb_kernel`) does all of it a cell at a time, on several threads; the ~45 torch
    operations below serve CUDA and float64, and are the reference the kernel is tested against.
    """

    @staticmethod
    def forward(ctx, logits, library_log, theta, zi_logits, nz_flat, nz_rows, nz_cols, x, with_grads, threads):  # noqa: D102
        ctx.gene_theta = theta.dim() == 1
        with_theta_grad = with_grads and ctx.needs_input_grad[2]
        if _kernel_applies(logits, library_log, theta, zi_logits, x):
            out, ctx.grads = _kernel_forward(
                logits, library_log, theta, zi_logits, nz_rows, nz_cols, x, with_grads, with_theta_grad, threads
            )
            return out
        eps = 1e-8
        # mu = library * softmax(logits); lse kept for log(mu) at the non-zeros (no log of a tiny mu)
        m = logits.amax(-1, keepdim=True)
        mu = torch.sub(logits, m).exp_()
        log_s = torch.log(mu.sum(-1, keepdim=True))
        mu.mul_(torch.exp(library_log.unsqueeze(-1) - log_s))
        log_mu_offset = (library_log - (m + log_s).squeeze(-1)).index_select(0, nz_rows)
        gene_theta = theta.dim() == 1
        neg_theta = theta.neg()
        inv_te = (theta + eps).reciprocal_()
        u = mu * inv_te
        lp = torch.log1p(u)  # log NB(0) = -theta * lp

        def at_nz(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(-1).index_select(0, nz_flat)

        def per_nz(t: torch.Tensor) -> torch.Tensor:  # a (G,) or (n, G) parameter at the non-zeros
            return t.index_select(0, nz_cols) if gene_theta else at_nz(t)

        inv_te_nz = per_nz(inv_te)
        mu_nz, lp_nz = at_nz(mu), at_nz(lp)
        if gene_theta:
            lgamma_ratio, digamma_ratio = _gamma_ratios_per_gene(x, theta, nz_cols, with_theta_grad)
        else:
            theta_nz = at_nz(theta)
            lgamma_ratio = torch.lgamma(x + theta_nz).sub_(torch.lgamma(theta_nz))
            digamma_ratio = _digamma(x + theta_nz).sub_(_digamma(theta_nz)) if with_theta_grad else None
        # log NB(x) - log NB(0) at x > 0: x log(mu / (theta + mu)) + lgamma(x + theta) - lgamma(theta)
        # with log(theta + mu) = log(theta) + lp (lgamma(x + 1) is the caller's constant)
        correction = (at_nz(logits) + log_mu_offset).add_(torch.log(inv_te_nz)).sub_(lp_nz).mul_(x)
        correction.add_(lgamma_ratio)
        if zi_logits is not None:
            # log p(0) = softplus(nb0 - zi) - softplus(-zi); at x > 0: log(1 - pi) + log NB(x) - log p(0)
            neg_zi = zi_logits.neg()
            shifted = torch.addcmul(neg_zi, lp, neg_theta)  # nb0 - zi
            soft_shifted = _softplus(shifted)
            soft_zi = _softplus(neg_zi)
            full = torch.sub(soft_shifted, soft_zi).sum(-1)
            log_sigmoid = shifted.sub_(soft_shifted)  # log sigmoid(nb0 - zi), in shifted's buffer
            correction.add_(at_nz(log_sigmoid))
        else:
            full = torch.mul(lp, neg_theta).sum(-1)
        out = full.index_add_(0, nz_rows, correction)
        ctx.grads = None
        if with_grads:
            # d(cell's sum)/d(each input entry); backward only scales them by the incoming gradient.
            # d/d nb0 of the zero part: sigmoid(nb0 - zi) at zeros, 1 at the non-zeros (there the
            # correction swaps log p(0) for log(1 - pi) + log NB(x)); plain NB: 1 everywhere
            g_nb0 = d_zi = None
            if zi_logits is not None:
                g_nb0 = log_sigmoid.exp_()
                g_nb0.view(-1).index_fill_(0, nz_flat, 1.0)
                d_zi = neg_zi.sub_(soft_zi).exp_().sub_(g_nb0)  # sigmoid(-zi) - g_nb0
            # nb0 = -theta lp: d/dlog(mu) = -theta v, d/dtheta = -lp + theta / te * v, v = mu / (te + mu)
            v = u.div_(u + 1.0)
            d_log_mu = v.mul_(neg_theta)
            if g_nb0 is not None:
                d_log_mu.mul_(g_nb0)
            d_theta = d_log_mu * inv_te.neg()
            if g_nb0 is not None:
                d_theta.addcmul_(g_nb0, lp, value=-1.0)
            else:
                d_theta.sub_(lp)
            # the correction: d/dlog(mu) = x (1 - v), d/dtheta = digamma(x + theta) - digamma(theta) - x / (te + mu)
            te_mu_nz = inv_te_nz.reciprocal().add_(mu_nz)
            d_log_mu.view(-1).index_add_(0, nz_flat, x - x * mu_nz / te_mu_nz)
            if digamma_ratio is not None:
                d_theta.view(-1).index_add_(0, nz_flat, digamma_ratio.sub_(x / te_mu_nz))
            # through mu = exp(library_log) softmax(logits): d/dlogits = d_log_mu - softmax * sum(d_log_mu)
            d_library = d_log_mu.sum(-1)
            d_logits = d_log_mu.sub_(mu.mul_((d_library * torch.exp(-library_log)).unsqueeze(-1)))
            ctx.grads = (d_logits, d_library, d_theta, d_zi)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        d_logits, d_library, d_theta, d_zi = ctx.grads
        ctx.grads = None  # the buffers are this call's alone: scale them in place
        g = grad_out.unsqueeze(-1)
        need = ctx.needs_input_grad
        grad_theta = None
        if need[2]:
            grad_theta = torch.mv(d_theta.t(), grad_out) if ctx.gene_theta else d_theta.mul_(g)
        return (
            d_logits.mul_(g) if need[0] else None,
            d_library.mul_(grad_out) if need[1] else None,
            grad_theta,
            d_zi.mul_(g) if need[3] and d_zi is not None else None,
            None, None, None, None, None, None,
        )  # fmt: skip


# The CPU kernel (engine.model.nb_kernel) splits a minibatch into row chunks of at least this many cells,
# run side by side (the kernel releases the GIL).
_MIN_ROWS_PER_CHUNK = 16


def _kernel_applies(logits, library_log, theta, zi_logits, x) -> bool:
    """The numba kernel serves CPU float32 tensors; everything else (CUDA, float64) takes torch ops."""
    tensors = [logits, library_log, theta, x] + ([zi_logits] if zi_logits is not None else [])
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def _kernel_forward(logits, library_log, theta, zi_logits, nz_rows, nz_cols, x, with_grads, with_theta_grad, threads):
    """Value and derivatives from :func:`engine.model.nb_kernel.nb_rows`, the rows split over threads."""
    from engine.model import (
        nb_kernel,  # numba loads (or compiles) the kernel on first use, not at import
    )

    n, n_genes = logits.shape
    indptr = np.empty(n + 1, dtype=np.int64)
    if not nb_kernel.csr_indptr(nz_rows.numpy(), n, indptr):  # not in row order (never from a CSR minibatch)
        order = torch.argsort(nz_rows, stable=True)
        nz_rows, nz_cols, x = nz_rows[order], nz_cols[order], x[order]
        nb_kernel.csr_indptr(nz_rows.numpy(), n, indptr)

    def array(t: torch.Tensor) -> np.ndarray:
        return t.detach().contiguous().numpy()

    def empty(*shape: int) -> torch.Tensor:
        return torch.empty(shape, dtype=torch.float32)

    gene_theta = theta.dim() == 1
    theta_rows = array(theta).reshape(1, n_genes) if gene_theta else array(theta)
    if gene_theta:
        tables = np.empty((2, nb_kernel.TABLE_COUNTS, n_genes), dtype=np.float32)
        nb_kernel.gamma_tables(theta_rows[0], tables[0], tables[1])
    else:
        tables = np.zeros((2, 1, 1), dtype=np.float32)
    out = empty(n)
    d_logits, d_library = (empty(n, n_genes), empty(n)) if with_grads else (empty(1, 1), empty(1))
    d_theta = empty(n, n_genes) if with_theta_grad else empty(1, 1)
    d_zi = empty(n, n_genes) if with_grads and zi_logits is not None else empty(1, 1)
    zi = array(zi_logits) if zi_logits is not None else np.zeros((1, 1), dtype=np.float32)
    shared = (
        array(logits), array(library_log), theta_rows, zi, zi_logits is not None, indptr, array(nz_cols), array(x),
        tables[0], tables[1], gene_theta, with_grads, with_theta_grad,
        out.numpy(), d_logits.numpy(), d_library.numpy(), d_theta.numpy(), d_zi.numpy(),
    )  # fmt: skip

    def run(start: int, stop: int) -> None:
        nb_kernel.nb_rows(start, stop, *shared, np.empty((nb_kernel.WORK_ROWS, n_genes), dtype=np.float32))

    split_over_threads(run, n, max(min(threads, n // _MIN_ROWS_PER_CHUNK), 1))
    grads = None
    if with_grads:
        grads = (d_logits, d_library, d_theta if with_theta_grad else None, d_zi if zi_logits is not None else None)
    return out, grads


def sparse_nb_log_likelihood(
    logits: torch.Tensor,
    library_log: torch.Tensor,
    theta: torch.Tensor,
    zi_logits: torch.Tensor | None,
    nz_flat: torch.Tensor,
    nz_rows: torch.Tensor,
    nz_cols: torch.Tensor,
    x: torch.Tensor,
    *,
    threads: int | None = None,
) -> torch.Tensor:
    """``sum_g [log NB(x_g | mu_g, theta_g) + lgamma(x_g + 1)]`` per cell (ZINB when ``zi_logits``).

    ``mu = exp(library_log) * softmax(logits)``; the counts are given by their non-zero entries
    (values ``x`` at flat indices ``nz_flat`` of the (n, G) matrix, with rows ``nz_rows`` and
    columns ``nz_cols``). Equals the per-cell sum of :func:`log_zinb_positive` /
    :func:`log_nb_positive` plus ``sum_g lgamma(x_g + 1)``, with analytic gradients (tested against
    autograd of the plain formulas). On CPU the cells are split over ``threads`` threads (default
    ``torch.get_num_threads()``); the result does not depend on how many.
    """
    # grad mode is off inside Function.forward: decide here whether the local gradients are needed
    inputs = (logits, library_log, theta, zi_logits)
    with_grads = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    threads = torch.get_num_threads() if threads is None else max(int(threads), 1)
    return _SparseNegativeBinomialSum.apply(*inputs, nz_flat, nz_rows, nz_cols, x, with_grads, threads)
