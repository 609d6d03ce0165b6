"""Speed of the Differential expression page's re-thresholding (no recomputation).

Trains a quick run on the test fixture (1,145 cells x 1,287 genes: the sample's gene count, which
is what re-thresholding cost depends on), runs one DE, then times what a slider move does:
``DEResult.table(delta=, fdr=)`` alone and with the volcano figure built from it.

    PYTHONPATH=. python benchmarks/de_page_speed.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch

from dashboard.de_figures import volcano
from engine.analysis.de import differential_expression
from engine.model.params import RunParams
from engine.runs.fit import fit

REPO = Path(__file__).resolve().parents[1]


def _times(fn, repeats: int = 20) -> tuple[float, float]:
    seconds = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds) * 1e3, max(seconds) * 1e3


def main() -> None:
    torch.set_num_threads(2)
    adata = ad.read_h5ad(REPO / "tests" / "data" / "kang_small.h5ad")
    adata.layers["counts"] = adata.X.copy()
    with tempfile.TemporaryDirectory() as cache:
        run = fit(adata, params=RunParams(max_epochs=5, seed=0), cache_dir=cache)
    group1 = (adata.obs["cell_type"] == "B cells").to_numpy()
    group2 = (adata.obs["cell_type"] == "CD14+ Monocytes").to_numpy()
    t0 = time.perf_counter()
    result = differential_expression(run, adata, group1=group1, group2=group2)
    de_seconds = time.perf_counter() - t0
    deltas = np.linspace(0.0, 2.0, 20)
    fdrs = np.linspace(0.01, 0.3, 20)
    table_ms = _times(lambda i: result.table(delta=deltas[i], fdr=fdrs[i]))
    panel_ms = _times(lambda i: volcano(result.table(delta=deltas[i], fdr=fdrs[i]), delta=deltas[i]))
    print(f"genes: {adata.n_vars}, stored LFC quantiles per gene: {result.lfc_sorted.shape[1]}")
    print(f"{'step':<40}{'median ms':>12}{'max ms':>10}")
    print(f"{'DEResult.table(delta, fdr)':<40}{table_ms[0]:>12.1f}{table_ms[1]:>10.1f}")
    print(f"{'table + volcano figure':<40}{panel_ms[0]:>12.1f}{panel_ms[1]:>10.1f}")
    print(f"(one DE, B cells vs CD14+ monocytes, 150 vs 150 cells: {de_seconds:.2f} s)")


if __name__ == "__main__":
    main()
