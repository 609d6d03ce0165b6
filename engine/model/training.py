"""Training loop of the VAE: Adam (constant or cosine lr), KL warm-up, early stopping on the validation ELBO.

No framework around it: one plain loop whose per-step work is a few tensor slices and the model's
forward/backward. Counts stay CSR; once per chunk of minibatches the rows of a shuffled chunk are cut
from the CSR matrix with vectorised numpy, and each minibatch is made dense (inside the model) one at
a time. All randomness comes from ``params.seed`` (numpy ``Generator`` for the split and the shuffle,
``torch.Generator`` for initialisation, dropout and sampling), so the same seed gives the same latent
on CPU, whatever else the process does with the global RNGs.

ELBO sign: the reported ``elbo`` is the evidence lower bound per cell (higher is better; usually a
negative number), ``reconstruction`` is ``E_q[log p(x | z, l)]`` per cell and ``kl`` the KL
divergence per cell (z plus learned library), so ``elbo = reconstruction - kl``. scvi-tools'
``elbo_validation`` is the negative of ours.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from engine.model.params import RunParams
from engine.model.vae import EVAL_BATCH_SIZE, VAE, CellConstants, Minibatch, iterate_minibatches

__all__ = [
    "EpochReport",
    "TrainingCancelled",
    "TrainingDiverged",
    "TrainingResult",
    "library_log_prior",
    "resolve_device",
    "split_cells",
    "train",
]

# Adam as in scvi-tools' TrainingPlan (eps=0.01 damps the first steps, tiny weight decay); the
# fused implementation updates all parameters in one kernel instead of ~10 small ops per tensor.
ADAM_EPS = 0.01
WEIGHT_DECAY = 1e-6
# A final minibatch smaller than this is skipped: BatchNorm statistics of 1-2 cells are meaningless.
MIN_MINIBATCH = 3


class TrainingCancelled(Exception):
    """Raised when ``should_stop()`` returned True; nothing of the run is kept."""


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite, also after a retry with a 10x smaller learning rate."""


@dataclass(frozen=True)
class EpochReport:
    """Progress after one epoch.

    ``train_elbo`` is the mean ELBO per training cell over the epoch's minibatches (full KL weight,
    dropout on); ``validation_elbo`` the ELBO per validation cell (eval mode), None without a
    validation set; ``reconstruction`` and ``kl`` split the validation ELBO (the training one when
    there is no validation set); ``seconds`` is the wall time of the epoch including validation.
    """

    epoch: int
    n_epochs: int
    train_elbo: float
    validation_elbo: float | None
    reconstruction: float
    kl: float
    seconds: float


@dataclass
class TrainingResult:
    """A trained module (eval mode, best epoch's weights when early stopping) and how it got there."""

    module: VAE
    history: list[EpochReport]
    train_indices: np.ndarray
    validation_indices: np.ndarray
    best_epoch: int
    lr: float
    seconds: float

    @property
    def n_epochs_trained(self) -> int:
        """Number of epochs trained (one report each)."""
        return len(self.history)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA GPU is available; use device='auto' or 'cpu'")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is not allowed; choose one of 'auto', 'cpu', 'cuda'")
    return torch.device(device)


def split_cells(n_cells: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split into (train, validation) cell indices, both sorted."""
    perm = np.random.default_rng(seed).permutation(n_cells)
    n_val = int(round(n_cells * validation_fraction))
    if validation_fraction > 0 and n_cells > 1:
        n_val = min(max(n_val, 1), n_cells - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def library_log_prior(counts: sp.csr_matrix, batch_index: np.ndarray, n_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the log library size per batch (the prior of a learned library)."""
    log_lib = np.log(np.asarray(counts.sum(axis=1)).ravel())
    means = np.zeros(n_batch)
    variances = np.ones(n_batch)
    for b in range(n_batch):
        values = log_lib[batch_index == b]
        if values.size:
            means[b] = values.mean()
            variances[b] = max(values.var(), 1e-3) if values.size > 1 else 1.0
    return means, variances


def evaluate(
    module: VAE, minibatches: list[Minibatch], generator: torch.Generator, threads: int | None = None
) -> tuple[float, float, float]:
    """Mean (elbo, reconstruction, kl) per cell over ``minibatches`` in eval mode (one z sample)."""
    was_training = module.training
    module.eval()
    totals = None
    n = 0
    with torch.inference_mode():
        for mb in minibatches:
            parts = module.loss(mb, generator=generator, threads=threads)
            sums = torch.stack([parts.elbo.sum(), parts.reconstruction.sum(), parts.kl.sum()])
            totals = sums if totals is None else totals + sums
            n += mb.n_cells
    module.train(was_training)
    elbo, rec, kl = (totals / n).tolist()
    return elbo, rec, kl


def train(
    counts: sp.csr_matrix,
    batch_index: np.ndarray,
    n_batch: int,
    params: RunParams,
    *,
    on_epoch: Callable[[EpochReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str = "auto",
    on_model: Callable[[int, VAE], None] | None = None,
) -> TrainingResult:
    """Train a :class:`~engine.model.vae.VAE` on ``counts`` (cells x genes CSR, raw counts).

    ``batch_index`` holds each cell's batch code in ``range(n_batch)``. ``on_epoch`` is called after
    every epoch; ``on_model(epoch, module)`` too, with the model as it stands (for a live preview; it
    may switch the module to eval mode, each epoch switches it back); ``should_stop`` is polled
    between minibatches and raises :class:`TrainingCancelled`.
    A NaN/inf loss restarts training once with a 10x smaller learning rate, then raises
    :class:`TrainingDiverged`.
    """
    counts = sp.csr_matrix(counts, dtype=np.float32)
    counts.sort_indices()
    batch_index = np.asarray(batch_index, dtype=np.int64)
    torch_device = resolve_device(device)
    train_idx, val_idx = split_cells(counts.shape[0], params.validation_fraction, params.seed)
    first_lr = lr = params.resolved_lr()
    for attempt in range(2):
        try:
            with _step_threads(torch_device) as threads:
                return _train_once(
                    counts, batch_index, n_batch, params, train_idx, val_idx, lr, torch_device, threads, on_epoch,
                    should_stop, on_model,
                )  # fmt: skip
        except _NonFinite as err:
            if attempt == 1:
                raise TrainingDiverged(
                    f"training diverged ({err}) at learning rate {first_lr:g} and again at {lr:g}. Likely "
                    "causes: data that are not raw counts given to a count likelihood (use the raw "
                    "counts, or likelihood='gaussian'), extreme library sizes (filter empty or huge "
                    "cells), or a learning rate that is too high (lower RunParams.lr)"
                ) from None
            lr = first_lr / 10
    raise AssertionError("unreachable")


class _NonFinite(Exception):
    pass


@contextmanager
def _step_threads(device: torch.device) -> Iterator[int]:
    """CPU threads for training: torch ops on the calling thread alone.

    Yields the thread count for the likelihood kernel (all of ``torch.get_num_threads()``).

    A step is ~300 torch ops on 128 x n_genes matrices; split over OpenMP threads each op waits for
    a sleeping helper thread to wake (tens of microseconds on a VM), which costs more than it saves
    (two threads were slower than one; BENCHMARKS.md). The fused NB/ZINB kernel is the one call with
    enough work to split, so it gets the threads. With ATen's OpenMP backend (PyTorch's CPU wheels)
    the setting is per thread (OpenMP's nthreads-var), so other threads of the process, such as other
    sessions' jobs, keep theirs (tested); it is restored on exit. With another backend the setting is
    process-wide, and it is left alone.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or not _threads_are_per_thread():
        yield threads
        return
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def _threads_are_per_thread() -> bool:
    """Whether ``torch.set_num_threads`` affects only the calling thread (ATen's OpenMP backend)."""
    return "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()


def _train_once(
    counts: sp.csr_matrix,
    batch_index: np.ndarray,
    n_batch: int,
    params: RunParams,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    lr: float,
    device: torch.device,
    threads: int,
    on_epoch: Callable[[EpochReport], None] | None,
    should_stop: Callable[[], bool] | None,
    on_model: Callable[[int, VAE], None] | None = None,
) -> TrainingResult:
    start_time = time.perf_counter()
    n_epochs = params.resolved_max_epochs(counts.shape[0])
    warmup = params.resolved_kl_warmup_epochs(n_epochs)
    lib_mean, lib_var = library_log_prior(counts, batch_index, n_batch)
    init_gen = torch.Generator().manual_seed(params.seed)
    module = VAE(
        counts.shape[1], n_batch, params, library_log_mean=lib_mean, library_log_var=lib_var, generator=init_gen
    ).to(device)
    generator = torch.Generator(device=device).manual_seed(params.seed + 1)
    shuffle_rng = np.random.default_rng(params.seed + 2)
    optimizer = torch.optim.Adam(
        module.parameters(), lr=lr, eps=ADAM_EPS, weight_decay=WEIGHT_DECAY, fused=True
    )
    constants = CellConstants.of(counts)
    validation = list(
        iterate_minibatches(counts, batch_index, val_idx, EVAL_BATCH_SIZE, device, constants=constants)
    )
    history: list[EpochReport] = []
    best_elbo, best_epoch, best_state = -math.inf, 0, None
    # early stopping: ``best_*`` is the best epoch (its weights are kept); ``reference_*`` the last
    # epoch that beat the previous reference by more than ``min_improvement`` (relative), from which
    # patience counts. With min_improvement=0 the two are the same epoch.
    reference_elbo, reference_epoch = -math.inf, 0
    for epoch in range(n_epochs):
        epoch_start = time.perf_counter()
        kl_weight = min(1.0, epoch / warmup) if warmup > 0 else 1.0
        if params.lr_schedule == "cosine":
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * epoch / n_epochs))
        module.train()
        sums = torch.zeros(3, device=device)
        n_seen = 0
        order = train_idx[shuffle_rng.permutation(len(train_idx))]
        for mb in iterate_minibatches(
            counts, batch_index, order, params.batch_size, device, min_size=MIN_MINIBATCH, constants=constants
        ):
            if should_stop is not None and should_stop():
                raise TrainingCancelled("training was cancelled")
            parts = module.loss(mb, generator=generator, threads=threads)
            loss = parts.training_loss(kl_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                sums += torch.stack([parts.elbo.sum(), parts.reconstruction.sum(), parts.kl.sum()])
            n_seen += mb.n_cells
        train_elbo, train_rec, train_kl = (sums / max(n_seen, 1)).tolist()
        if not math.isfinite(train_elbo):
            raise _NonFinite(f"non-finite training loss in epoch {epoch + 1}")
        val_elbo = None
        rec, kl = train_rec, train_kl
        if validation:
            val_gen = torch.Generator(device=device).manual_seed(params.seed + 3)
            val_elbo, rec, kl = evaluate(module, validation, val_gen, threads)
            if not math.isfinite(val_elbo):
                raise _NonFinite(f"non-finite validation ELBO in epoch {epoch + 1}")
        report = EpochReport(
            epoch=epoch + 1,
            n_epochs=n_epochs,
            train_elbo=train_elbo,
            validation_elbo=val_elbo,
            reconstruction=rec,
            kl=kl,
            seconds=time.perf_counter() - epoch_start,
        )
        history.append(report)
        if on_epoch is not None:
            on_epoch(report)
        if on_model is not None:
            on_model(epoch + 1, module)
        if params.early_stopping and val_elbo is not None:
            if val_elbo > best_elbo:
                best_elbo, best_epoch = val_elbo, epoch + 1
                best_state = copy.deepcopy(module.state_dict())
            if reference_epoch == 0 or val_elbo > reference_elbo + params.min_improvement * abs(reference_elbo):
                reference_elbo, reference_epoch = val_elbo, epoch + 1
            elif epoch + 1 - reference_epoch >= params.patience:
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    else:
        best_epoch = len(history)
    module.eval()
    return TrainingResult(
        module=module,
        history=history,
        train_indices=train_idx,
        validation_indices=val_idx,
        best_epoch=best_epoch,
        lr=lr,
        seconds=time.perf_counter() - start_time,
    )

