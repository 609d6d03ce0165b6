"""The k-nearest-neighbour graph of a representation, written the way scanpy writes it.

:func:`neighbors` fills ``obsp["distances"]``, ``obsp["connectivities"]`` and ``uns["neighbors"]``
exactly as ``scanpy.pp.neighbors(method="umap")`` would, so scanpy's own tools (``sc.tl.umap``,
``sc.tl.leiden``, ``sc.tl.paga``) read them unchanged. It differs from scanpy only in *how* it gets
there, because the dashboard needs its first view within seconds of server start:

- up to :data:`APPROXIMATE_ABOVE` cells the search is exact (a KD-tree on low-dimensional latents,
  brute force above that) instead of pynndescent's approximate search, whose numba kernels take
  20-30 s to compile on first use in a process; on a 10-dimensional latent of 12k cells the exact
  search takes well under a second. Above it the exact search grows faster than the cells (3.6 s
  at 100k, 125 s at 300k, 266 s at 1M on 2 cores) and pynndescent (what scanpy uses) takes over:
  9.6 s at 300k and 31 s at 1M once compiled, recall@15 0.99 against the exact search
  (``benchmarks/neighbors_scale.py``, BENCHMARKS.md "Neighbours at atlas scale");
- the fuzzy connectivities use a vectorised NumPy port of umap-learn's ``smooth_knn_dist`` and
  ``compute_membership_strengths`` (McInnes et al. 2018), for the same reason (importing
  ``umap`` compiles pynndescent's kernels); the result matches ``umap.umap_.fuzzy_simplicial_set``
  to floating-point precision (tested).
"""

from __future__ import annotations

import logging
from typing import Literal, get_args

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from engine.logs import timed

logger = logging.getLogger(__name__)

KnnMethod = Literal["auto", "exact", "approximate"]
# "auto" searches approximately above this many cells: where the exact search costs more than
# pynndescent's first-use compilation (measured: 100k exact 3.6 s; 300k exact 125 s vs
# pynndescent 34 s compiling included).
APPROXIMATE_ABOVE = 150_000

# Constants of umap-learn's smooth_knn_dist, kept identical so the graphs agree.
_SMOOTH_K_TOLERANCE = 1e-5
_MIN_K_DIST_SCALE = 1e-3
_N_BISECTION_STEPS = 64

# Above this many dimensions a KD-tree visits most leaves and brute force is faster (measured on
# 12k cells: 10 dims 0.4 s vs 0.5 s, 50 dims 3.9 s vs 0.7 s).
# Neighbours per cell of the kNN graph (scanpy's and umap-learn's default).
DEFAULT_N_NEIGHBORS = 15
_KDTREE_MAX_DIM = 16


def representation(adata: AnnData, use_rep: str) -> np.ndarray:
    """``adata.obsm[use_rep]`` as a dense float64 array, or an actionable error when it is missing."""
    if use_rep not in adata.obsm:
        available = ", ".join(sorted(adata.obsm.keys())) or "none"
        hint = (
            "train a model (or pick a run) first"
            if use_rep == "X_scVI"
            else f"compute it first (obsm keys present: {available})"
        )
        raise ValueError(f"obsm['{use_rep}'] not found: {hint}")
    x = np.asarray(adata.obsm[use_rep], dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != adata.n_obs:
        raise ValueError(
            f"obsm['{use_rep}'] has shape {x.shape}; expected (n_obs={adata.n_obs}, n_dims)"
        )
    if not np.isfinite(x).all():
        raise ValueError(f"obsm['{use_rep}'] contains NaN or infinite values: recompute it")
    return x


def exact_knn(x: np.ndarray, *, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k nearest neighbours of every row of ``x`` among the rows of ``x``.

    Each cell counts as its own first neighbour (distance 0), as in scanpy and umap-learn.

    Returns
    -------
    indices, distances
        Arrays of shape ``(n, n_neighbors)``, sorted by increasing distance.
    """
    n = x.shape[0]
    if not 2 <= n_neighbors <= n:
        raise ValueError(f"n_neighbors={n_neighbors} must be between 2 and the number of cells ({n})")
    x = np.ascontiguousarray(x, dtype=np.float64)
    if x.shape[1] <= _KDTREE_MAX_DIM:
        from scipy.spatial import cKDTree

        distances, indices = cKDTree(x).query(x, k=n_neighbors, workers=-1)
    else:
        from sklearn.neighbors import NearestNeighbors

        search = NearestNeighbors(n_neighbors=n_neighbors, algorithm="brute").fit(x)
        distances, indices = search.kneighbors(x)
    indices = np.asarray(indices, dtype=np.int64)
    distances = np.asarray(distances, dtype=np.float64)
    _put_self_first(indices, distances)
    return indices, distances


def approximate_knn(x: np.ndarray, *, n_neighbors: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Approximate Euclidean k nearest neighbours: pynndescent's NN-descent, as scanpy uses.

    Same layout as :func:`exact_knn` (self first, sorted by distance).
    Recall@15 against the exact search: 0.995 at 100k cells and 0.991 at 1M (10-dim latents).
    The first call in a process compiles pynndescent's numba kernels (20-30 s on 2 cores).
    """
    n = x.shape[0]
    if not 2 <= n_neighbors <= n:
        raise ValueError(f"n_neighbors={n_neighbors} must be between 2 and the number of cells ({n})")
    from pynndescent import NNDescent

    index = NNDescent(
        np.ascontiguousarray(x, dtype=np.float32), n_neighbors=n_neighbors, metric="euclidean",
        random_state=seed, n_jobs=-1, low_memory=True,
    )
    indices, distances = index.neighbor_graph
    indices = np.asarray(indices, dtype=np.int64)
    distances = np.asarray(distances, dtype=np.float64)
    # NN-descent can leave -1 (no neighbour found) on isolated points: fill with the cell itself,
    # which the fuzzy graph ignores (self-edges get weight 0).
    missing = indices < 0
    if missing.any():
        rows = np.nonzero(missing)[0]
        indices[missing] = rows
        distances[missing] = 0.0
    order = np.argsort(distances, axis=1, kind="stable")
    indices = np.take_along_axis(indices, order, axis=1)
    distances = np.take_along_axis(distances, order, axis=1)
    _put_self_first(indices, distances)
    return indices, distances


def knn(
    x: np.ndarray, *, n_neighbors: int, method: KnnMethod = "auto", seed: int = 0
) -> tuple[np.ndarray, np.ndarray, str]:
    """The k nearest neighbours by ``method``: ``indices, distances`` and the search used.

    The search used is "exact" or "pynndescent".
    ``"auto"`` is exact up to :data:`APPROXIMATE_ABOVE` cells and approximate above.
    """
    if method not in get_args(KnnMethod):
        raise ValueError(f"method must be one of {', '.join(map(repr, get_args(KnnMethod)))}, got {method!r}")
    approximate = method == "approximate" or (method == "auto" and x.shape[0] > APPROXIMATE_ABOVE)
    if approximate:
        logger.info("approximate kNN (pynndescent) of %d cells", x.shape[0])
        return (*approximate_knn(x, n_neighbors=n_neighbors, seed=seed), "pynndescent")
    return (*exact_knn(x, n_neighbors=n_neighbors), "exact")


def _put_self_first(indices: np.ndarray, distances: np.ndarray) -> None:
    """Make each cell its own first neighbour even when duplicates of it tie at distance 0."""
    rows = np.arange(indices.shape[0])
    self_pos = np.argmax(indices == rows[:, None], axis=1)
    has_self = indices[rows, self_pos] == rows
    swap = has_self & (self_pos > 0)
    r, p = rows[swap], self_pos[swap]
    indices[r, p], indices[r, 0] = indices[r, 0], r
    # A row whose own index fell off the list (more than k exact duplicates): put it first.
    missing = ~has_self
    indices[missing, 0] = rows[missing]
    distances[:, 0] = 0.0


def smooth_knn_dist(
    distances: np.ndarray, k: float, *, local_connectivity: float = 1.0, bandwidth: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """umap-learn's ``smooth_knn_dist``, bisecting all cells at once instead of one by one.

    For each cell finds ``rho`` (distance to the nearest non-identical neighbour) and ``sigma`` such
    that ``sum_j exp(-(d_j - rho) / sigma) = log2(k) * bandwidth`` over its neighbours but itself.

    Returns
    -------
    sigmas, rhos
    """
    n, n_cols = distances.shape
    target = np.log2(k) * bandwidth

    rhos = np.zeros(n)
    index = int(np.floor(local_connectivity))
    interpolation = local_connectivity - index
    nonzero = distances > 0.0
    n_nonzero = nonzero.sum(axis=1)
    # Non-zero distances packed to the left of each row (rows are sorted, so a stable sort on
    # "is zero" keeps their order).
    packed = np.take_along_axis(distances, np.argsort(~nonzero, axis=1, kind="stable"), axis=1)
    enough = n_nonzero >= local_connectivity
    if index > 0:
        rhos[enough] = packed[enough, index - 1]
        if interpolation > 1e-5:
            rhos[enough] += interpolation * (packed[enough, index] - packed[enough, index - 1])
    else:
        rhos[enough] = interpolation * packed[enough, 0]
    few = ~enough & (n_nonzero > 0)
    rhos[few] = packed[few].max(axis=1, where=packed[few] > 0, initial=0.0)

    lo = np.zeros(n)
    hi = np.full(n, np.inf)
    mid = np.ones(n)
    active = np.ones(n, dtype=bool)
    shifted = distances[:, 1:] - rhos[:, None]
    for _ in range(_N_BISECTION_STEPS):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        d = shifted[rows]
        m = mid[rows]
        psum = np.where(d > 0, np.exp(-np.maximum(d, 0.0) / m[:, None]), 1.0).sum(axis=1)
        converged = np.abs(psum - target) < _SMOOTH_K_TOLERANCE
        too_big = psum > target
        # umap stops a cell's search as soon as it converges, before moving mid again.
        update = rows[~converged]
        big = too_big[~converged]
        hi[update[big]] = mid[update[big]]
        lo[update[~big]] = mid[update[~big]]
        finite_hi = np.isfinite(hi[update])
        mid[update] = np.where(finite_hi, (lo[update] + hi[update]) / 2.0, mid[update] * 2.0)
        active[rows[converged]] = False

    sigmas = mid
    mean_row = distances.mean(axis=1)
    floor = np.where(rhos > 0.0, _MIN_K_DIST_SCALE * mean_row, _MIN_K_DIST_SCALE * distances.mean())
    sigmas = np.maximum(sigmas, floor)
    return sigmas, rhos


def fuzzy_connectivities(indices: np.ndarray, distances: np.ndarray) -> sp.csr_matrix:
    """UMAP's fuzzy simplicial set (fuzzy union of the directed kNN memberships), as CSR.

    Same result as ``umap.umap_.fuzzy_simplicial_set(..., set_op_mix_ratio=1,
    local_connectivity=1)`` given the same neighbours, which is what scanpy stores as
    ``obsp["connectivities"]``: symmetric, values in (0, 1], zero diagonal.
    """
    n, k = indices.shape
    sigmas, rhos = smooth_knn_dist(distances, float(k))
    shifted = distances - rhos[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(
            (shifted <= 0.0) | (sigmas[:, None] == 0.0), 1.0, np.exp(-shifted / sigmas[:, None])
        )
    rows = np.repeat(np.arange(n), k)
    values[indices == np.arange(n)[:, None]] = 0.0
    directed = sp.csr_matrix((values.ravel(), (rows, indices.ravel())), shape=(n, n))
    directed.eliminate_zeros()
    transpose = directed.T.tocsr()
    # Probabilistic t-conorm: P(edge i->j or j->i) = a + b - a*b.
    union = directed + transpose - directed.multiply(transpose)
    union = sp.csr_matrix(union)
    union.eliminate_zeros()
    union.sort_indices()
    return union


def knn_distance_matrix(indices: np.ndarray, distances: np.ndarray) -> sp.csr_matrix:
    """KNN distances as CSR without the self-edges, as scanpy stores ``obsp["distances"]``."""
    n, k = indices.shape
    rows = np.repeat(np.arange(n), k - 1)
    matrix = sp.csr_matrix(
        (distances[:, 1:].ravel(), (rows, indices[:, 1:].ravel())), shape=(n, n)
    )
    matrix.sort_indices()
    return matrix


@timed
def neighbors(
    adata: AnnData, *, use_rep: str = "X_scVI", n_neighbors: int = DEFAULT_N_NEIGHBORS, seed: int = 0,
    method: KnnMethod = "auto",
) -> None:
    """Compute the kNN graph of ``adata.obsm[use_rep]`` (Euclidean) in place.

    Parameters
    ----------
    adata
        Cells x genes; ``obsm[use_rep]`` holds the representation (the scVI latent by default).
    use_rep
        Key in ``obsm``.
    n_neighbors
        Neighbourhood size, counting the cell itself (scanpy's convention).
    seed
        Recorded in ``uns["neighbors"]["params"]["random_state"]`` as scanpy does; seeds the
        approximate search (the exact one is deterministic).
    method
        ``"exact"``, ``"approximate"`` (pynndescent) or ``"auto"``: exact up to
        :data:`APPROXIMATE_ABOVE` cells. The search used is recorded as ``params["knn_search"]``.

    Writes
    ------
    ``obsp["distances"]``
        CSR, ``n_neighbors - 1`` Euclidean distances per row (self excluded).
    ``obsp["connectivities"]``
        CSR, UMAP fuzzy-union weights: symmetric, in (0, 1].
    ``uns["neighbors"]``
        ``{"connectivities_key", "distances_key", "params": {n_neighbors, method, random_state,
        metric, use_rep, knn_search}}``, the layout scanpy writes and reads.
    """
    x = representation(adata, use_rep)
    indices, distances, search = knn(x, n_neighbors=n_neighbors, method=method, seed=seed)
    adata.obsp["distances"] = knn_distance_matrix(indices, distances)
    adata.obsp["connectivities"] = fuzzy_connectivities(indices, distances)
    adata.uns["neighbors"] = {
        "connectivities_key": "connectivities",
        "distances_key": "distances",
        "params": {
            "n_neighbors": int(n_neighbors),
            "method": "umap",
            "random_state": int(seed),
            "metric": "euclidean",
            "use_rep": use_rep,
            "knn_search": search,
        },
    }
