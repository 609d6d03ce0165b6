"""The engine at 100,000 cells (issue 15): read, QC, HVG, PCA, neighbours, Leiden, UMAP and t-SNE's cap.

One synthetic atlas (``benchmarks/make_atlas.py``: the fixture's 1,145 real cells resampled with
count noise and 24 batches) goes through the steps a 100k-cell upload goes through, asserting
results rather than times (times are in BENCHMARKS.md, from ``benchmarks/atlas_scale.py``,
``neighbors_scale.py`` and ``embed_scale.py``). About 40 s on 2 cores.
"""

from __future__ import annotations

import importlib.util
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from engine.analysis import neighbors as nb
from engine.analysis.clustering import leiden
from engine.analysis.embedding import TSNE_MAX_CELLS, pca_uncorrected, tsne, umap
from engine.preprocessing.hvg import highly_variable_genes
from engine.preprocessing.qc import calculate_qc_metrics
from engine.reading.load import read_counts

from .conftest import REPO

pytestmark = pytest.mark.slow

N_CELLS = 100_000


def _make_atlas_module():
    spec = importlib.util.spec_from_file_location("make_atlas", REPO / "benchmarks" / "make_atlas.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_atlas"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def atlas(kang_small_path, tmp_path_factory) -> ad.AnnData:
    source = ad.read_h5ad(kang_small_path)
    path = tmp_path_factory.mktemp("atlas") / "atlas-100k.h5ad"
    _make_atlas_module().make_atlas(source, n_cells=N_CELLS, seed=0).write_h5ad(path)
    adata = read_counts(path)  # the Data page's reader
    calculate_qc_metrics(adata)
    highly_variable_genes(adata, n_top_genes=1000)
    pca_uncorrected(adata, layer="counts", n_comps=10, seed=0)
    return adata


def test_reader_and_qc_keep_every_cell_and_the_counts(atlas):
    assert atlas.n_obs == N_CELLS
    counts = atlas.layers["counts"]
    np.testing.assert_allclose(atlas.obs["total_counts"].to_numpy(), np.asarray(counts.sum(axis=1)).ravel(), rtol=1e-5)
    assert atlas.var["highly_variable"].sum() == 1000
    assert atlas.obs["batch"].nunique() == 24


def test_neighbours_leiden_and_umap_at_100k(atlas):
    x = atlas.obsm["X_pca"]
    adata = ad.AnnData(obs=atlas.obs[["cell_type"]].copy(), obsm={"X_scVI": x})
    nb.neighbors(adata, use_rep="X_scVI")
    assert adata.uns["neighbors"]["params"]["knn_search"] == "exact"  # below the threshold
    # The approximate search the engine switches to above APPROXIMATE_ABOVE: recall@15 >= 0.95
    # against the exact one at 100k cells (the bar), checked on every 50th cell.
    found, _ = nb.approximate_knn(x, n_neighbors=15, seed=0)
    exact = adata.obsp["distances"]
    cells = np.arange(0, N_CELLS, 50)
    hits = [len(set(found[c, 1:]) & set(exact.indices[exact.indptr[c]:exact.indptr[c + 1]])) / 14 for c in cells]
    assert np.mean(hits) >= 0.95
    leiden(adata, resolution=0.5)
    # Clusters nest in the cell types the atlas's cells were copied from (copies of one real cell
    # form their own small clusters, so purity, not agreement of the partitions, is the measure).
    table = pd.crosstab(adata.obs["leiden"], adata.obs["cell_type"])
    purity = table.max(axis=1).sum() / N_CELLS
    assert purity > 0.85, purity
    umap(adata, n_epochs=20)
    assert adata.obsm["X_umap"].shape == (N_CELLS, 2) and np.isfinite(adata.obsm["X_umap"]).all()


def test_tsne_beyond_its_cap_asks_for_a_subsample():
    big = ad.AnnData(obsm={"X_scVI": np.zeros((TSNE_MAX_CELLS + 1, 2), dtype=np.float32)},
                     shape=(TSNE_MAX_CELLS + 1, 0))
    with pytest.raises(ValueError, match=rf"random subsample of {TSNE_MAX_CELLS:,} cells"):
        tsne(big)
