"""The scVI-style VAE (Lopez et al. 2018) as a torch module: ``inference -> generative -> loss``.

Layout as scvi-tools 1.4.2's ``VAE`` (``scvi.module.VAE``): fully connected layers of
``Linear -> BatchNorm1d(momentum=0.01, eps=1e-3) -> ReLU -> Dropout`` with the one-hot batch
injected into every layer of the decoder (``deeply_inject_covariates=True``); the encoder sees
``log1p`` counts and, with ``RunParams.encode_covariates`` (the paper's q(z | x, s)), the batch too,
which scvi-tools' default leaves out (``encode_covariates=False``); the decoder maps (z, s) to a
softmax over genes times the library size; dropout only in the encoders. All randomness
(initialisation, dropout, sampling) draws from an explicit ``torch.Generator``, so a run is
reproducible whatever else the process does with the global RNG.

A minibatch arrives as a :class:`Minibatch`: the non-zero counts of its cells (as cut from the CSR
matrix) plus a few per-cell constants. The count likelihoods are evaluated in two parts: the
"every count is zero" value on the full cells x genes matrix (cheap, no lgamma), plus a correction
on the non-zero entries only; for NB/ZINB both parts and their analytic gradients come from one
fused function (:func:`engine.model.likelihoods.sparse_nb_log_likelihood`; on CPU a numba kernel that
does a cell per pass, on several threads). :meth:`VAE.reconstruction`
returns exactly the per-cell sum of :mod:`engine.model.likelihoods` (tested), at a fraction of the cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.special import gammaln
from torch import nn

from engine.model.likelihoods import log_normal, sparse_nb_log_likelihood
from engine.model.params import DISPERSED_LIKELIHOODS, RunParams
from engine.preprocessing.normalize import TARGET_SUM

__all__ = [
    "CellConstants",
    "GenerativeOutputs",
    "InferenceOutputs",
    "LossParts",
    "Minibatch",
    "VAE",
    "iterate_minibatches",
]

# Minimum variance of q(z|x) and q(l|x), as scvi-tools' Encoder.var_eps: keeps log-variances finite.
VAR_EPS = 1e-4
# Cells per minibatch when nothing is learned (validation, inference): bounds memory, not statistics.
EVAL_BATCH_SIZE = 1024
# Floor of the learned per-gene variance of the gaussian likelihood.
GAUSSIAN_VAR_EPS = 1e-4
# Minibatches prepared together: amortises numpy/torch call overhead, bounds memory on big data.
CHUNK_MINIBATCHES = 32
# Non-zeros per slice when the per-cell constants of a whole matrix are computed (bounds the float64
# temporaries to ~2 x 8 bytes x this).
CONSTANTS_CHUNK_NONZEROS = 1 << 22


@dataclass
class Minibatch:
    """Cells of one minibatch, kept as their non-zero entries.

    ``nz_flat`` indexes the flattened ``(n_cells, n_genes)`` matrix, ``nz_rows``/``nz_cols`` the same
    entries by row and column; ``log_factorial`` is ``sum_g lgamma(x_g + 1)`` per cell (a constant of
    the data, computed once per data set rather than once per step).
    """

    n_genes: int
    nz_flat: torch.Tensor
    nz_rows: torch.Tensor
    nz_cols: torch.Tensor
    nz_values: torch.Tensor
    batch_index: torch.Tensor
    library_log: torch.Tensor
    log_factorial: torch.Tensor

    @property
    def n_cells(self) -> int:
        """Number of cells in the minibatch."""
        return int(self.batch_index.shape[0])

    def dense(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """The minibatch as a dense ``(n_cells, n_genes)`` matrix (of ``values`` at the non-zeros)."""
        values = self.nz_values if values is None else values
        out = torch.zeros(self.n_cells * self.n_genes, dtype=values.dtype, device=values.device)
        return out.scatter_(0, self.nz_flat, values).view(self.n_cells, self.n_genes)  # 2x index_put's speed


@dataclass(frozen=True)
class CellConstants:
    """Per-cell constants of a counts matrix: ``log`` library size and ``sum_g lgamma(x_g + 1)``.

    Computed once per data set (:meth:`of`) and handed to :func:`iterate_minibatches`, so that
    training does not recompute ``lgamma`` of every non-zero count every epoch.
    """

    library_log: np.ndarray
    log_factorial: np.ndarray

    @classmethod
    def of(cls, counts: sp.csr_matrix) -> CellConstants:
        """The constants of every row of ``counts``."""
        return cls(library_log=_library_log(counts), log_factorial=_log_factorial(counts))


def iterate_minibatches(
    counts: sp.csr_matrix,
    batch_index: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    device: torch.device | str = "cpu",
    *,
    min_size: int = 1,
    dtype: torch.dtype = torch.float32,
    constants: CellConstants | None = None,
) -> Iterator[Minibatch]:
    """Minibatches of the cells ``order`` (in that order) of ``counts`` (cells x genes CSR).

    Built a chunk of minibatches at a time with vectorised numpy; minibatches smaller than
    ``min_size`` (only ever the last one) are skipped. ``constants`` (``CellConstants.of(counts)``)
    saves recomputing the per-cell constants when the same cells are iterated again.
    """
    n_genes = counts.shape[1]
    chunk = batch_size * CHUNK_MINIBATCHES
    for start in range(0, len(order), chunk):
        cells = order[start : start + chunk]
        block = counts[cells]
        lengths = np.diff(block.indptr)
        # row of each non-zero within its minibatch (repeating the short per-cell array is ~3x cheaper
        # than a modulo over every non-zero)
        local_row = np.repeat(np.arange(len(cells), dtype=np.int64) % batch_size, lengths)
        cols = block.indices.astype(np.int64)
        flat = local_row * n_genes
        flat += cols
        t_flat = torch.from_numpy(flat).to(device)
        t_rows = torch.from_numpy(local_row).to(device)
        t_cols = torch.from_numpy(cols).to(device)
        t_vals = torch.from_numpy(block.data).to(device=device, dtype=dtype)
        t_batch = torch.from_numpy(batch_index[cells].astype(np.int64)).to(device)
        if constants is None:
            lib, fact = _library_log(block), _log_factorial(block)
        else:
            lib, fact = constants.library_log[cells], constants.log_factorial[cells]
        t_lib = torch.from_numpy(lib).to(device=device, dtype=dtype)
        t_fact = torch.from_numpy(fact).to(device=device, dtype=dtype)
        for b0 in range(0, len(cells), batch_size):
            b1 = min(b0 + batch_size, len(cells))
            if b1 - b0 < min_size:
                continue
            s, e = int(block.indptr[b0]), int(block.indptr[b1])
            yield Minibatch(
                n_genes=n_genes,
                nz_flat=t_flat[s:e],
                nz_rows=t_rows[s:e],
                nz_cols=t_cols[s:e],
                nz_values=t_vals[s:e],
                batch_index=t_batch[b0:b1],
                library_log=t_lib[b0:b1],
                log_factorial=t_fact[b0:b1],
            )


def _library_log(block: sp.csr_matrix) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(block.sum(axis=1, dtype=np.float64)).ravel())


def _log_factorial(block: sp.csr_matrix) -> np.ndarray:
    """``sum_g lgamma(x_g + 1)`` per row, a slice of rows at a time.

    The float64 values and their ``lgamma`` are two temporaries of 8 bytes per non-zero: for a whole
    1M-cell atlas (263M non-zeros) 4.2 GB at once, on top of the counts themselves. Rows are summed
    in slices of at most ~:data:`CONSTANTS_CHUNK_NONZEROS` non-zeros instead; each row's sum is the
    same computation as over the whole matrix, so the result is identical.
    """
    n_rows = block.shape[0]
    out = np.zeros(n_rows, dtype=np.float64)
    indptr = block.indptr
    r0 = 0
    while r0 < n_rows:
        # the rows whose non-zeros fit in one slice (at least one row)
        r1 = int(np.searchsorted(indptr, indptr[r0] + CONSTANTS_CHUNK_NONZEROS, side="right")) - 1
        r1 = min(max(r1, r0 + 1), n_rows)
        s, e = int(indptr[r0]), int(indptr[r1])
        per_entry = sp.csr_matrix(
            (gammaln(block.data[s:e].astype(np.float64) + 1.0), block.indices[s:e], indptr[r0:r1 + 1] - s),
            shape=(r1 - r0, block.shape[1]),
        )
        out[r0:r1] = np.asarray(per_entry.sum(axis=1)).ravel()
        r0 = r1
    return out




@dataclass
class InferenceOutputs:
    """Posterior q(z | x, s) (and q(l | x, s) for a learned library) and samples from it.

    ``z`` has shape ``(n_cells, n_latent)``; ``library_log`` is the log library size used by the
    decoder: the observed one, or a sample of the learned latent.
    """

    qz_mean: torch.Tensor
    qz_var: torch.Tensor
    z: torch.Tensor
    library_log: torch.Tensor
    ql_mean: torch.Tensor | None
    ql_var: torch.Tensor | None


@dataclass
class GenerativeOutputs:
    """Decoder output for ``n`` cells: the softmax over genes and the likelihood parameters.

    ``logits`` are the softmax logits over genes, ``(n, n_genes)``; ``log_mu = logits + log_mu_offset``
    with ``log_mu_offset = library_log - logsumexp(logits)``, and ``mu = exp(log_mu)``. ``theta`` is
    ``(n_genes,)`` for gene dispersion, ``(n, n_genes)`` otherwise, None without dispersion;
    ``zi_logits`` only for zinb/zip; ``var`` (per gene) only for the gaussian likelihood.
    ``log_mu_offset`` and ``mu`` are computed on first use: the fused NB/ZINB likelihood works from
    the logits directly, so a training step never builds them (two full-matrix passes saved).
    """

    logits: torch.Tensor
    library_log: torch.Tensor
    theta: torch.Tensor | None
    zi_logits: torch.Tensor | None
    var: torch.Tensor | None

    @cached_property
    def log_mu_offset(self) -> torch.Tensor:
        """``library_log - logsumexp(logits)`` per cell, ``(n,)``."""
        return self.library_log - torch.logsumexp(self.logits, dim=-1)

    @cached_property
    def mu(self) -> torch.Tensor:
        """Mean of the count distribution, ``library * softmax(logits)``, ``(n, n_genes)``."""
        return torch.exp(self.logits + self.log_mu_offset.unsqueeze(-1))

    @property
    def log_rho(self) -> torch.Tensor:
        """Log of the normalised expression (softmax over genes), ``(n, n_genes)``."""
        return self.logits + (self.log_mu_offset - self.library_log).unsqueeze(-1)


@dataclass
class LossParts:
    """Per-cell terms of the ELBO: ``elbo = reconstruction - kl_z - kl_library``."""

    reconstruction: torch.Tensor
    kl_z: torch.Tensor
    kl_library: torch.Tensor

    @property
    def kl(self) -> torch.Tensor:
        """Total KL per cell: ``kl_z + kl_library``."""
        return self.kl_z + self.kl_library

    @property
    def elbo(self) -> torch.Tensor:
        """ELBO per cell: ``reconstruction - kl``."""
        return self.reconstruction - self.kl

    def training_loss(self, kl_weight: float) -> torch.Tensor:
        """Minibatch loss: negative ELBO with the KL of z down-weighted during warm-up (scvi-tools)."""
        return -(self.reconstruction - kl_weight * self.kl_z - self.kl_library).mean()


def _dropout(x: torch.Tensor, p: float, training: bool, generator: torch.Generator | None) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    keep = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) >= p
    return x * keep * (1.0 / (1.0 - p))


class FCLayers(nn.Module):
    """scvi-tools' FCLayers: ``Linear([x, onehot(s)]) -> BatchNorm -> ReLU -> Dropout``, repeated.

    The one-hot concatenation is computed as ``W_x x + W_s[s]``: the same model and initialisation
    without building the concatenated input (``W_s`` is a separate parameter, so no weight slicing).
    """

    def __init__(self, n_in: int, n_out: int, *, n_batch: int, n_layers: int, n_hidden: int, dropout: float):
        super().__init__()
        self.n_cov = n_batch if n_batch > 1 else 0
        self.dropout = dropout
        sizes = [n_in] + [n_hidden] * (n_layers - 1) + [n_out]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.covariates = (nn.ParameterList(nn.Parameter(torch.empty(self.n_cov, b)) for b in sizes[1:])
                           if self.n_cov else None)
        self.norms = nn.ModuleList(nn.BatchNorm1d(b, momentum=0.01, eps=1e-3) for b in sizes[1:])

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None) -> None:
        """Uniform(+-1/sqrt(fan_in)) with fan_in = inputs + batches, as nn.Linear on the concatenation."""
        for i, linear in enumerate(self.linears):
            bound = 1.0 / math.sqrt(linear.in_features + self.n_cov)
            params = [linear.weight, linear.bias] + ([self.covariates[i]] if self.n_cov else [])
            for param in params:
                nn.init.uniform_(param, -bound, bound, generator=generator)

    def forward(self, x: torch.Tensor, batch_index: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        for i, (linear, norm) in enumerate(zip(self.linears, self.norms, strict=True)):
            h = linear(x)
            if self.n_cov:
                h = h + self.covariates[i].index_select(0, batch_index)
            x = _dropout(F.relu(norm(h)), self.dropout, self.training, generator)
        return x


class Encoder(nn.Module):
    """Gaussian encoder: FCLayers then linear mean and ``exp`` variance (+ VAR_EPS)."""

    def __init__(self, n_in: int, n_out: int, *, n_batch: int, n_layers: int, n_hidden: int, dropout: float):
        super().__init__()
        self.body = FCLayers(n_in, n_hidden, n_batch=n_batch, n_layers=n_layers, n_hidden=n_hidden, dropout=dropout)
        self.mean = nn.Linear(n_hidden, n_out)
        self.log_var = nn.Linear(n_hidden, n_out)

    def forward(
        self, x: torch.Tensor, batch_index: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x, batch_index, generator)
        return self.mean(h), torch.exp(self.log_var(h)) + VAR_EPS


class VAE(nn.Module):
    """scVI VAE for ``n_genes`` genes and ``n_batch`` batches, configured by :class:`RunParams`.

    ``library_log_mean``/``library_log_var`` (one value per batch, from the data) are the prior of the
    learned library size; they are stored as buffers so the saved ``state_dict`` is self-contained.
    """

    def __init__(
        self,
        n_genes: int,
        n_batch: int,
        params: RunParams,
        *,
        library_log_mean: np.ndarray | None = None,
        library_log_var: np.ndarray | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.n_genes = n_genes
        self.n_batch = max(n_batch, 1)
        self.params = params
        p = params
        # n_batch=1 gives layers without batch covariates: q(z | x) instead of q(z | x, s)
        encoder_batches = self.n_batch if p.encode_covariates else 1
        self.z_encoder = Encoder(
            n_genes, p.n_latent, n_batch=encoder_batches, n_layers=p.n_layers, n_hidden=p.n_hidden, dropout=p.dropout
        )
        if p.library == "learned":
            self.l_encoder = Encoder(
                n_genes, 1, n_batch=encoder_batches, n_layers=1, n_hidden=p.n_hidden, dropout=p.dropout
            )
            mean = np.zeros(self.n_batch) if library_log_mean is None else np.asarray(library_log_mean)
            var = np.ones(self.n_batch) if library_log_var is None else np.asarray(library_log_var)
            self.register_buffer("library_log_mean", torch.as_tensor(mean, dtype=torch.float32).reshape(-1))
            self.register_buffer("library_log_var", torch.as_tensor(var, dtype=torch.float32).reshape(-1))
        self.decoder = FCLayers(
            p.n_latent, p.n_hidden, n_batch=self.n_batch, n_layers=p.n_layers, n_hidden=p.n_hidden, dropout=0.0
        )
        self.zero_inflated = p.likelihood in ("zinb", "zip")
        self.cell_dispersion = p.likelihood in DISPERSED_LIKELIHOODS and p.dispersion == "gene-cell"
        self.px_scale = nn.Linear(p.n_hidden, n_genes)
        if self.zero_inflated:
            self.px_dropout = nn.Linear(p.n_hidden, n_genes)
        if self.cell_dispersion:
            self.px_r_decoder = nn.Linear(p.n_hidden, n_genes)
        if p.likelihood in DISPERSED_LIKELIHOODS and p.dispersion == "gene":
            self.px_r = nn.Parameter(torch.empty(n_genes))
        elif p.likelihood in DISPERSED_LIKELIHOODS and p.dispersion == "gene-batch":
            self.px_r = nn.Parameter(torch.empty(n_genes, self.n_batch))
        if p.likelihood == "gaussian":
            self.log_var = nn.Parameter(torch.zeros(n_genes))
        if p.prior == "mixture":
            self.prior_means = nn.Parameter(torch.empty(p.n_components, p.n_latent))
            self.prior_log_vars = nn.Parameter(torch.zeros(p.n_components, p.n_latent))
            self.prior_logits = nn.Parameter(torch.zeros(p.n_components))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None) -> None:
        """PyTorch's default initialisation, drawn from ``generator`` (reproducible)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                bound = 1.0 / math.sqrt(module.in_features)
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        for module in self.modules():
            if isinstance(module, FCLayers):
                module.reset_parameters(generator)
        if hasattr(self, "px_r"):
            self.px_r.copy_(torch.randn(self.px_r.shape, generator=generator))  # as scvi-tools
        if hasattr(self, "prior_means"):
            self.prior_means.copy_(torch.randn(self.prior_means.shape, generator=generator))

    # ----------------------------------------------------------------------------------- inference
    def inference(
        self, mb: Minibatch, *, generator: torch.Generator | None = None, sample: bool = True
    ) -> InferenceOutputs:
        """q(z | x, s) (and q(l | x, s)); ``sample=False`` uses the posterior means."""
        x = mb.dense(torch.log1p(mb.nz_values))
        qz_mean, qz_var = self.z_encoder(x, mb.batch_index, generator)
        z = qz_mean + qz_var.sqrt() * self._randn(qz_mean, generator) if sample else qz_mean
        ql_mean = ql_var = None
        library_log = mb.library_log
        if self.params.library == "learned":
            ql_mean, ql_var = self.l_encoder(x, mb.batch_index, generator)
            lib = ql_mean + ql_var.sqrt() * self._randn(ql_mean, generator) if sample else ql_mean
            library_log = lib.squeeze(-1)
        return InferenceOutputs(qz_mean, qz_var, z, library_log, ql_mean, ql_var)

    @staticmethod
    def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)

    # ---------------------------------------------------------------------------------- generative
    def generative(
        self,
        z: torch.Tensor,
        library_log: torch.Tensor,
        batch_index: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> GenerativeOutputs:
        """p(x | z, l, s): decoder output for latent ``z`` (n, n_latent) decoded in batches ``batch_index``."""
        h = self.decoder(z, batch_index, generator)
        logits = self.px_scale(h)
        zi_logits = self.px_dropout(h) if self.zero_inflated else None
        theta = None
        if self.cell_dispersion:
            theta = torch.exp(self.px_r_decoder(h))
        elif hasattr(self, "px_r"):
            theta = torch.exp(self.px_r) if self.px_r.dim() == 1 else torch.exp(self.px_r).t()[batch_index]
        var = torch.exp(self.log_var) + GAUSSIAN_VAR_EPS if self.params.likelihood == "gaussian" else None
        return GenerativeOutputs(logits, library_log, theta, zi_logits, var)

    # ---------------------------------------------------------------------------------------- loss
    def reconstruction(self, mb: Minibatch, gen: GenerativeOutputs, *, threads: int | None = None) -> torch.Tensor:
        """``log p(x | z, l, s)`` per cell, summed over genes.

        Equals the per-cell sum of the :mod:`engine.model.likelihoods` functions on the dense minibatch
        (tested), computed as "all counts zero" on the full matrix plus a correction gathered at the
        non-zero counts, so lgamma/digamma and most of the work only touch the non-zeros; NB/ZINB
        in one fused pass with hand-written gradients (no autograd graph of ~20 ops per entry), on
        ``threads`` CPU threads (default ``torch.get_num_threads()``).
        """
        lik = self.params.likelihood
        if lik == "gaussian":
            scaled = mb.nz_values / torch.exp(mb.library_log[mb.nz_rows]) * TARGET_SUM
            observed = mb.dense(torch.log1p(scaled))
            mean = torch.log1p(torch.exp(gen.log_rho) * TARGET_SUM)
            return log_normal(observed, mean, gen.var).sum(-1)
        rows, cols, x = mb.nz_rows, mb.nz_cols, mb.nz_values
        if lik in ("nb", "zinb"):  # one fused pass with analytic gradients (engine.model.likelihoods)
            zi = gen.zi_logits if lik == "zinb" else None
            total = sparse_nb_log_likelihood(
                gen.logits, gen.library_log, gen.theta, zi, mb.nz_flat, rows, cols, x, threads=threads
            )
            return total - mb.log_factorial
        # everything at the non-zeros derives from the decoder's outputs gathered there
        log_mu_nz = gen.logits.reshape(-1).index_select(0, mb.nz_flat) + gen.log_mu_offset.index_select(0, rows)
        zi_nz = gen.zi_logits.reshape(-1).index_select(0, mb.nz_flat) if self.zero_inflated else None
        if lik == "poisson":
            # log Poisson(x) = -mu + x log mu - lgamma(x + 1); the softmax makes sum_g mu = library
            full = -torch.exp(gen.library_log)
            correction = x * log_mu_nz
        else:  # zip
            zi = gen.zi_logits
            full = (F.softplus(-gen.mu - zi) - F.softplus(-zi)).sum(-1)
            mu_nz = torch.exp(log_mu_nz)
            # log(1-pi) - mu + x log mu  minus  log p(0) = softplus(-mu - zi) - softplus(-zi)
            correction = -zi_nz - mu_nz + x * log_mu_nz - F.softplus(-mu_nz - zi_nz)
        return full + _row_sum(correction, rows, mb.n_cells) - mb.log_factorial

    def kl_z(self, inf: InferenceOutputs) -> torch.Tensor:
        """KL(q(z|x) || p(z)) per cell.

        Closed form for the normal prior, one Monte-Carlo sample (the z already drawn) for the
        Gaussian-mixture prior.
        """
        m, v = inf.qz_mean, inf.qz_var
        if self.params.prior == "normal":
            return 0.5 * (v + m * m - 1.0 - torch.log(v)).sum(-1)
        z = inf.z
        log_q = (-0.5 * (math.log(2 * math.pi) + torch.log(v) + (z - m) ** 2 / v)).sum(-1)
        return log_q - self.log_prior_z(z)

    def log_prior_z(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)`` under the Gaussian-mixture prior, per row of ``z``."""
        var = torch.exp(self.prior_log_vars)  # (K, L)
        diff = z.unsqueeze(-2) - self.prior_means  # (n, K, L)
        log_comp = (-0.5 * (math.log(2 * math.pi) + self.prior_log_vars + diff * diff / var)).sum(-1)
        return torch.logsumexp(log_comp + torch.log_softmax(self.prior_logits, -1), dim=-1)

    def kl_library(self, inf: InferenceOutputs, batch_index: torch.Tensor) -> torch.Tensor:
        """KL(q(l|x,s) || N(mean_s, var_s)) per cell (0 for the observed library)."""
        if inf.ql_mean is None:
            return torch.zeros_like(inf.library_log)
        pm = self.library_log_mean[batch_index]
        pv = self.library_log_var[batch_index]
        m, v = inf.ql_mean.squeeze(-1), inf.ql_var.squeeze(-1)
        return 0.5 * (torch.log(pv / v) + (v + (m - pm) ** 2) / pv - 1.0)

    def loss(
        self, mb: Minibatch, *, generator: torch.Generator | None = None, threads: int | None = None
    ) -> LossParts:
        """One pass ``inference -> generative -> loss`` with a single posterior sample.

        ``threads``: see :meth:`reconstruction`.
        """
        inf = self.inference(mb, generator=generator)
        gen = self.generative(inf.z, inf.library_log, mb.batch_index, generator=generator)
        rec = self.reconstruction(mb, gen, threads=threads)
        return LossParts(rec, self.kl_z(inf), self.kl_library(inf, mb.batch_index))


def _row_sum(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    return torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add_(0, rows, values)
