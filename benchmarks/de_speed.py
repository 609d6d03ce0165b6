"""Speed of differential expression on the 12k-cell sample: one DE, re-thresholding, Wilcoxon.

    python benchmarks/de_speed.py [--threads 1 2] [--epochs 20] [--cache-dir /tmp/atlas_de_bench]

The model is trained once (``--epochs``; the DE's cost does not depend on it) and cached under
``--cache-dir``, so later runs time the DE alone. Prints one table row per measured step and
torch thread count (on a busy machine two threads can be slower than one).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch

from engine.analysis.de import differential_expression, groups_from_obs
from engine.analysis.wilcoxon import concordance, wilcoxon
from engine.model.params import RunParams
from engine.runs.fit import fit

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "kang_pbmc_ctrl.h5ad"


def _best_of(repeats: int, work) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = work()
        best = min(best, time.perf_counter() - start)
    return best, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/atlas_de_bench"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    adata = ad.read_h5ad(SAMPLE)
    adata.layers["counts"] = adata.X.copy()
    # Training is not what is timed here; one thread avoids oversubscription on a busy machine.
    torch.set_num_threads(1)
    start = time.perf_counter()
    run = fit(adata, params=RunParams(max_epochs=args.epochs, seed=0), cache_dir=args.cache_dir)
    fit_s = time.perf_counter() - start

    rows: list[tuple[str, float, str]] = [(f"train or load run ({args.epochs} epochs)", fit_s, run.run_id)]
    b_cells, rest = groups_from_obs(adata, groupby="cell_type", group1="B cells", group2="rest")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for mode in ("change", "vanilla"):
            seconds, result = _best_of(
                args.repeats,
                lambda mode=mode: differential_expression(run, adata, group1=b_cells, group2=rest, mode=mode),
            )
            n_de = int(result.table()["is_de_fdr"].sum())
            rows.append((f"DE B cells vs rest, {mode}, {threads} thread(s)", seconds, f"{n_de} DE at FDR 0.05"))

    result = differential_expression(run, adata, group1=b_cells, group2=rest)
    deltas = np.linspace(0.0, 2.0, 21)
    start = time.perf_counter()
    for delta in deltas:
        result.table(delta=float(delta), fdr=0.1)
    per_table = (time.perf_counter() - start) / len(deltas)
    rows.append(("re-threshold: table(delta, fdr)", per_table, f"mean of {len(deltas)} deltas"))
    rows.append(("stored LFC order statistics", 0.0, f"{result.lfc_sorted.nbytes / 2**20:.1f} MiB"))

    seconds, reference = _best_of(args.repeats, lambda: wilcoxon(adata, group1=b_cells, group2=rest))
    agreement = concordance(result.table(), reference, top_n=50)
    rows.append(("Wilcoxon rank-sum, all genes", seconds,
                 f"spearman {agreement.spearman:.2f}, top-50 overlap {agreement.overlap}"))

    print(f"{adata.n_obs} cells x {adata.n_vars} genes, {int(b_cells.sum())} B cells vs {int(rest.sum())}, "
          f"best of {args.repeats}")
    print(f"| {'step':<42} | {'seconds':>8} | note")
    print(f"|{'-' * 44}|{'-' * 10}|------")
    for name, seconds, note in rows:
        print(f"| {name:<42} | {seconds:8.3f} | {note}")


if __name__ == "__main__":
    main()
