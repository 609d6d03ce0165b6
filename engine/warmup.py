"""Warm-up for the Explore page: import and compile everything the first view needs.

The dashboard calls :func:`warm_up` once in a background thread at server start. It loads the
numba UMAP kernel (compiling it into the on-disk cache the first time ever, ~1.5-2 s; later
starts only load it, ~0.5 s) and imports igraph, scipy.spatial and friends, so the first
neighbours + UMAP + Leiden a user asks for pays for none of that.
"""

from __future__ import annotations

import time

import numpy as np
from anndata import AnnData


def warm_up(seed: int = 0) -> float:
    """Run neighbours, UMAP and Leiden on 60 synthetic cells; returns the seconds it took.

    Safe to call from a background thread and more than once; it touches no user data.
    """
    from engine.clustering import leiden
    from engine.embedding import umap
    from engine.neighbors import neighbors

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=5.0, size=(3, 10))
    latent = np.repeat(centres, 20, axis=0) + rng.normal(size=(60, 10))
    adata = AnnData(obsm={"X_scVI": latent.astype(np.float32)}, shape=(60, 0))
    neighbors(adata, use_rep="X_scVI", n_neighbors=10, seed=seed)
    umap(adata, n_epochs=5, seed=seed)
    leiden(adata, seed=seed)
    return time.perf_counter() - start
