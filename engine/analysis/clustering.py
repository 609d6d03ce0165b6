"""Leiden clustering (Traag et al. 2019) of the neighbour graph."""

from __future__ import annotations

import random
import threading
from typing import Literal, get_args

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from engine.logs import timed

Flavor = Literal["igraph", "leidenalg"]

# igraph's Leiden draws from igraph's one process-wide random generator, which can only be swapped,
# not passed: the swap and the clustering happen under this lock, so two sessions clustering at
# once cannot draw from each other's generator (a lock holds no data).
_IGRAPH_RNG_LOCK = threading.Lock()


@timed
def leiden_labels(
    connectivities: sp.spmatrix, *, resolution: float = 1.0, seed: int = 0, flavor: Flavor = "igraph"
) -> np.ndarray:
    """Leiden communities of a symmetric weighted graph, numbered 0, 1, ... by decreasing size.

    ``flavor="igraph"`` (default): igraph's C implementation of Leiden (modularity with a resolution
    parameter) with two refinement iterations, scanpy's ``flavor="igraph"`` defaults: ~0.3 s on 12k
    cells, which lets the resolution slider re-cluster at once. ``flavor="leidenalg"``: the
    leidenalg package (scanpy's older default), run until no move improves the partition, with the
    seed passed to it directly; 5-8 s on 12k cells (BENCHMARKS.md), for a result to publish.
    """
    import igraph as ig

    if resolution <= 0:
        raise ValueError(f"resolution={resolution} must be positive (1.0 is the usual start)")
    if flavor not in get_args(Flavor):
        raise ValueError(f"flavor must be one of {', '.join(map(repr, get_args(Flavor)))}, got {flavor!r}")
    upper = sp.triu(sp.csr_matrix(connectivities), k=1).tocoo()
    graph = ig.Graph(n=connectivities.shape[0])
    # add_edges, not Graph(edges=...): at 1M cells (9.7M edges) 9.8 s against 14.0 s (BENCHMARKS.md)
    graph.add_edges(np.column_stack([upper.row, upper.col]))
    if flavor == "leidenalg":
        import leidenalg

        partition = leidenalg.find_partition(
            graph, leidenalg.RBConfigurationVertexPartition, weights=upper.data,
            resolution_parameter=resolution, n_iterations=-1, seed=seed,
        )
    else:
        with _IGRAPH_RNG_LOCK:
            ig.set_random_number_generator(random.Random(seed))
            try:
                partition = graph.community_leiden(
                    objective_function="modularity", weights=upper.data, resolution=resolution,
                    n_iterations=2,
                )
            finally:
                ig.set_random_number_generator(random)
    membership = np.asarray(partition.membership)
    sizes = np.bincount(membership)
    # Rank communities by size, ties broken by first appearance, so labels are stable.
    order = np.lexsort((np.arange(sizes.size), -sizes))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[membership]


def leiden(adata: AnnData, *, resolution: float = 1.0, seed: int = 0, flavor: Flavor = "igraph") -> None:
    """Leiden clusters of ``obsp["connectivities"]`` into ``obs["leiden"]`` (``flavor``: see :func:`leiden_labels`).

    Writes ``obs["leiden"]`` (categorical, labels "0", "1", ... with "0" the largest cluster) and
    ``uns["leiden"] = {"resolution", "n_clusters", "seed", "flavor"}``.
    """
    if "connectivities" not in adata.obsp:
        raise ValueError(
            "obsp['connectivities'] not found: run neighbors first (engine.analysis.neighbors.neighbors)"
        )
    labels = leiden_labels(adata.obsp["connectivities"], resolution=resolution, seed=seed, flavor=flavor)
    n_clusters = int(labels.max()) + 1
    names = [str(i) for i in range(n_clusters)]
    adata.obs["leiden"] = pd.Categorical.from_codes(labels, categories=names)
    adata.uns["leiden"] = {
        "resolution": float(resolution),
        "n_clusters": n_clusters,
        "seed": int(seed),
        "flavor": flavor,
    }
