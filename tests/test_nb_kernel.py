"""The numba CPU kernel of the sparse NB/ZINB likelihood against the float64 torch reference path.

``sparse_nb_log_likelihood`` takes the kernel for CPU float32 tensors and torch operations otherwise
(float64 here, CUDA); both must give the same per-cell values and gradients, on decoder-like inputs
with theta from 1e-4 to 1e8, counts up to 1e5 and a fractional count (tables and lgamma paths).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.model import likelihoods, nb_kernel
from engine.model.likelihoods import sparse_nb_log_likelihood
from tests.test_likelihoods import sparse_inputs


def value_and_grads(inputs, dtype, *, gene_theta: bool, zinb: bool, threads: int = 1):
    logits, library_log, theta, zi, flat, rows, cols, x = inputs
    if gene_theta:
        theta = theta[0]
    params = [p.detach().to(dtype).clone().requires_grad_() for p in (logits, library_log, theta, zi)]
    if not zinb:
        params[3] = None
    value = sparse_nb_log_likelihood(*params, flat, rows, cols, x.to(dtype), threads=threads)
    w = torch.linspace(0.5, 1.5, value.shape[0], dtype=dtype)
    (value * w).sum().backward()  # per-cell weights: the backward must scale each cell's gradients
    return [value.detach().double()] + [p.grad.double() for p in params if p is not None]


@pytest.mark.parametrize("gene_theta", [True, False])
@pytest.mark.parametrize("zinb", [True, False])
@pytest.mark.parametrize("seed,n,genes", [(0, 8, 60), (1, 40, 300)])
def test_kernel_matches_float64_reference(gene_theta, zinb, seed, n, genes):
    inputs, _ = sparse_inputs(torch.float64, seed=seed, n=n, genes=genes)
    x = inputs[-1].clone()
    x[1] = 2.5  # not an integer: lgamma/digamma instead of the tables
    inputs = (*inputs[:-1], x)
    reference = value_and_grads(inputs, torch.float64, gene_theta=gene_theta, zinb=zinb)
    got = value_and_grads(inputs, torch.float32, gene_theta=gene_theta, zinb=zinb)
    names = ["value", "d logits", "d library", "d theta", "d zi"]
    for name, a, b in zip(names, got, reference, strict=False):  # without zinb there is no "d zi"
        scale = b.abs().max()
        # float32: 1e-5 of each cell's value; gradients to 5e-4 of their largest entry
        tol = 1e-5 * b.abs() + 1e-6 * scale if name == "value" else 5e-4 * scale
        assert ((a - b).abs() <= tol).all(), f"{name}: max error {(a - b).abs().max():.3g} (scale {scale:.3g})"


def test_kernel_is_used_for_cpu_float32_only():
    inputs, _ = sparse_inputs(torch.float32)
    assert likelihoods._kernel_applies(*inputs[:4], inputs[-1])
    as64 = [p.double() for p in inputs[:4]]
    assert not likelihoods._kernel_applies(*as64, inputs[-1].double())


def test_row_chunks_give_identical_results():
    inputs, _ = sparse_inputs(torch.float32, seed=2, n=100, genes=80)
    one = value_and_grads(inputs, torch.float32, gene_theta=True, zinb=True, threads=1)
    four = value_and_grads(inputs, torch.float32, gene_theta=True, zinb=True, threads=4)
    for a, b in zip(one, four, strict=True):
        assert torch.equal(a, b)


def test_unsorted_nonzeros_and_cells_without_counts():
    inputs, _ = sparse_inputs(torch.float32, seed=3, n=12, genes=50)
    logits, library_log, theta, zi, flat, rows, cols, x = inputs
    keep = rows != 4  # cell 4 has no non-zero count at all
    flat, rows, cols, x = flat[keep], rows[keep], cols[keep], x[keep]
    expected = sparse_nb_log_likelihood(logits.double(), library_log.double(), theta.double(), zi.double(),
                                        flat, rows, cols, x.double())  # fmt: skip
    got = sparse_nb_log_likelihood(logits, library_log, theta, zi, flat, rows, cols, x)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))  # not in row order
    shuffled = sparse_nb_log_likelihood(logits, library_log, theta, zi, flat[order], rows[order], cols[order], x[order])
    torch.testing.assert_close(shuffled.double(), expected, rtol=1e-5, atol=1e-4)


def test_cephes_exp_and_log_are_within_a_few_ulp():
    import numba

    @numba.njit
    def both(values, exp_out, log_out):
        for i in range(values.shape[0]):
            exp_out[i] = nb_kernel._exp(values[i])
            log_out[i] = nb_kernel._log(np.float32(abs(values[i]) + np.float32(1e-30)))

    values = np.concatenate([np.linspace(-87, 88, 20001), np.geomspace(1e-30, 1e30, 2001)]).astype(np.float32)
    exp_out, log_out = np.empty_like(values), np.empty_like(values)
    both(values, exp_out, log_out)
    exact_exp = np.exp(values[:20001].astype(np.float64))
    positive = np.abs(values).astype(np.float64) + 1e-30
    ulp_exp = np.abs(exp_out[:20001] - exact_exp) / np.spacing(exact_exp.astype(np.float32))
    log_err = np.abs(log_out - np.log(positive))
    assert ulp_exp.max() <= 3
    assert (log_err <= 3 * np.spacing(np.abs(np.log(positive)).astype(np.float32)) + 1e-7).all()


def test_non_finite_inputs_give_non_finite_values():
    """Training stops on a non-finite loss, so the kernel must never turn NaN or inf into a number."""
    inputs, _ = sparse_inputs(torch.float32, seed=4, n=6, genes=40)
    logits, library_log, theta, zi, flat, rows, cols, x = inputs
    logits, zi, library_log = logits.clone(), zi.clone(), library_log.clone()
    logits[1, 5] = float("nan")
    zi[2, 7] = float("nan")
    library_log[3] = float("inf")
    value = sparse_nb_log_likelihood(logits, library_log, theta[0], zi, flat, rows, cols, x)
    assert not torch.isfinite(value[1:4]).any()
    assert torch.isfinite(value[[0, 4, 5]]).all()
