"""A live preview of training: a UMAP of a fixed subsample of cells, from the latent as it stands.

During training the latent space changes every epoch; a small UMAP of the same seeded subsample,
redrawn every few epochs, shows structure emerging while people watch. Each layout starts from
the previous one (:func:`preview_layout`'s ``start``), so the picture evolves instead of jumping.
"""

from __future__ import annotations

import numpy as np
from anndata import AnnData

__all__ = ["PREVIEW_CELLS", "preview_cells", "preview_layout"]

#: Cells in the preview: enough to show every cell type of a PBMC sample, few enough for ~0.3 s.
PREVIEW_CELLS = 1500
_PREVIEW_UMAP_EPOCHS = 150


def preview_cells(n_cells: int, *, seed: int = 0, n: int = PREVIEW_CELLS) -> np.ndarray:
    """The sorted indices of the cells a preview shows: all of them below ``n``, else a seeded sample."""
    if n_cells <= n:
        return np.arange(n_cells)
    return np.sort(np.random.default_rng(seed).choice(n_cells, size=n, replace=False))


def preview_layout(latent: np.ndarray, *, start: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """A quick 2-D UMAP of ``latent`` (a few thousand cells at most), ``(n, 2)`` float32.

    ``start``: the previous preview's layout, to continue from (else the first two principal
    components).
    """
    from engine.analysis.embedding import pca_start, umap_layout
    from engine.analysis.neighbors import neighbors

    adata = AnnData(obsm={"X_scVI": np.asarray(latent, dtype=np.float32)}, shape=(len(latent), 0))
    neighbors(adata, use_rep="X_scVI", n_neighbors=min(15, len(latent) - 1), seed=seed)
    first = pca_start(adata.obsm["X_scVI"]) if start is None else np.asarray(start, dtype=np.float32)
    return umap_layout(adata.obsp["connectivities"], first, n_epochs=_PREVIEW_UMAP_EPOCHS, seed=seed)
