"""Warm-up for the Train, Explore and DE pages: import and compile what the first run and view need.

The dashboard calls :func:`warm_up` once in a background thread at server start. It loads the
numba likelihood kernel of training (compiled into the on-disk cache the first time ever, ~6 s;
later starts only load it, ~0.8 s) and the numba UMAP kernel (~1.5-2 s, then ~0.5 s), and imports
igraph, scipy.spatial and friends, and the Wilcoxon test's kernels (~0.5 s), so the first training,
the first neighbours + UMAP + Leiden and the first Wilcoxon test a user asks for pay for none of that.
"""

from __future__ import annotations

import time

import numpy as np
from anndata import AnnData


def warm_up(seed: int = 0) -> float:
    """Run the likelihood kernel, neighbours, UMAP, Leiden and a Wilcoxon test on 60 synthetic cells.

    Returns the seconds it took.

    Safe to call from a background thread and more than once; it touches no user data.
    """
    from engine.analysis.clustering import leiden
    from engine.analysis.embedding import umap
    from engine.analysis.neighbors import neighbors

    start = time.perf_counter()
    _likelihood_kernel(seed)
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=5.0, size=(3, 10))
    latent = np.repeat(centres, 20, axis=0) + rng.normal(size=(60, 10))
    adata = AnnData(obsm={"X_scVI": latent.astype(np.float32)}, shape=(60, 0))
    neighbors(adata, use_rep="X_scVI", n_neighbors=10, seed=seed)
    umap(adata, n_epochs=5, seed=seed)
    leiden(adata, seed=seed)
    _wilcoxon(rng)
    return time.perf_counter() - start


def _wilcoxon(rng: np.random.Generator) -> None:
    """A Wilcoxon test of two groups of 30 cells over 20 genes (loads engine.analysis._kernels)."""
    import scipy.sparse as sp

    from engine.analysis.wilcoxon import wilcoxon

    counts = sp.csr_matrix(rng.poisson(1.0, size=(60, 20)).astype(np.float32))
    first = np.arange(60) < 30
    wilcoxon(AnnData(X=counts), group1=first, group2=~first)


def _likelihood_kernel(seed: int) -> None:
    """A ZINB and an NB value-and-gradient on a few cells (compiles engine.model.nb_kernel), then an Adam step."""
    import torch

    from engine.model.likelihoods import sparse_nb_log_likelihood

    gen = torch.Generator().manual_seed(seed)
    n, genes = 6, 20
    counts = torch.poisson(torch.full((n, genes), 2.0), generator=gen)
    rows, cols = counts.nonzero(as_tuple=True)
    flat = rows * genes + cols
    for zi in (torch.zeros(n, genes, requires_grad=True), None):
        logits = torch.zeros(n, genes, requires_grad=True)
        theta = torch.ones(genes, requires_grad=True)
        library_log = counts.sum(1).log()
        value = sparse_nb_log_likelihood(logits, library_log, theta, zi, flat, rows, cols, counts[rows, cols])
        value.sum().backward()
    # torch imports torch._dynamo (1.5 s) when the first optimizer is made: at warm-up, not in the first run
    torch.optim.Adam([theta], lr=1e-3).step()
