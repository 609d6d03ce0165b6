"""Exact vs approximate kNN at atlas scale: seconds and recall@15 (issue 15, "measure and pick").

Usage (an atlas from ``benchmarks/make_atlas.py``; from the repository root, project venv)::

    python benchmarks/neighbors_scale.py /tmp/atlases/kang-100k.h5ad
    python benchmarks/neighbors_scale.py /tmp/atlases/kang-100k.h5ad --cells 30000 --dims 10

The representation is a stand-in for the scVI latent: the first ``--dims`` (default 10, the
latent's default size) principal components of the log-normalised counts
(:func:`engine.analysis.embedding.pca_uncorrected`), so no model has to be trained first.
Compared on it, 15 neighbours each cell itself included:

- ``exact``: :func:`engine.analysis.neighbors.exact_knn` (what the dashboard uses today);
- ``pynndescent``: ``NNDescent(x, n_neighbors=15, random_state=0)`` then its ``neighbor_graph``
  (what scanpy uses), timed twice in one process: the first call includes numba compilation.

Recall@15 is the mean share of each cell's exact neighbours that the approximate search found.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over rows of |found_i ∩ truth_i| / k."""
    k = truth.shape[1]
    hits = sum(len(np.intersect1d(a, b, assume_unique=False)) for a, b in zip(found, truth, strict=True))
    return hits / (len(truth) * k)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("atlas", type=Path)
    parser.add_argument("--cells", type=int, default=None, help="use the first N cells (default: all)")
    parser.add_argument("--dims", type=int, default=10)
    args = parser.parse_args()

    import anndata as ad

    from engine.analysis.embedding import pca_uncorrected
    from engine.analysis.neighbors import exact_knn

    adata = ad.read_h5ad(args.atlas)
    if args.cells:
        adata = adata[: args.cells].copy()
    adata.layers["counts"] = adata.X
    start = time.perf_counter()
    pca_uncorrected(adata, layer="counts", n_comps=args.dims, seed=0)
    x = np.ascontiguousarray(adata.obsm["X_pca"], dtype=np.float32)
    print(f"{adata.n_obs:,} cells, PCA to {args.dims} dims in {time.perf_counter() - start:.1f} s", flush=True)

    rows = []
    start = time.perf_counter()
    truth, _ = exact_knn(x.astype(np.float64), n_neighbors=15)
    rows.append(("exact (engine)", time.perf_counter() - start, 1.0))
    from pynndescent import NNDescent

    for label in ("pynndescent, first call (compiles)", "pynndescent, second call"):
        start = time.perf_counter()
        index = NNDescent(x, n_neighbors=15, random_state=0, n_jobs=-1)
        found, _ = index.neighbor_graph
        rows.append((label, time.perf_counter() - start, recall(found, truth)))
    print("| search | seconds | recall@15 |")
    print("|---|---|---|")
    for label, seconds, r in rows:
        print(f"| {label} | {seconds:.1f} | {r:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
