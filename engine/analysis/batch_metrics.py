"""How well a representation mixes batches while keeping cell labels apart.

All scores lie in [0, 1] with 1 the desirable end for the batch scores (perfect mixing), following
scib (Luecken et al. 2022). Silhouettes are computed on a seeded subsample of at most
:data:`MAX_SILHOUETTE_CELLS` cells (silhouettes cost O(n^2)); the kNN scores use every cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from anndata import AnnData

from engine.analysis.neighbors import knn, representation
from engine.checks import obs_column
from engine.logs import timed

MAX_SILHOUETTE_CELLS = 5000
_LISI_BISECTION_STEPS = 50


@dataclass(frozen=True)
class BatchMetrics:
    """Batch-mixing and label-conservation scores of one representation.

    Attributes
    ----------
    batch_silhouette
        scib's ``silhouette_batch``: within each label, 1 - |silhouette of the batch labels| per
        cell, averaged per label, then over labels. Without labels, the same over all cells as one
        group. 1 = batches indistinguishable, 0 = batches separated.
    batch_entropy
        Mean over cells of the entropy of batch labels among the cell's ``n_neighbors`` nearest
        neighbours, divided by log(n_batches). 1 = perfectly mixed, 0 = every neighbourhood one batch.
    ilisi
        Median integration LISI (Korsunsky et al. 2019): inverse Simpson's index of batch labels
        under a Gaussian kernel over the kNN with perplexity n_neighbors / 3, rescaled as scib does,
        (iLISI - 1) / (n_batches - 1). 1 = perfectly mixed.
    label_silhouette
        Silhouette of the labels, (s + 1) / 2: 1 = labels compact and apart. ``None`` without labels.
    n_batches
        Number of batches present.
    n_silhouette_cells
        Cells used for the silhouettes (the subsample size).
    """

    batch_silhouette: float
    batch_entropy: float
    ilisi: float
    label_silhouette: float | None
    n_batches: int
    n_silhouette_cells: int


def _codes(adata: AnnData, key: str, role: str) -> np.ndarray:
    values = obs_column(adata, key, role=role, allow_missing=False)
    return np.unique(values.astype(str).to_numpy(), return_inverse=True)[1]


def knn_batch_entropy(neighbour_batches: np.ndarray, n_batches: int) -> np.ndarray:
    """Per-cell entropy of batch labels in its neighbourhood, normalised by log(n_batches)."""
    n, k = neighbour_batches.shape
    counts = np.zeros((n, n_batches))
    np.add.at(counts, (np.repeat(np.arange(n), k), neighbour_batches.ravel()), 1.0)
    p = counts / k
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return entropy / np.log(n_batches)


def lisi(distances: np.ndarray, neighbour_labels: np.ndarray, n_labels: int, *, perplexity: float) -> np.ndarray:
    """Per-cell LISI: 1 / sum_b P(b)^2 with P from a perplexity-calibrated Gaussian over the kNN.

    The bandwidth is found by bisection on all cells at once, as in harmony's ``compute_lisi``.
    """
    n, k = distances.shape
    d2 = distances  # harmony's kernel is exp(-beta * distance), not squared distance
    target = np.log(perplexity)
    beta = np.ones(n)
    lo = np.full(n, -np.inf)
    hi = np.full(n, np.inf)
    for _ in range(_LISI_BISECTION_STEPS):
        shifted = d2 - d2.min(axis=1, keepdims=True)  # stabilises exp without changing P
        w = np.exp(-shifted * beta[:, None])
        total = w.sum(axis=1)
        p = w / total[:, None]
        entropy = np.log(total) + beta * (shifted * p).sum(axis=1)
        too_flat = entropy > target  # entropy too high: narrow the kernel (raise beta)
        lo = np.where(too_flat, beta, lo)
        hi = np.where(too_flat, hi, beta)
        beta = np.where(
            np.isfinite(hi) & np.isfinite(lo),
            (lo + hi) / 2,
            np.where(too_flat, beta * 2, beta / 2),
        )
    per_label = np.zeros((n, n_labels))
    np.add.at(per_label, (np.repeat(np.arange(n), k), neighbour_labels.ravel()), p.ravel())
    return 1.0 / (per_label**2).sum(axis=1)


def _silhouette_mixing(x: np.ndarray, batches: np.ndarray, groups: np.ndarray) -> float:
    from sklearn.metrics import silhouette_samples

    per_group = []
    for group in np.unique(groups):
        members = groups == group
        present = np.unique(batches[members])
        # A label seen in one batch only (or too small) says nothing about mixing: scib skips it.
        if present.size < 2 or members.sum() <= present.size:
            continue
        s = silhouette_samples(x[members], batches[members])
        per_group.append(np.mean(1.0 - np.abs(s)))
    if not per_group:
        raise ValueError(
            "no label is shared by two batches with enough cells: the batch silhouette is undefined"
        )
    return float(np.mean(per_group))


@timed
def batch_mixing(
    adata: AnnData,
    *,
    rep: str,
    batch_key: str,
    label_key: str | None,
    n_neighbors: int = 30,
    seed: int = 0,
) -> BatchMetrics:
    """Score how well ``obsm[rep]`` mixes ``obs[batch_key]`` and separates ``obs[label_key]``.

    Compare the uncorrected PCA (:func:`engine.analysis.embedding.pca_uncorrected`, ``rep="X_pca"``) with
    the scVI latent (``rep="X_scVI"``) to see what the correction did. Silhouettes use a seeded
    subsample of at most 5,000 cells; entropy and iLISI use the kNN of every cell
    (exact, or approximate above ``engine.analysis.neighbors.APPROXIMATE_ABOVE`` cells).
    """
    x = representation(adata, rep)
    batches = _codes(adata, batch_key, "batch")
    n_batches = int(batches.max()) + 1
    if n_batches < 2:
        raise ValueError(f"obs['{batch_key}'] holds a single batch: mixing needs at least two")
    labels = None if label_key is None else _codes(adata, label_key, "label")
    if not 3 <= n_neighbors < adata.n_obs:
        raise ValueError(f"n_neighbors={n_neighbors} must be between 3 and n_cells - 1")

    indices, distances, _ = knn(x, n_neighbors=n_neighbors + 1, seed=seed)
    indices, distances = indices[:, 1:], distances[:, 1:]  # the cell itself says nothing of mixing
    neighbour_batches = batches[indices]
    entropy = float(knn_batch_entropy(neighbour_batches, n_batches).mean())
    ilisi_raw = lisi(distances, neighbour_batches, n_batches, perplexity=n_neighbors / 3)
    ilisi = float((np.median(ilisi_raw) - 1.0) / (n_batches - 1))

    rng = np.random.default_rng(seed)
    sub = np.sort(rng.choice(adata.n_obs, size=min(adata.n_obs, MAX_SILHOUETTE_CELLS), replace=False))
    groups = np.zeros(sub.size, dtype=np.int64) if labels is None else labels[sub]
    batch_silhouette = _silhouette_mixing(x[sub], batches[sub], groups)
    label_silhouette = None
    if labels is not None:
        from sklearn.metrics import silhouette_score

        if np.unique(labels[sub]).size < 2:
            raise ValueError(f"obs['{label_key}'] has a single label: the label silhouette needs two")
        label_silhouette = float((silhouette_score(x[sub], labels[sub]) + 1.0) / 2.0)

    return BatchMetrics(
        batch_silhouette=batch_silhouette,
        batch_entropy=entropy,
        ilisi=float(np.clip(ilisi, 0.0, 1.0)),
        label_silhouette=label_silhouette,
        n_batches=n_batches,
        n_silhouette_cells=int(sub.size),
    )
