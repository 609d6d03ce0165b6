"""Two-group DE at atlas scale: Wilcoxon rank-sum, scVI Bayesian DE, and scanpy's Wilcoxon for reference.

    python benchmarks/de_scale.py [--atlas pancreas-wide-100k kang-1m] [--atlas-dir /tmp/atlases]
                                  [--cache-dir /tmp/atlas_de_scale] [--skip-scanpy]

Atlases come from ``benchmarks/make_atlas.py``. For each one, a model is trained once on a subset
of its cells (``--train-cells``, ``--epochs``; the DE's cost depends on neither) with the batch key
and cached under ``--cache-dir``: not timed. Then, per pair of groups (two cell types with thousands
of cells each, two large arbitrary groups as a lasso on the whole atlas gives, and one cell type
against the rest of the atlas), it times

- ``engine.analysis.wilcoxon.wilcoxon`` over every gene (what the DE page runs beside scVI's DE);
- ``engine.analysis.de.differential_expression`` with the page's defaults (``max_cells_per_group``
  500: posterior draws come from at most 500 cells per group, raw statistics from every cell),
  without and with batch correction;
- scanpy's ``normalize_total`` + ``log1p`` + ``rank_genes_groups(method="wilcoxon")`` on the same
  two groups in the same process (after a small warm-up call, so numba's compilation is not timed).

Prints a markdown table: dataset, cells, genes, group sizes, step, seconds, peak RSS of the process
during the step (VmHWM after resetting it through /proc/self/clear_refs, so it includes the atlas
held in memory; without the reset, the process's peak so far), and the load average when each step
ended.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from engine.analysis.de import differential_expression, groups_from_obs
from engine.analysis.wilcoxon import wilcoxon
from engine.model.params import RunParams
from engine.runs.fit import fit

# Two cell types per atlas, with thousands of cells each.
CELL_TYPES = {
    "pancreas-wide-100k": ("alpha", "delta"),
    "kang-1m": ("Dendritic cells", "Megakaryocytes"),
}
# One cell type against every other cell (the DE page's "rest"): every cell of the atlas is ranked.
AGAINST_REST = {
    "pancreas-wide-100k": "alpha",
    "kang-1m": "B cells",
}
# Two large selections (fractions of the atlas), as a lasso over a big region gives.
LARGE_GROUPS = {
    "pancreas-wide-100k": (0.3, 0.6),
    "kang-1m": (0.1, 0.2),
}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _timed(work: Callable[[], object]) -> tuple[float, float, object]:
    """Seconds and peak resident memory (GiB) of one call."""
    gc.collect()
    _reset_peak()
    start = time.perf_counter()
    value = work()
    seconds = time.perf_counter() - start
    return seconds, _status_kib("VmHWM") / 2**20, value


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _large_groups(n_cells: int, fractions: tuple[float, float], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n_cells)
    n1, n2 = (int(f * n_cells) for f in fractions)
    mask1 = np.zeros(n_cells, dtype=bool)
    mask2 = np.zeros(n_cells, dtype=bool)
    mask1[order[:n1]] = True
    mask2[order[n1 : n1 + n2]] = True
    return mask1, mask2


def _scanpy_wilcoxon(adata: ad.AnnData, mask1: np.ndarray, mask2: np.ndarray) -> pd.DataFrame:
    import scanpy as sc

    keep = mask1 | mask2
    sub = ad.AnnData(adata.X[keep].astype(np.float32), var=pd.DataFrame(index=adata.var_names))
    sub.obs["group"] = pd.Categorical(np.where(mask1[keep], "g1", "g2"))
    sc.pp.normalize_total(sub, target_sum=1e4)
    sc.pp.log1p(sub)
    sc.tl.rank_genes_groups(sub, "group", groups=["g1"], reference="g2", method="wilcoxon", tie_correct=True)
    return sc.get.rank_genes_groups_df(sub, group="g1")


def _train(adata: ad.AnnData, args: argparse.Namespace) -> object:
    cells = np.sort(np.random.default_rng(0).choice(adata.n_obs, size=min(args.train_cells, adata.n_obs),
                                                     replace=False))
    subset = adata[cells].copy()
    params = RunParams(max_epochs=args.epochs, seed=0)
    return fit(subset, params=params, batch_key="batch", cache_dir=args.cache_dir, device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atlas", nargs="+", default=list(CELL_TYPES))
    parser.add_argument("--atlas-dir", type=Path, default=Path("/tmp/atlases"))
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/atlas_de_scale"))
    parser.add_argument("--train-cells", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--skip-scanpy", action="store_true")
    parser.add_argument("--skip-batch-correction", action="store_true")
    args = parser.parse_args()

    rows = []

    def report(name: str, cells: int, genes: int, sizes: str, step: str, seconds: float, peak: float) -> None:
        rows.append((name, cells, genes, sizes, step, seconds, peak, _load()))
        print(f"  {name} {sizes} {step}: {seconds:.2f} s, peak RSS {peak:.2f} GiB, load {_load()}", flush=True)

    if not args.skip_scanpy:  # numba compiles scanpy's ranking once per process: not timed
        tiny = ad.AnnData(np.random.default_rng(0).poisson(1.0, (60, 20)).astype(np.float32))
        _scanpy_wilcoxon(tiny, np.arange(60) < 30, np.arange(60) >= 30)

    for name in args.atlas:
        start = time.perf_counter()
        adata = ad.read_h5ad(args.atlas_dir / f"{name}.h5ad")
        print(f"{name}: {adata.n_obs:,} cells x {adata.n_vars:,} genes read in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        start = time.perf_counter()
        run = _train(adata, args)
        print(f"  model trained or loaded in {time.perf_counter() - start:.1f} s ({run.run_id})", flush=True)
        type1, type2 = CELL_TYPES[name]
        pairs = {
            f"{type1} vs {type2}": groups_from_obs(adata, groupby="cell_type", group1=type1, group2=type2),
            "random": _large_groups(adata.n_obs, LARGE_GROUPS[name]),
            f"{AGAINST_REST[name]} vs rest": groups_from_obs(adata, groupby="cell_type",
                                                             group1=AGAINST_REST[name], group2="rest"),
        }
        for label, (mask1, mask2) in pairs.items():
            sizes = f"{label}: {int(mask1.sum()):,} vs {int(mask2.sum()):,}"
            shape = (name, adata.n_obs, adata.n_vars, sizes)
            seconds, peak, _ = _timed(partial(wilcoxon, adata, group1=mask1, group2=mask2))
            report(*shape, "Wilcoxon (engine)", seconds, peak)
            de = partial(differential_expression, run, adata, group1=mask1, group2=mask2, mode="change")
            seconds, peak, _ = _timed(de)
            report(*shape, "scVI DE (change, 500 cells/group)", seconds, peak)
            if not args.skip_batch_correction:
                seconds, peak, _ = _timed(partial(de, batch_correction=True))
                report(*shape, "scVI DE (change, batch-corrected, 20 batches)", seconds, peak)
            if not args.skip_scanpy:
                seconds, peak, _ = _timed(partial(_scanpy_wilcoxon, adata, mask1, mask2))
                report(*shape, "scanpy rank_genes_groups wilcoxon (+normalise, log1p)", seconds, peak)
        del adata, run
        gc.collect()

    print()
    print("| dataset | cells | genes | groups (cells) | step | seconds | peak RSS (GiB) | load avg (1/5/15 min) |")
    print("|---|---:|---:|---|---|---:|---:|---|")
    for name, cells, genes, sizes, step, seconds, peak, load in rows:
        print(f"| {name} | {cells:,} | {genes:,} | {sizes} | {step} | {seconds:.2f} | {peak:.2f} | {load} |")


if __name__ == "__main__":
    main()
