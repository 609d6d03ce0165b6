"""First view of the Explore page: neighbours + UMAP + Leiden in a fresh Python process.

Usage: python benchmarks/first_view.py [--latent PATH.npy]

Runs three fresh processes on the 12,261-cell Kang sample's latent and prints (step, wall s,
CPU s) for each: "cold" (empty numba cache: first start ever), "warm cache" (kernel cached on
disk), and "warm-up first" (engine.warmup.warm_up() ran before, as the dashboard does at start-up;
its own time is reported separately). Without --latent it uses a 10-dimensional PCA of the
log-normalised counts as the latent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere
SAMPLE = REPO / "sample_data" / "kang_pbmc_ctrl.h5ad"

CHILD = r"""
import json, sys, time
t0 = time.perf_counter(); c0 = time.process_time()
steps = []
def mark(name):
    global t0, c0
    steps.append((name, time.perf_counter() - t0, time.process_time() - c0))
    t0 = time.perf_counter(); c0 = time.process_time()
import numpy as np
from anndata import AnnData
from engine.analysis.neighbors import neighbors
from engine.analysis.embedding import umap
from engine.analysis.clustering import leiden
mark("imports (numpy, anndata, engine, numba)")
if sys.argv[2] == "1":
    from engine.warmup import warm_up
    warm_up()
    mark("warm_up() [at server start, background]")
latent = np.load(sys.argv[1])
adata = AnnData(obsm={"X_scVI": latent}, shape=(latent.shape[0], 0))
neighbors(adata)
mark("neighbors (exact kNN + fuzzy graph)")
umap(adata)
mark("umap (first call: kernel compile/load + layout)")
leiden(adata)
mark("leiden (first call, igraph import)")
leiden(adata, resolution=2.0)
mark("leiden again at resolution 2 (slider)")
print(json.dumps(steps))
"""


def pca_latent(path: Path) -> None:
    import anndata as ad
    import numpy as np

    from engine.analysis.embedding import pca_uncorrected

    adata = ad.read_h5ad(SAMPLE)
    np.save(path, pca_uncorrected(adata, layer="X", n_comps=10))


def run_child(latent: Path, cache_dir: Path, warm_up: bool) -> list:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(latent), "1" if warm_up else "0"],
        env=env, cwd=REPO, capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=Path, help="(n_cells, n_dims) .npy; default: PCA-10 stand-in")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        latent = args.latent
        if latent is None:
            latent = Path(tmp) / "latent.npy"
            pca_latent(latent)
        cache = Path(tmp) / "numba_cache"
        scenarios = [
            ("cold (empty numba cache)", False),
            ("warm cache", False),
            ("warm cache, warm_up() first", True),
        ]
        for title, warm in scenarios:
            steps = run_child(latent, cache, warm)
            print(f"\n{title}\n{'step':<48} {'wall s':>7} {'CPU s':>7}")
            for name, wall, cpu in steps:
                print(f"{name:<48} {wall:7.2f} {cpu:7.2f}")
            first_view = [s for s in steps if not s[0].startswith(("warm_up", "leiden again"))]
            print(f"{'FIRST VIEW total':<48} {sum(s[1] for s in first_view):7.2f} "
                  f"{sum(s[2] for s in first_view):7.2f}")


if __name__ == "__main__":
    main()
