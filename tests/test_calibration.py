"""The training-time estimate: measured on this machine, then scaled by cells, genes and epochs."""

from __future__ import annotations

import pytest

from engine.model.calibration import SpeedCalibration, calibrate
from engine.model.params import RunParams


def test_estimate_scales_with_cells_genes_and_epochs():
    cal = SpeedCalibration(fixed=1e-5, per_gene=1e-7, threads=2, measured_in=1.0)
    per_cell = 1e-5 + 1e-7 * 1000
    assert cal.epoch_seconds(n_cells=10_000, n_genes=1000) == pytest.approx(10_000 * per_cell)
    estimate = cal.expected(n_cells=10_000, n_genes=1000, params=RunParams(max_epochs=50))
    assert estimate.epochs == 50 and estimate.early_stopping
    assert estimate.seconds == pytest.approx(50 * 10_000 * per_cell)
    # the automatic epoch rule is the one training uses
    auto = cal.expected(n_cells=10_000, n_genes=1000, params=RunParams(early_stopping=False))
    assert auto.epochs == RunParams().resolved_max_epochs(10_000) and not auto.early_stopping
    # twice the genes cost more, but less than twice (the fixed part)
    wide = cal.epoch_seconds(n_cells=10_000, n_genes=2000)
    assert cal.epoch_seconds(n_cells=10_000, n_genes=1000) < wide < 2 * cal.epoch_seconds(n_cells=10_000, n_genes=1000)


@pytest.mark.slow
def test_calibration_trains_the_real_model_and_gives_a_positive_rate():
    cal = calibrate()
    assert cal.per_gene > 0 and cal.threads >= 1 and cal.measured_in > 0
    assert cal.epoch_seconds(n_cells=12_261, n_genes=1_287) > 0
