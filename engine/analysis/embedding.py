"""Two-dimensional embeddings (UMAP, t-SNE) and the uncorrected PCA for the "before" view.

:func:`umap` lays out the graph written by :func:`engine.analysis.neighbors.neighbors` with UMAP's
stochastic gradient descent (McInnes et al. 2018), re-implemented here as one small numba kernel
with an on-disk cache instead of calling umap-learn, because ``import umap`` alone compiles
pynndescent's kernels for ~15 s and umap-learn's layout kernel for ~10 s more on first use.
The kernel follows umap-learn's ``optimize_layout_euclidean`` step for step (edge sampling by
weight, ``negative_sample_rate`` negative samples, gradient clipping at 4, linearly decaying
learning rate), with a xorshift generator for the negative samples. Up to
``PARALLEL_LAYOUT_ABOVE`` cells it runs on one thread, so a seed gives the same picture every time;
above, on every core, racing on shared vertices as umap-learn's parallel mode does. It starts from the
first two principal components of the representation (Kobak & Linderman 2021) rather than a
spectral layout, whose eigen-solve takes 4-8 s on 12k cells.
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from engine.analysis.neighbors import knn, representation
from engine.logs import timed
from engine.preprocessing.normalize import log_normalized
from engine.threads import available_cores, split_over_threads

_NEGATIVE_SAMPLE_RATE = 5
# t-SNE: openTSNE's iteration counts (early exaggeration, then plain) and threads (this machine's 2 cores).
_TSNE_EXAGGERATED = 250
_TSNE_PLAIN = 500
_TSNE_THREADS = 2
# FFT t-SNE costs O(n) per iteration: 750 iterations took 222 s for 100k cells on 2 busy cores
# (load 4.4), 2.2 ms per cell. Above TSNE_MAX_CELLS (about 7 min) :func:`tsne` refuses and offers
# a subsample of that size instead, to stay within the 10 min a user can be asked to wait.
TSNE_MAX_CELLS = 200_000
_TSNE_SECONDS_PER_CELL = 2.2e-3
# Cells left out of a subsampled t-SNE sit at the mean position of this many nearest subsampled cells.
_TSNE_PLACEMENT_NEIGHBOURS = 5
_SPREAD = 1.0
# The layout's vertices are cut into this many chunks of about equal edge counts, shared out over threads.
_LAYOUT_CHUNKS = 64
# Above this many cells the UMAP layout runs on every core (1M cells on 2 cores: 205 s instead of 523 s).
PARALLEL_LAYOUT_ABOVE = 150_000


def _require_neighbors(adata: AnnData) -> dict:
    if "neighbors" not in adata.uns or "connectivities" not in adata.obsp:
        raise ValueError(
            "no neighbour graph in adata: run neighbors first (engine.analysis.neighbors.neighbors)"
        )
    return adata.uns["neighbors"]


def umap_ab(min_dist: float, spread: float = _SPREAD) -> tuple[float, float]:
    """UMAP's ``a, b``: the curve ``1 / (1 + a d^(2b))`` fitted to the min_dist/spread kernel."""
    from scipy.optimize import curve_fit

    x = np.linspace(0, spread * 3, 300)
    y = np.where(x < min_dist, 1.0, np.exp(-(x - min_dist) / spread))
    (a, b), _ = curve_fit(lambda d, a, b: 1.0 / (1.0 + a * d ** (2 * b)), x, y)
    return float(a), float(b)


def default_umap_epochs(n_cells: int) -> int:
    """Epoch budget: ~1M cell-epochs, between 100 and 500.

    From a PCA start, 100 epochs preserve neighbourhoods as well as umap-learn's 200 (12k-cell
    latent: trustworthiness 0.966 vs 0.967, 15-NN cell-type accuracy 0.918 vs 0.917), and the
    layout's cost grows with cells x epochs.
    """
    return int(np.clip(1_000_000 // max(n_cells, 1), 100, 500))


@numba.njit(cache=True, nogil=True, fastmath=True)
def _clip(value):
    if value > 4.0:
        return np.float32(4.0)
    if value < -4.0:
        return np.float32(-4.0)
    return value


@numba.njit(cache=True, nogil=True)
def _chunk_state(seed, epoch, chunk):
    """A nonzero xorshift state for one chunk of one epoch (splitmix64 of the three numbers)."""
    z = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(epoch) * np.uint64(0xBF58476D1CE4E5B9)
    z = z + np.uint64(chunk) * np.uint64(0x94D049BB133111EB) + np.uint64(0x2545F4914F6CDD1D)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return z if z != np.uint64(0) else np.uint64(1)


@numba.njit(cache=True, nogil=True, fastmath=True)
def _layout_chunks(
    embedding, indptr, tail, epochs_per_sample, next_sample, next_negative, chunk_starts,
    first_chunk, last_chunk, epoch, n_epochs, a, b, negative_rate, seed,
):
    """One epoch of umap-learn's euclidean SGD over the edges of chunks ``first_chunk..last_chunk-1``.

    ``move_other=True``, gamma 1: each sampled edge pulls both its ends together, then pushes its
    head away from ``negative_rate`` random vertices per sample. The edges are the rows
    ``chunk_starts[c]..chunk_starts[c+1]-1`` of a CSR graph (``indptr``/``tail``). Negative samples
    come from a xorshift generator seeded per chunk and epoch (3x cheaper than ``np.random``), so
    chunks run in order give the same layout for a seed, and chunks run side by side on threads
    race on shared vertices the way umap-learn's ``parallel=True`` does.
    """
    n_vertices = embedding.shape[0]
    a = np.float32(a)
    b = np.float32(b)
    alpha = np.float32(1.0 - epoch / n_epochs)
    for chunk in range(first_chunk, last_chunk):
        state = _chunk_state(seed, epoch, chunk)
        for j in range(chunk_starts[chunk], chunk_starts[chunk + 1]):
            for edge in range(indptr[j], indptr[j + 1]):
                if next_sample[edge] > epoch:
                    continue
                k = tail[edge]
                dx = embedding[j, 0] - embedding[k, 0]
                dy = embedding[j, 1] - embedding[k, 1]
                d2 = dx * dx + dy * dy
                coeff = np.float32(0.0)
                if d2 > 0.0:
                    power = d2 ** (b - np.float32(1.0))
                    coeff = np.float32(-2.0) * a * b * power / (a * power * d2 + np.float32(1.0))
                gx = _clip(coeff * dx) * alpha
                gy = _clip(coeff * dy) * alpha
                embedding[j, 0] += gx
                embedding[j, 1] += gy
                embedding[k, 0] -= gx
                embedding[k, 1] -= gy
                next_sample[edge] += epochs_per_sample[edge]

                epochs_per_negative = epochs_per_sample[edge] / negative_rate
                n_negative = int((epoch - next_negative[edge]) / epochs_per_negative)
                for _ in range(n_negative):
                    state ^= state << np.uint64(13)
                    state ^= state >> np.uint64(7)
                    state ^= state << np.uint64(17)
                    k = np.int64(state % np.uint64(n_vertices))
                    dx = embedding[j, 0] - embedding[k, 0]
                    dy = embedding[j, 1] - embedding[k, 1]
                    d2 = dx * dx + dy * dy
                    if d2 > 0.0:
                        coeff = np.float32(2.0) * b / ((np.float32(0.001) + d2) * (a * d2**b + np.float32(1.0)))
                        embedding[j, 0] += _clip(coeff * dx) * alpha
                        embedding[j, 1] += _clip(coeff * dy) * alpha
                next_negative[edge] += n_negative * epochs_per_negative


def pca_start(x: np.ndarray) -> np.ndarray:
    """First two principal components of ``x``, rescaled to [0, 10] as umap-learn does."""
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    start = centred @ vt[:2].T
    # svd's signs are arbitrary: fix them so the picture does not flip between machines.
    start *= np.sign(start[np.abs(start).argmax(axis=0), [0, 1]])
    span = start.max(axis=0) - start.min(axis=0)
    span[span == 0] = 1.0
    return np.ascontiguousarray(10.0 * (start - start.min(axis=0)) / span, dtype=np.float32)


def umap_layout(
    connectivities: sp.spmatrix,
    start: np.ndarray,
    *,
    min_dist: float = 0.5,
    n_epochs: int | None = None,
    seed: int = 0,
    threads: int | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> np.ndarray:
    """Optimise a 2-D UMAP layout of a symmetric fuzzy graph from ``start`` (n x 2); returns a new array.

    ``threads``: how many cores to share the edges over. Default: one up to ``PARALLEL_LAYOUT_ABOVE``
    cells, so that a seed gives the same picture every time; above it all cores this process may
    use, which races on shared vertices as umap-learn's ``parallel=True`` does (the same seed gives
    a picture that differs in detail between runs; the Explore page keeps the one it drew).
    ``on_progress(fraction)`` is called after each tenth of the epochs.
    """
    graph = sp.csr_matrix(connectivities, dtype=np.float64)
    graph.sum_duplicates()
    n = graph.shape[0]
    n_epochs = default_umap_epochs(n) if n_epochs is None else int(n_epochs)
    if n_epochs < 1:
        raise ValueError(f"n_epochs={n_epochs} must be a positive integer")
    weights = graph.data
    top = weights.max() if weights.size else 1.0
    # Edges sampled less than once over the whole run only add noise (umap-learn drops them too).
    keep = weights >= top / n_epochs
    rows = np.repeat(np.arange(n), np.diff(graph.indptr))[keep]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int64)
    tail = graph.indices[keep].astype(np.int64)
    epochs_per_sample = top / weights[keep]
    next_sample = epochs_per_sample.copy()
    next_negative = epochs_per_sample / _NEGATIVE_SAMPLE_RATE
    a, b = umap_ab(min_dist)
    embedding = np.array(start, dtype=np.float32, order="C")
    # Fixed chunks of about equal edge counts, each with its own random stream.
    chunk_starts = np.searchsorted(indptr, np.linspace(0, indptr[-1], _LAYOUT_CHUNKS + 1)).astype(np.int64)
    chunk_starts[0], chunk_starts[-1] = 0, n
    if threads is None:
        threads = available_cores() if n > PARALLEL_LAYOUT_ABOVE else 1
    threads = max(int(threads), 1)

    def run(first: int, last: int) -> None:
        _layout_chunks(
            embedding, indptr, tail, epochs_per_sample, next_sample, next_negative, chunk_starts,
            first, last, epoch, n_epochs, a, b, float(_NEGATIVE_SAMPLE_RATE), int(seed),
        )

    # Progress after each ~10 % of the epochs.
    report = set(np.linspace(0, n_epochs, min(n_epochs, 10) + 1).round().astype(int)[1:].tolist())
    for epoch in range(n_epochs):
        split_over_threads(run, _LAYOUT_CHUNKS, threads)
        if on_progress is not None and epoch + 1 in report:
            on_progress(float(epoch + 1) / n_epochs)
    return embedding


@timed
def umap(
    adata: AnnData,
    *,
    min_dist: float = 0.5,
    n_epochs: int | None = None,
    seed: int = 0,
    on_progress: Callable[[float], None] | None = None,
) -> None:
    """UMAP of the neighbour graph into ``obsm["X_umap"]`` (float32, n_obs x 2).

    Parameters
    ----------
    adata
        Must hold the graph from :func:`engine.analysis.neighbors.neighbors` (its ``use_rep`` gives the
        PCA starting layout).
    min_dist
        Minimum distance between embedded points (umap-learn's meaning, spread 1).
    n_epochs
        SGD epochs; ``None`` picks :func:`default_umap_epochs`.
    seed
        Same seed, same layout.
    on_progress
        Called with the fraction of epochs done, ten times over the layout.

    Writes ``obsm["X_umap"]`` and ``uns["umap"] = {"params": {"min_dist", "n_epochs", "seed"}}``.
    """
    params = _require_neighbors(adata)["params"]
    use_rep = params.get("use_rep")
    if use_rep is None:
        raise ValueError(
            "uns['neighbors'] does not say which representation it was built from: "
            "rerun engine.analysis.neighbors.neighbors(adata, use_rep=...)"
        )
    start = pca_start(representation(adata, use_rep))
    n_epochs = default_umap_epochs(adata.n_obs) if n_epochs is None else n_epochs
    adata.obsm["X_umap"] = umap_layout(
        adata.obsp["connectivities"], start, min_dist=min_dist, n_epochs=n_epochs, seed=seed,
        on_progress=on_progress,
    )
    adata.uns["umap"] = {"params": {"min_dist": float(min_dist), "n_epochs": int(n_epochs), "seed": int(seed)}}


def tsne_minutes(n_cells: int) -> float:
    """Rough minutes a t-SNE of ``n_cells`` takes on this project's 2-core machines."""
    return n_cells * _TSNE_SECONDS_PER_CELL / 60.0


@timed
def tsne(
    adata: AnnData,
    *,
    use_rep: str = "X_scVI",
    perplexity: float = 30.0,
    seed: int = 0,
    subsample: int | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> None:
    """t-SNE of ``obsm[use_rep]`` into ``obsm["X_tsne"]``: openTSNE with FFT-accelerated gradients.

    FIt-SNE's interpolation (Linderman et al. 2019) makes each iteration O(n): 12k cells take
    ~15-20 s on 2 cores where scikit-learn's Barnes-Hut took minutes (BENCHMARKS.md, "t-SNE").
    Affinities come from the ``3 * perplexity`` nearest neighbours (our own search, so openTSNE's
    index and its compilation are never needed); PCA initialisation; 250 iterations of early
    exaggeration (12) then 500 plain ones, as openTSNE's defaults. The FFT grid uses 2 intervals
    per unit of the embedding (openTSNE: 1), which keeps the late iterations fast as the embedding
    spreads, at no measured loss of trustworthiness (0.982 both ways on 12k cells).

    Above :data:`TSNE_MAX_CELLS` cells it refuses (a ValueError that says how long it would take)
    unless ``subsample`` is given: then the t-SNE is of ``subsample`` random cells (seeded) and
    every other cell is placed at the mean position of its 5 nearest subsampled cells in
    ``use_rep`` (as openTSNE's ``transform`` initialises new points, without its optimisation).

    ``on_progress`` receives the fraction done (0 to 1) every 25 iterations. Writes
    ``obsm["X_tsne"]`` (float32) and ``uns["tsne"] = {"params": {...}}`` (``subsample``: the number
    of cells embedded, None when all were).
    """
    x = representation(adata, use_rep)
    n = adata.n_obs
    if subsample is not None and not 2 < subsample:
        raise ValueError(f"subsample={subsample} must be more than 2 cells")
    if subsample is None or subsample >= n:
        subsample = None
        if n > TSNE_MAX_CELLS:
            raise ValueError(
                f"A t-SNE of {n:,} cells would take about {tsne_minutes(n):.0f} minutes on this machine: "
                f"compute it on a random subsample of {TSNE_MAX_CELLS:,} cells instead (subsample="
                f"{TSNE_MAX_CELLS}; about {tsne_minutes(TSNE_MAX_CELLS):.0f} minutes, the other cells "
                "placed beside their nearest subsampled neighbours), or use the UMAP")
    rows = np.arange(n) if subsample is None else np.sort(
        np.random.default_rng(seed).choice(n, size=subsample, replace=False))
    m = rows.size
    if not 1.0 <= perplexity < (m - 1) / 3:
        raise ValueError(
            f"perplexity={perplexity} must be at least 1 and below (n_cells - 1) / 3 = "
            f"{(m - 1) / 3:.1f}: pick a smaller perplexity"
        )
    embedded = _tsne_layout(np.ascontiguousarray(x[rows], dtype=np.float64), perplexity=perplexity,
                            seed=seed, on_progress=on_progress)
    if subsample is None:
        layout = embedded
    else:
        layout = np.empty((n, 2), dtype=np.float32)
        layout[rows] = embedded
        others = np.setdiff1d(np.arange(n), rows, assume_unique=True)
        from scipy.spatial import cKDTree

        _, nearest = cKDTree(x[rows]).query(x[others], k=_TSNE_PLACEMENT_NEIGHBOURS, workers=-1)
        layout[others] = embedded[nearest].mean(axis=1)
    if on_progress is not None:
        on_progress(1.0)
    adata.obsm["X_tsne"] = layout
    adata.uns["tsne"] = {
        "params": {"use_rep": use_rep, "perplexity": float(perplexity), "seed": int(seed), "method": "fft",
                   "subsample": None if subsample is None else int(subsample)}
    }


def _tsne_layout(x: np.ndarray, *, perplexity: float, seed: int,
                 on_progress: Callable[[float], None] | None) -> np.ndarray:
    from openTSNE import TSNEEmbedding, affinity, initialization
    from openTSNE.nearest_neighbors import PrecomputedNeighbors

    k = min(int(3 * perplexity) + 1, x.shape[0] - 1)
    indices, distances, _ = knn(x, n_neighbors=k, seed=seed)
    neighbours = PrecomputedNeighbors(indices[:, 1:], distances[:, 1:])  # without the cell itself
    affinities = affinity.PerplexityBasedNN(perplexity=perplexity, knn_index=neighbours, n_jobs=_TSNE_THREADS)
    start = initialization.pca(x, random_state=seed)
    total = _TSNE_EXAGGERATED + _TSNE_PLAIN

    def report(done: int) -> Callable[[int, float, np.ndarray], bool]:
        def callback(iteration: int, error: float, embedding: np.ndarray) -> bool:
            if on_progress is not None:
                on_progress(min((done + iteration) / total, 0.99))
            return False  # never stop early

        return callback

    embedding = TSNEEmbedding(
        start, affinities, negative_gradient_method="fft", n_jobs=_TSNE_THREADS, random_state=seed
    )
    common = {"ints_in_interval": 2, "callbacks_every_iters": 25}
    embedding = embedding.optimize(
        _TSNE_EXAGGERATED, exaggeration=12, momentum=0.5, callbacks=report(0), **common
    )
    embedding = embedding.optimize(_TSNE_PLAIN, momentum=0.8, callbacks=report(_TSNE_EXAGGERATED), **common)
    return np.asarray(embedding, dtype=np.float32)


@timed
def pca_uncorrected(
    adata: AnnData, *, layer: str = "counts", n_comps: int = 50, seed: int = 0
) -> np.ndarray:
    """PCA of log1p(counts normalised to 10,000 per cell): the "before correction" picture.

    Stays sparse: the log-normalised matrix is never densified (arpack with implicit centring).
    ``layer="X"`` reads ``adata.X``. Writes and returns ``obsm["X_pca"]`` (float32, n_obs x n_comps).
    """
    if layer == "X":
        counts = adata.X
    elif layer in adata.layers:
        counts = adata.layers[layer]
    else:
        raise ValueError(
            f"layer '{layer}' not found (layers: {', '.join(adata.layers.keys()) or 'none'}): "
            "load the counts with engine.reading.load, or pass layer='X'"
        )
    max_comps = min(adata.n_obs, adata.n_vars) - 1
    if not 1 <= n_comps <= max_comps:
        raise ValueError(f"n_comps={n_comps} must be between 1 and {max_comps} for this data")
    lognorm = log_normalized(counts)

    from sklearn.decomposition import PCA

    pcs = PCA(n_components=n_comps, svd_solver="arpack", random_state=seed).fit_transform(lognorm)
    adata.obsm["X_pca"] = pcs.astype(np.float32)
    return adata.obsm["X_pca"]
