"""One-pass CPU kernel of the sparse (zero-inflated) negative binomial log-likelihood and its gradients.

:func:`engine.model.likelihoods.sparse_nb_log_likelihood` needs, per minibatch, the per-cell sum of
``log NB(x | mu, theta) + lgamma(x + 1)`` (or ZINB) with ``mu = library * softmax(logits)``, and the
derivatives of that sum with respect to the logits, the log library, ``theta`` and the
zero-inflation logits. Written as torch operations that is ~45 passes over a cells x genes matrix,
each paying a dispatch and a trip through memory; here one numba loop per cell does all of it while
the row sits in the L1 cache, and the rows are split between threads (the kernel releases the GIL).
The torch version stays the reference (GPU, float64) and the tests hold the two together.

Transcendentals: numba has no vectorised ``exp``/``log`` without Intel's SVML (not on PyPI), so
:func:`_exp` and :func:`_log` are the Cephes single-precision approximations written with integer
bit operations, which LLVM vectorises (within 2 ulp; tested against numpy).

``lgamma(x + theta) - lgamma(theta)`` and ``digamma(x + theta) - digamma(theta)`` at integer counts
``x <= TABLE_COUNTS`` with one ``theta`` per gene come from per-gene tables of
``sum_{j<k} log(theta + j)`` and ``sum_{j<k} 1 / (theta + j)`` (exact where the difference of two
lgammas of a large ``theta`` cancels); other counts, or a ``theta`` per cell, use float64 lgamma
and a digamma series.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["TABLE_COUNTS", "WORK_ROWS", "csr_indptr", "gamma_tables", "nb_rows"]

_F = np.float32
_EPS = _F(1e-8)  # theta + eps, as engine.model.likelihoods
# Counts up to this are looked up in the per-gene tables (most single-cell counts are small).
TABLE_COUNTS = 32
# Rows of the scratch array each nb_rows call needs.
WORK_ROWS = 9


@intrinsic
def _bits(typingctx, x):  # noqa: ARG001 - numba intrinsic signature
    """The IEEE bits of a float32 as an int32 (a bitcast, vectorisable)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _float(typingctx, x):  # noqa: ARG001
    """The float32 whose IEEE bits are the int32 ``x``."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


# No 'reassoc' in the element-wise code: the Cody-Waite reduction in _exp and the series in
# _log1p rely on being evaluated as written. Reductions (sums) are separate loops that may reassociate.
# No 'nnan'/'ninf' anywhere a value flows to the result: a diverging model must give a non-finite
# loss (training stops on it), and loops must not be compiled on the assumption that NaN is absent.
_ELEMENTWISE = ("nsz", "arcp", "contract", "afn")
_REDUCTION = ("reassoc", "nsz", "arcp", "contract")
_INF = _F(np.inf)


def _loop(function):
    """Compile an element-wise loop: no GIL, no bounds checks, cached on disk."""
    return numba.njit(fastmath=set(_ELEMENTWISE), nogil=True, boundscheck=False, error_model="numpy", cache=True)(
        function
    )


@numba.njit(inline="always", fastmath=set(_ELEMENTWISE))
def _exp(x):
    """``exp(x)`` in float32 (Cephes expf), for x in [-87, 88] (clamped outside; NaN stays NaN)."""
    x = _F(-87.0) if x < _F(-87.0) else x
    x = _F(88.0) if x > _F(88.0) else x
    k = np.int32(x * _F(1.4426950408889634) + _F(128.5)) - np.int32(128)  # round(x / ln 2); argument > 0
    n = _F(k)
    r = x - n * _F(0.693359375) + n * _F(2.12194440e-4)
    p = _F(1.9875691500e-4)
    p = p * r + _F(1.3981999507e-3)
    p = p * r + _F(8.3334519073e-3)
    p = p * r + _F(4.1665795894e-2)
    p = p * r + _F(1.6666665459e-1)
    p = p * r + _F(5.0000001201e-1)
    p = p * r * r + r + _F(1.0)
    return p * _float((k + np.int32(127)) << np.int32(23))


@numba.njit(inline="always", fastmath=set(_ELEMENTWISE))
def _log(x):
    """``log(x)`` in float32 (Cephes logf) for normal ``x > 0``.

    NaN, inf, 0 and negative ``x`` give what ``log`` gives (denormals are read as if normal).
    """
    bits = _bits(x)
    e = (bits >> np.int32(23)) - np.int32(127)
    m = _float((bits & np.int32(0x7FFFFF)) | np.int32(0x3F800000))  # mantissa in [1, 2)
    big = m > _F(1.41421356)
    m = m * _F(0.5) if big else m
    e = e + np.int32(1) if big else e
    f = m - _F(1.0)
    z = f * f
    y = _F(7.0376836292e-2)
    y = y * f - _F(1.1514610310e-1)
    y = y * f + _F(1.1676998740e-1)
    y = y * f - _F(1.2420140846e-1)
    y = y * f + _F(1.4249322787e-1)
    y = y * f - _F(1.6668057665e-1)
    y = y * f + _F(2.0000714765e-1)
    y = y * f - _F(2.4999993993e-1)
    y = y * f + _F(3.3333331174e-1)
    y = y * f * z
    ef = _F(e)
    y = y + ef * _F(-2.12194440e-4) - _F(0.5) * z
    result = f + y + ef * _F(0.693359375)
    if x > _F(0.0) and x < _INF:
        return result
    return x if x == _INF else (-_INF if x == _F(0.0) else _F(np.nan))


@numba.njit(inline="always", fastmath=set(_ELEMENTWISE))
def _log1p(u):
    """``log(1 + u)`` for ``u >= 0``: a series below 0.1, :func:`_log` above.

    The series serves where ``1 + u`` would lose digits of ``u``; its truncation error is below 1e-9
    relative.
    """
    series = u * (_F(1.0) - u * (_F(1 / 2) - u * (_F(1 / 3) - u * (_F(1 / 4) - u * (_F(1 / 5) - u * (
        _F(1 / 6) - u * (_F(1 / 7) - u * _F(1 / 8))))))))  # fmt: skip
    return series if u < _F(0.1) else _log(_F(1.0) + u)


@numba.njit(inline="always")
def _digamma(y):
    """``digamma(y)`` for ``y > 0`` in float64.

    Six steps of ``digamma(y) = digamma(y + 1) - 1 / y``, then the asymptotic series at ``y + 6 >= 6``
    (error below 1e-10; a fixed count, so NaN ends too).
    """
    shift = 0.0
    for _ in range(6):
        shift -= 1.0 / y
        y += 1.0
    inv = 1.0 / y
    inv2 = inv * inv
    series = inv2 * (1.0 / 12 - inv2 * (1.0 / 120 - inv2 * (1.0 / 252 - inv2 * (1.0 / 240 - inv2 / 132))))
    return shift + math.log(y) - 0.5 * inv - series


@numba.njit(fastmath=set(_REDUCTION), nogil=True, boundscheck=False, cache=True)
def _sum(values):
    s = _F(0.0)
    for g in range(values.shape[0]):
        s += values[g]
    return s


# 'nnan' lets the max vectorise; a NaN logit still makes its row NaN through exp(logit - max).
@numba.njit(fastmath={"nnan", "nsz"}, nogil=True, boundscheck=False, cache=True)
def _max(values):
    m = values[0]
    for g in range(values.shape[0]):
        m = values[g] if values[g] > m else m
    return m


@numba.njit(nogil=True, boundscheck=False, cache=True)
def csr_indptr(rows, n_rows, indptr):
    """Fill ``indptr`` (n_rows + 1,) from the row of each non-zero; False if ``rows`` is not sorted."""
    indptr[:] = 0
    previous = 0
    for r in rows:
        if r < previous or r >= n_rows:
            return False
        previous = r
        indptr[r + 1] += 1
    for r in range(n_rows):
        indptr[r + 1] += indptr[r]
    return True


@_loop
def gamma_tables(theta, log_table, inv_table):
    """Fill ``log_table`` and ``inv_table`` (K, G) with the lgamma and digamma differences of ``theta``.

    ``log_table[k - 1, g] = sum_{j<k} log(theta_g + j)`` (= lgamma(theta + k) - lgamma(theta)) and
    ``inv_table[k - 1, g] = sum_{j<k} 1 / (theta_g + j)`` (the digamma difference), k = 1..K.
    """
    acc_log = np.zeros(theta.shape[0], dtype=np.float32)
    acc_inv = np.zeros(theta.shape[0], dtype=np.float32)
    for j in range(log_table.shape[0]):
        for g in range(theta.shape[0]):
            step = theta[g] + _F(j)
            acc_log[g] += _log(step)
            acc_inv[g] += _F(1.0) / step
            log_table[j, g] = acc_log[g]
            inv_table[j, g] = acc_inv[g]


@_loop
def _exp_shifted(logit_row, shift, out):
    for g in range(logit_row.shape[0]):
        out[g] = _exp(logit_row[g] - shift)


@numba.njit(inline="always", fastmath=set(_ELEMENTWISE))
def _nb_zero_terms(th, soft_g, scale):
    """One gene's ``log NB(0) = -theta log1p(mu / theta)`` pieces: mu, the log1p, d/dlog mu, d/dtheta."""
    inv_te = _F(1.0) / (th + _EPS)
    mu = soft_g * scale
    u = mu * inv_te
    lpg = _log1p(u)
    d_log_mu = -th * u / (_F(1.0) + u)
    return mu, lpg, d_log_mu, -d_log_mu * inv_te - lpg


@_loop
def _nb_zero(soft, scale, theta_row, val, dlm, dth):
    """Per gene, as if the count were zero (NB): value, d/dlog mu and d/dtheta; ``soft`` becomes mu."""
    for g in range(soft.shape[0]):
        th = theta_row[g]
        mu, lpg, dlm[g], dth[g] = _nb_zero_terms(th, soft[g], scale)
        val[g] = -th * lpg
        soft[g] = mu


@_loop
def _zinb_zero(soft, scale, theta_row, zi_row, val, dlm, dth, dzi, log_sig, g0, dl0, dth0):
    """Per gene, as if the count were zero (ZINB): value, derivatives, and terms for the non-zeros.

    The terms for the non-zeros are ``log sigmoid(nb0 - zi)``, ``sigmoid(nb0 - zi)``
    (= d log p(0) / d nb0) and the NB parts of d/dlog mu (``dl0``) and d/dtheta (``dth0``); ``soft``
    becomes mu.

    The softplus terms take ``log(1 + e)`` for ``e = exp(-|y|) <= 1`` (absolute error below 1.2e-7,
    far below what a per-cell sum resolves); ``log1p(mu / theta)`` needs the accurate series.
    """
    for g in range(soft.shape[0]):
        th = theta_row[g]
        mu, lpg, d0, t0 = _nb_zero_terms(th, soft[g], scale)
        z = zi_row[g]
        # softplus(-z) and sigmoid(-z) from a = exp(-|z|)
        a = _exp(-abs(z))
        sp_negz = (-z if z < _F(0.0) else _F(0.0)) + _log(_F(1.0) + a)
        sig_negz = (_F(1.0) if z <= _F(0.0) else a) / (_F(1.0) + a)
        # softplus and sigmoid of nb0 - z, with nb0 = log NB(0) = -theta lp
        shifted = -th * lpg - z
        b = _exp(-abs(shifted))
        sp_shifted = (shifted if shifted > _F(0.0) else _F(0.0)) + _log(_F(1.0) + b)
        gz = (_F(1.0) if shifted >= _F(0.0) else b) / (_F(1.0) + b)
        val[g] = sp_shifted - sp_negz
        dlm[g] = d0 * gz
        dth[g] = t0 * gz
        dzi[g] = sig_negz - gz
        log_sig[g] = shifted - sp_shifted
        g0[g] = gz
        dl0[g] = d0
        dth0[g] = t0
        soft[g] = mu


@_loop
def _logits_grad(dlm, mu, k, out):
    for g in range(dlm.shape[0]):
        out[g] = dlm[g] - mu[g] * k


@_loop
def nb_rows(
    row_start,
    row_stop,
    logits,
    library_log,
    theta,
    zi_logits,
    zero_inflated,
    indptr,
    cols,
    x,
    log_table,
    inv_table,
    use_tables,
    with_grads,
    with_theta_grad,
    out,
    d_logits,
    d_library,
    d_theta,
    d_zi,
    work,
):
    """Rows ``row_start:row_stop``: per-cell sums of ``log NB(x | mu, theta) + lgamma(x + 1)`` and derivatives.

    ZINB when ``zero_inflated``; the derivatives only ``with_grads``.

    Shapes: ``logits`` (n, G); ``library_log`` (n,); ``theta`` (n, G), or (1, G) for one theta per
    gene (then ``use_tables`` may say that ``log_table``/``inv_table`` (K, G) from
    :func:`gamma_tables` hold its lgamma/digamma differences); ``zi_logits`` (n, G) (read only
    ``zero_inflated``); the non-zero counts as CSR: ``indptr`` (n + 1,), ``cols`` and ``x`` (nnz,).
    Writes ``out`` (n,) and, ``with_grads``, ``d_logits`` (n, G), ``d_library`` (n,), ``d_zi`` (n, G;
    zero inflation only) and, ``with_theta_grad``, ``d_theta`` (n, G). ``work`` is (9, G) scratch
    owned by this call (rows 7 and 8 stand in for the derivatives that are not asked for).
    """
    n_table = log_table.shape[0]
    theta_per_cell = theta.shape[0] > 1
    soft, val, dlm, log_sig, g0, dl0, dth0 = work[0], work[1], work[2], work[3], work[4], work[5], work[6]
    for i in range(row_start, row_stop):
        logit_row = logits[i]
        theta_row = theta[i if theta_per_cell else 0]
        dth_row = d_theta[i] if with_theta_grad else work[7]
        shift = _max(logit_row)
        _exp_shifted(logit_row, shift, soft)
        total = _sum(soft)
        library = _F(math.exp(library_log[i]))
        log_offset = library_log[i] - shift - _F(math.log(total))  # log mu = logit + log_offset
        if zero_inflated:
            dzi_row = d_zi[i] if with_grads else work[8]
            _zinb_zero(soft, library / total, theta_row, zi_logits[i], val, dlm, dth_row, dzi_row, log_sig, g0, dl0,
                       dth0)
        else:
            dzi_row = work[8]
            _nb_zero(soft, library / total, theta_row, val, dlm, dth_row)
        # non-zero counts: add log NB(x) - log NB(0) (ZINB: log(1 - pi) + log NB(x) - log p(0))
        for j in range(indptr[i], indptr[i + 1]):
            g = cols[j]
            xv = x[j]
            th = theta_row[g]
            te = th + _EPS
            te_mu = te + soft[g]
            inv_te_mu = _F(1.0) / te_mu
            k = np.int64(xv)
            if use_tables and k >= 1 and k <= n_table and _F(k) == xv:
                lgamma_ratio = log_table[k - 1, g]
                digamma_ratio = inv_table[k - 1, g]
            else:
                x64, th64 = np.float64(xv), np.float64(th)
                lgamma_ratio = _F(math.lgamma(x64 + th64) - math.lgamma(th64))
                digamma_ratio = _F(_digamma(x64 + th64) - _digamma(th64)) if with_theta_grad else _F(0.0)
            # x log(mu / (theta + mu)) + lgamma(x + theta) - lgamma(theta)
            correction = xv * (logit_row[g] + log_offset - _log(te_mu)) + lgamma_ratio
            if zero_inflated:
                correction += log_sig[g]
                # at a non-zero count d log p / d nb0 is 1, not sigmoid(nb0 - zi)
                dzi_row[g] += g0[g] - _F(1.0)
                dl = dl0[g]
                dth = dth0[g]
            else:
                dl = dlm[g]
                dth = dth_row[g]
            val[g] += correction
            dlm[g] = dl + xv * te * inv_te_mu  # + x (1 - mu / (theta + mu))
            dth_row[g] = dth + digamma_ratio - xv * inv_te_mu
        out[i] = _sum(val)
        if with_grads:
            dlib = _sum(dlm)
            d_library[i] = dlib
            _logits_grad(dlm, soft, dlib / library, d_logits[i])  # d/dlogits = d log mu - softmax * sum
