"""How long will training take here? A speed calibration of this machine, measured, not guessed.

:func:`calibrate` trains the real model (the same :func:`engine.model.training.train` as every run)
for a few epochs on synthetic counts of two widths, and fits the seconds one cell costs per epoch as
``fixed + per_gene * n_genes``; :meth:`SpeedCalibration.expected` turns that into the expected
duration of a run with given settings. Training cost is linear in cells and, to first order, in
genes (the decoder's output layer and the likelihood dominate a step), so two widths pin it down.
The estimate is an upper bound when early stopping is on: a run may stop sooner.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from engine.model.params import RunParams

__all__ = ["Estimate", "SpeedCalibration", "calibrate"]

# Synthetic data the calibration trains on: enough cells for several minibatches per epoch.
_CELLS = 1536
_GENE_WIDTHS = (400, 1600)
_EPOCHS = 3  # the first epoch is discarded (allocations, kernel loading)


@dataclass(frozen=True)
class Estimate:
    """Expected epochs and wall seconds of one training run."""

    epochs: int
    seconds: float
    early_stopping: bool  # the run may end sooner


@dataclass(frozen=True)
class SpeedCalibration:
    """Seconds one cell costs per training epoch on this machine: ``fixed + per_gene * n_genes``."""

    fixed: float
    per_gene: float
    threads: int
    measured_in: float  # seconds the calibration itself took

    def epoch_seconds(self, *, n_cells: int, n_genes: int) -> float:
        """Expected seconds of one epoch (validation included) over ``n_cells`` cells."""
        return n_cells * max(self.fixed + self.per_gene * n_genes, 0.0)

    def expected(self, *, n_cells: int, n_genes: int, params: RunParams) -> Estimate:
        """Expected duration of training ``n_cells`` x ``n_genes`` with ``params``.

        With early stopping on, the run takes at most that long.
        """
        epochs = params.resolved_max_epochs(n_cells)
        seconds = epochs * self.epoch_seconds(n_cells=n_cells, n_genes=n_genes)
        return Estimate(epochs=epochs, seconds=seconds, early_stopping=params.early_stopping)


def calibrate(*, seed: int = 0) -> SpeedCalibration:
    """Measure this machine's training speed (about 1-3 s on 2 cores); safe in a background thread."""
    import torch

    from engine.model.training import train

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    per_cell = []
    for n_genes in _GENE_WIDTHS:
        counts = _synthetic_counts(rng, _CELLS, n_genes)
        params = RunParams(max_epochs=_EPOCHS, early_stopping=False, seed=seed)
        result = train(counts, np.zeros(_CELLS, dtype=np.int64), 1, params, device="cpu")
        epoch = float(np.median([r.seconds for r in result.history[1:]]))
        per_cell.append(epoch / _CELLS)
    (g1, g2), (c1, c2) = _GENE_WIDTHS, per_cell
    per_gene = max((c2 - c1) / (g2 - g1), 0.0)
    return SpeedCalibration(
        fixed=c1 - per_gene * g1, per_gene=per_gene, threads=torch.get_num_threads(),
        measured_in=time.perf_counter() - start,
    )


def _synthetic_counts(rng: np.random.Generator, n_cells: int, n_genes: int) -> sp.csr_matrix:
    """Counts as sparse as single-cell data (about 10% non-zero), from a gamma-Poisson mixture."""
    means = rng.gamma(0.3, 1.0, size=n_genes)
    library = rng.lognormal(math.log(1.0), 0.5, size=(n_cells, 1))
    counts = rng.poisson(rng.gamma(2.0, means * library / 2.0))
    return sp.csr_matrix(counts.astype(np.float32))
