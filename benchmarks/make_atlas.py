"""Deterministic synthetic atlases from the real data in ``../shared/data``: real cells resampled with count noise.

Usage (from the repository root, with the project venv)::

    python benchmarks/make_atlas.py kang-100k                  # -> /tmp/atlases/kang-100k.h5ad
    python benchmarks/make_atlas.py kang-1m --out-dir /tmp/atlases
    python benchmarks/make_atlas.py all                         # the four presets

Presets (issue 15): ``kang-100k``, ``kang-300k``, ``kang-1m`` (the 12,261 x 1,287 Kang PBMC file)
and ``pancreas-wide-100k`` (the 822 x 14,878 Baron mouse pancreas file). Big files belong in
/tmp, never in git.

How a cell is made, and why. Each new cell copies a real cell (drawn with replacement, seeded), so
cell types and their proportions, the genes' correlations and the sparsity are those of real data.
Its counts are Poisson draws around the real cell's counts, scaled by

- a library-size factor per cell (log-normal, sd 0.25): depth varies as between real droplets;
- a batch effect per batch and gene (log-normal, sd 0.3, the same for every cell of the batch):
  the technical shift that batch correction must remove, while cell types stay put;

so no two cells are identical (the kNN graph and UMAP see a real spread, not 80 copies of a
point). Batches are assigned in equal shares at random (``n_batches``, default 24). The output
holds raw integer counts as CSR float32 in ``X``, ``obs`` with ``cell_type``, the source's batch-like
column(s), ``batch`` and ``source_cell`` (the row of the copied cell), and the source's ``var``.
The same preset and seed give the same file, bit for bit in ``X``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CHUNK = 50_000  # cells generated at a time (memory: one chunk's dense Poisson means at most)
LIBRARY_SD = 0.25
BATCH_SD = 0.3


@dataclass(frozen=True)
class Preset:
    source: str
    n_cells: int
    n_batches: int = 24


PRESETS = {
    "kang-100k": Preset("kang_pbmc_ctrl_12261x1287.h5ad", 100_000),
    "kang-300k": Preset("kang_pbmc_ctrl_12261x1287.h5ad", 300_000),
    "kang-1m": Preset("kang_pbmc_ctrl_12261x1287.h5ad", 1_000_000),
    "pancreas-wide-100k": Preset("baron_mouse_pancreas_822x14878.h5ad", 100_000),
}


def make_atlas(source: ad.AnnData, *, n_cells: int, n_batches: int = 24, seed: int = 0) -> ad.AnnData:
    """``n_cells`` cells resampled from ``source`` (raw counts in ``X``) with count noise and batch effects."""
    if n_cells < 1 or n_batches < 1:
        raise ValueError(f"n_cells and n_batches must be positive (got {n_cells}, {n_batches})")
    counts = sp.csr_matrix(source.X, dtype=np.float32)
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, source.n_obs, size=n_cells)
    batch = rng.permutation(np.arange(n_cells) % n_batches)
    library = rng.lognormal(0.0, LIBRARY_SD, size=n_cells).astype(np.float32)
    effect = rng.lognormal(0.0, BATCH_SD, size=(n_batches, source.n_vars)).astype(np.float32)
    chunks = []
    for start in range(0, n_cells, CHUNK):
        rows = slice(start, min(start + CHUNK, n_cells))
        block = counts[picked[rows]]  # CSR rows of the copied cells
        # Poisson around each non-zero count only: a gene a cell did not express stays at 0 (the
        # real cell's zeros are kept, so the sparsity stays real and the files stay small).
        row_of = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
        mean = block.data * library[rows][row_of] * effect[batch[rows][row_of], block.indices]
        block.data = rng.poisson(mean).astype(np.float32)
        block.eliminate_zeros()
        chunks.append(block)
    obs = pd.DataFrame(index=pd.Index([f"cell{i}" for i in range(n_cells)]))
    for column in source.obs.columns:
        values = source.obs[column].to_numpy()[picked]
        if isinstance(source.obs[column].dtype, pd.CategoricalDtype):
            values = pd.Categorical(values, categories=source.obs[column].cat.categories)
        obs[column] = values
    names = [f"batch{b:02d}" for b in range(n_batches)]
    obs["batch"] = pd.Categorical(np.asarray(names)[batch], categories=names)
    obs["source_cell"] = picked
    return ad.AnnData(X=sp.vstack(chunks, format="csr"), obs=obs, var=source.var.copy())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", choices=[*PRESETS, "all"])
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/atlases"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared-data", type=Path, default=SHARED)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    print("| atlas | cells x genes | non-zeros | CSR size | seconds to make | seconds to write | file |")
    print("|---|---|---|---|---|---|---|")
    for name in PRESETS if args.preset == "all" else [args.preset]:
        preset = PRESETS[name]
        source_path = args.shared_data / preset.source
        if not source_path.exists():
            print(f"{source_path} is missing: see ../shared/data/SOURCES.md", file=sys.stderr)
            return 2
        start = time.perf_counter()
        atlas = make_atlas(ad.read_h5ad(source_path), n_cells=preset.n_cells, n_batches=preset.n_batches,
                           seed=args.seed)
        made = time.perf_counter() - start
        out = args.out_dir / f"{name}.h5ad"
        start = time.perf_counter()
        atlas.write_h5ad(out)
        written = time.perf_counter() - start
        x = atlas.X
        csr_bytes = x.data.nbytes + x.indices.nbytes + x.indptr.nbytes
        print(f"| {name} | {atlas.n_obs:,} x {atlas.n_vars:,} | {x.nnz:,} | {csr_bytes / 2**30:.2f} GiB | "
              f"{made:.1f} | {written:.1f} | {out} |", flush=True)
        del atlas, x
    return 0


if __name__ == "__main__":
    sys.exit(main())
