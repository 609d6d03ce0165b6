"""Neighbours, UMAP, t-SNE, Leiden and the uncorrected PCA on the Kang fixture."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import NearestNeighbors

from engine.analysis import neighbors as nb
from engine.analysis.clustering import leiden, leiden_labels
from engine.analysis.embedding import pca_uncorrected, tsne, umap
from engine.analysis.neighbors import approximate_knn, exact_knn, neighbors


@pytest.fixture(scope="module")
def kang(kang_small_path) -> ad.AnnData:
    """The fixture with a 20-component uncorrected PCA standing in for a latent."""
    adata = ad.read_h5ad(kang_small_path)
    pca_uncorrected(adata, layer="X", n_comps=20, seed=0)
    adata.obsm["X_scVI"] = adata.obsm["X_pca"][:, :10].copy()
    return adata


@pytest.fixture(scope="module")
def kang_graph(kang) -> ad.AnnData:
    adata = kang.copy()
    neighbors(adata, use_rep="X_pca", n_neighbors=15)
    return adata


def test_pca_uncorrected_matches_scanpy(kang_small_path):
    import scanpy as sc

    ours = ad.read_h5ad(kang_small_path)
    pcs = pca_uncorrected(ours, layer="X", n_comps=10)
    ref = ad.read_h5ad(kang_small_path)
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    sc.pp.pca(ref, n_comps=10, svd_solver="arpack", random_state=0)
    assert pcs is ours.obsm["X_pca"] and pcs.shape == (ours.n_obs, 10)
    for i in range(5):  # components agree up to sign
        assert abs(np.corrcoef(pcs[:, i], ref.obsm["X_pca"][:, i])[0, 1]) > 0.999


def test_neighbors_agree_with_sklearn_exact_knn(kang_graph):
    x = kang_graph.obsm["X_pca"]
    _, ref = NearestNeighbors(n_neighbors=15).fit(x).kneighbors(x)
    dist = kang_graph.obsp["distances"]
    assert (np.diff(dist.indptr) == 14).all()
    for cell in range(0, kang_graph.n_obs, 7):
        ours = set(dist.indices[dist.indptr[cell] : dist.indptr[cell + 1]])
        assert ours == set(ref[cell]) - {cell}
    assert kang_graph.uns["neighbors"]["params"] == {
        "n_neighbors": 15, "method": "umap", "random_state": 0, "metric": "euclidean",
        "use_rep": "X_pca", "knn_search": "exact",
    }


def test_high_dimensional_search_is_exact_too():
    x = np.random.default_rng(0).normal(size=(300, 40))
    indices, distances = exact_knn(x, n_neighbors=8)
    ref_d, ref_i = NearestNeighbors(n_neighbors=8).fit(x).kneighbors(x)
    np.testing.assert_array_equal(indices, ref_i)
    np.testing.assert_allclose(distances, ref_d, atol=1e-6)


@pytest.mark.slow  # pynndescent compiles its numba kernels on first use (~20-30 s)
def test_approximate_search_recall_and_auto_threshold(kang, monkeypatch):
    x = kang.obsm["X_pca"]
    truth, true_d = exact_knn(x, n_neighbors=15)
    found, found_d = approximate_knn(x, n_neighbors=15, seed=0)
    assert found.shape == truth.shape == (kang.n_obs, 15)
    assert (found[:, 0] == np.arange(kang.n_obs)).all() and (found_d[:, 0] == 0).all()
    assert (np.diff(found_d, axis=1) >= 0).all()
    recall = np.mean([len(np.intersect1d(a, b)) / 15 for a, b in zip(found, truth, strict=True)])
    assert recall >= 0.95  # the bar; 0.99 measured at 100k and 1M cells
    # Above the threshold "auto" switches to the approximate search and says so.
    adata = ad.AnnData(obsm={"X_pca": x}, shape=(kang.n_obs, 0))
    monkeypatch.setattr(nb, "APPROXIMATE_ABOVE", kang.n_obs - 1)
    neighbors(adata, use_rep="X_pca")
    assert adata.uns["neighbors"]["params"]["knn_search"] == "pynndescent"
    assert (np.diff(adata.obsp["distances"].indptr) == 14).all()
    with pytest.raises(ValueError, match="'auto', 'exact', 'approximate'"):
        neighbors(adata, use_rep="X_pca", method="annoy")


def test_connectivities_symmetric_in_unit_interval(kang_graph):
    conn = kang_graph.obsp["connectivities"]
    assert abs(conn - conn.T).max() < 1e-12
    assert conn.data.min() > 0 and conn.data.max() <= 1.0
    assert conn.diagonal().max() == 0
    # every cell keeps its nearest neighbour at full membership (rho makes it exactly 1)
    assert np.allclose(conn.max(axis=1).toarray().ravel(), 1.0)


def test_memberships_solve_umaps_calibration_equation(kang):
    """Per cell, memberships to its k-1 other neighbours sum to log2(k); the nearest one is 1."""
    from engine.analysis.neighbors import smooth_knn_dist

    indices, distances = exact_knn(kang.obsm["X_pca"], n_neighbors=15)
    sigmas, rhos = smooth_knn_dist(distances, 15.0)
    np.testing.assert_allclose(rhos, distances[:, 1])
    memberships = np.exp(-np.maximum(distances[:, 1:] - rhos[:, None], 0) / sigmas[:, None])
    np.testing.assert_allclose(memberships.sum(axis=1), np.log2(15), atol=1e-4)
    assert (memberships[:, 0] == 1.0).all()


@pytest.mark.slow  # importing umap-learn compiles pynndescent's and umap's numba kernels (~20-40 s)
def test_connectivities_match_umap_learn_fuzzy_simplicial_set(kang_graph):
    """obsp["connectivities"] is umap-learn's fuzzy union of the same kNN, as the engine claims.

    Measured on the fixture (20-PC latent, k=15 incl. self): identical sparsity (23,226 entries),
    max |ours - umap-learn| = 2.6e-6, which is umap-learn computing in float32 (it casts
    ``knn_dists``; sigmas differ by up to 1.2e-5 relative).
    """
    import scipy.sparse as sp
    from umap.umap_ import fuzzy_simplicial_set

    from engine.analysis.neighbors import representation

    x = representation(kang_graph, "X_pca")
    indices, distances = exact_knn(x, n_neighbors=15)  # the neighbours neighbors() used
    dist = kang_graph.obsp["distances"]
    np.testing.assert_array_equal(dist.indices.reshape(-1, 14), np.sort(indices[:, 1:], axis=1))
    ref, _, _ = fuzzy_simplicial_set(
        x, 15, np.random.RandomState(0), "euclidean", knn_indices=indices, knn_dists=distances,
        set_op_mix_ratio=1.0, local_connectivity=1.0,
    )
    ref = sp.csr_matrix(ref)
    ref.sort_indices()
    ours = kang_graph.obsp["connectivities"]
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours.indptr, ref.indptr)
    np.testing.assert_array_equal(ours.indices, ref.indices)
    assert np.abs(ours.data - ref.data).max() < 1e-5


def test_scanpy_reads_the_graph(kang_graph):
    import scanpy as sc

    adata = kang_graph.copy()
    sc.tl.leiden(adata, flavor="igraph", n_iterations=2, random_state=0, key_added="sc_leiden")
    assert adjusted_rand_score(adata.obs["cell_type"], adata.obs["sc_leiden"]) > 0.5


def test_missing_representation_says_what_to_do(kang):
    adata = kang.copy()
    del adata.obsm["X_scVI"]
    with pytest.raises(ValueError, match=r"obsm\['X_scVI'\] not found: train a model \(or pick a run\) first"):
        neighbors(adata)
    with pytest.raises(ValueError, match="run neighbors first"):
        umap(adata)
    with pytest.raises(ValueError, match="run neighbors first"):
        leiden(adata)
    with pytest.raises(ValueError, match="X_scVI"):
        tsne(adata)


def test_leiden_recovers_cell_types(kang_graph):
    adata = kang_graph.copy()
    leiden(adata, resolution=0.5, seed=0)
    labels = adata.obs["leiden"]
    # measured ARI 0.60-0.63 at resolutions 0.3-1.0 (8 annotated types, some split by state)
    assert adjusted_rand_score(adata.obs["cell_type"], labels) > 0.5
    n = adata.uns["leiden"]["n_clusters"]
    assert adata.uns["leiden"] == {"resolution": 0.5, "n_clusters": n, "seed": 0, "flavor": "igraph"}
    assert list(labels.cat.categories) == [str(i) for i in range(n)]
    sizes = labels.value_counts().reindex(labels.cat.categories).to_numpy()
    assert (np.diff(sizes) <= 0).all()  # "0" is the largest
    leiden(adata, resolution=2.0, seed=0)
    assert adata.uns["leiden"]["n_clusters"] > n


def test_leiden_deterministic_for_a_seed(kang_graph):
    a, b = kang_graph.copy(), kang_graph.copy()
    leiden(a, seed=3)
    leiden(b, seed=3)
    assert (a.obs["leiden"] == b.obs["leiden"]).all()


def test_leiden_is_deterministic_when_sessions_cluster_at_once(kang_graph, monkeypatch):
    """The random generator of igraph is process-wide: concurrent calls must not draw from each other's."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import igraph

    graph = kang_graph.obsp["connectivities"]
    alone = {seed: leiden_labels(graph, seed=seed, resolution=1.0) for seed in (1, 2)}
    real = igraph.Graph.community_leiden

    def slow_start(self, *args, **kwargs):  # widen the window between seeding and drawing
        time.sleep(0.05)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(igraph.Graph, "community_leiden", slow_start)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [(seed, pool.submit(leiden_labels, graph, seed=seed, resolution=1.0)) for seed in (1, 2) * 4]
        for seed, future in futures:
            np.testing.assert_array_equal(future.result(), alone[seed])


def test_leiden_with_leidenalg_recovers_cell_types(kang_graph):
    adata = kang_graph.copy()
    leiden(adata, resolution=0.5, seed=0, flavor="leidenalg")
    assert adjusted_rand_score(adata.obs["cell_type"], adata.obs["leiden"]) > 0.5
    assert adata.uns["leiden"]["flavor"] == "leidenalg"
    with pytest.raises(ValueError, match="flavor must be one of 'igraph', 'leidenalg'"):
        leiden(adata, flavor="louvain")


def _neighbourhood_cell_type_accuracy(x, labels) -> float:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    return cross_val_score(KNeighborsClassifier(15), x, labels, cv=3).mean()


def test_umap_shape_deterministic_and_preserves_neighbourhoods(kang_graph):
    from sklearn.manifold import trustworthiness

    a, b = kang_graph.copy(), kang_graph.copy()
    umap(a, seed=0)
    umap(b, seed=0)
    y = a.obsm["X_umap"]
    assert y.shape == (a.n_obs, 2) and np.isfinite(y).all()
    np.testing.assert_array_equal(y, b.obsm["X_umap"])
    assert trustworthiness(a.obsm["X_pca"], y, n_neighbors=15) > 0.9
    labels = a.obs["cell_type"].to_numpy()
    in_latent = _neighbourhood_cell_type_accuracy(a.obsm["X_pca"], labels)
    assert _neighbourhood_cell_type_accuracy(y, labels) > in_latent - 0.05
    umap(b, seed=1)
    assert not np.array_equal(y, b.obsm["X_umap"])


def test_umap_on_every_core_is_as_good_as_on_one(kang_graph, monkeypatch):
    """Above PARALLEL_LAYOUT_ABOVE cells the layout runs on all cores, as good as on one.

    The chunks race on shared vertices as umap-learn's parallel mode does; one thread stays the
    default below the threshold, so a seed gives the same picture there.
    """
    from sklearn.manifold import trustworthiness

    from engine.analysis import embedding
    from engine.analysis.embedding import pca_start, umap_layout

    x, graph = kang_graph.obsm["X_pca"], kang_graph.obsp["connectivities"]
    start = pca_start(x)
    one = umap_layout(graph, start, seed=0, threads=1)
    np.testing.assert_array_equal(one, umap_layout(graph, start, seed=0))  # the default below the threshold
    both = umap_layout(graph, start, seed=0, threads=2)
    labels = kang_graph.obs["cell_type"].to_numpy()
    for y in (one, both):
        assert np.isfinite(y).all()
        assert trustworthiness(x, y, n_neighbors=15) > 0.9
    assert _neighbourhood_cell_type_accuracy(both, labels) > _neighbourhood_cell_type_accuracy(one, labels) - 0.03
    seen: list[int] = []
    real = embedding.split_over_threads
    monkeypatch.setattr(embedding, "split_over_threads",
                        lambda work, n, parts: (seen.append(parts), real(work, n, parts)))
    monkeypatch.setattr(embedding, "PARALLEL_LAYOUT_ABOVE", kang_graph.n_obs - 1)
    monkeypatch.setattr(embedding, "available_cores", lambda: 2)
    umap_layout(graph, start, seed=0, n_epochs=3)
    assert seen == [2, 2, 2]


def test_umap_reports_progress_without_changing_the_layout(kang_graph):
    """The layout runs in tenths of its epochs so the page can show a bar; the result is the same."""
    quiet, watched = kang_graph.copy(), kang_graph.copy()
    seen: list[float] = []
    umap(quiet, seed=0, n_epochs=120)
    umap(watched, seed=0, n_epochs=120, on_progress=seen.append)
    np.testing.assert_array_equal(quiet.obsm["X_umap"], watched.obsm["X_umap"])
    assert len(seen) == 10 and seen == sorted(seen) and seen[-1] == 1.0 and seen[0] == pytest.approx(0.1)
    few: list[float] = []
    umap(kang_graph.copy(), seed=0, n_epochs=3, on_progress=few.append)  # fewer epochs than slices
    assert few == [pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0]


def _knn_preservation(x, y, k: int = 15) -> float:
    """Mean fraction of each cell's k nearest neighbours in ``x`` that are among its k nearest in ``y``."""
    near_x = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)[:, 1:]
    near_y = NearestNeighbors(n_neighbors=k + 1).fit(y).kneighbors(y, return_distance=False)[:, 1:]
    return float(np.mean([np.intersect1d(a, b).size / k for a, b in zip(near_x, near_y, strict=True)]))


@pytest.mark.slow  # importing umap-learn and compiling its layout kernel takes ~20-40 s
def test_umap_layout_as_good_as_umap_learn_on_the_same_graph(kang_graph):
    """Our numba layout preserves neighbourhoods and cell types as well as umap-learn's.

    Ours (PCA start, default epochs: 500 here) against umap-learn's own defaults (spectral start,
    500 epochs for small data) on the same connectivities, same min_dist and a/b, both seed 0.

    Measured on the fixture (20-PC latent, 1,145 cells; seeds 0-2 for the ranges):
    trustworthiness@15 ours 0.967 (0.967-0.969) vs umap-learn 0.968 (0.968-0.970);
    15-NN preservation ours 0.418 (0.416-0.419) vs 0.417 (0.417-0.421);
    15-NN cell-type accuracy ours 0.834 (0.831-0.834) vs 0.830 (0.830-0.838), latent 0.852.
    """
    from sklearn.manifold import trustworthiness
    from umap.umap_ import find_ab_params, simplicial_set_embedding

    from engine.analysis.embedding import umap_ab

    adata = kang_graph.copy()
    umap(adata, min_dist=0.5, seed=0)
    ours = adata.obsm["X_umap"]
    a, b = find_ab_params(1.0, 0.5)
    np.testing.assert_allclose(umap_ab(0.5), (a, b), rtol=1e-6)
    x = adata.obsm["X_pca"]
    ref, _ = simplicial_set_embedding(
        x, adata.obsp["connectivities"].copy(), 2, 1.0, a, b, 1.0, 5, 500, "spectral",
        np.random.RandomState(0), "euclidean", {}, False, {}, False,
    )
    labels = adata.obs["cell_type"].to_numpy()
    trust = {name: trustworthiness(x, y, n_neighbors=15) for name, y in (("ours", ours), ("ref", ref))}
    kept = {name: _knn_preservation(x, y) for name, y in (("ours", ours), ("ref", ref))}
    acc = {name: _neighbourhood_cell_type_accuracy(y, labels) for name, y in (("ours", ours), ("ref", ref))}
    assert trust["ours"] > trust["ref"] - 0.03, trust
    assert kept["ours"] > kept["ref"] - 0.05, kept
    assert acc["ours"] > acc["ref"] - 0.03, acc


def test_tsne_shape_deterministic_and_separates_cell_types(kang):
    a, b = kang.copy(), kang.copy()
    progress: list[float] = []
    tsne(a, use_rep="X_pca", perplexity=30, seed=0, on_progress=progress.append)
    tsne(b, use_rep="X_pca", perplexity=30, seed=0)
    # progress is reported as it goes, rising to 1
    assert len(progress) >= 20 and progress == sorted(progress) and progress[-1] == 1.0
    assert a.uns["tsne"]["params"]["method"] == "fft"
    y = a.obsm["X_tsne"]
    assert y.shape == (a.n_obs, 2) and np.isfinite(y).all()
    np.testing.assert_allclose(y, b.obsm["X_tsne"], rtol=0, atol=1e-5)
    labels = a.obs["cell_type"].to_numpy()
    in_latent = _neighbourhood_cell_type_accuracy(a.obsm["X_pca"], labels)
    assert _neighbourhood_cell_type_accuracy(y, labels) > in_latent - 0.05
    with pytest.raises(ValueError, match="perplexity"):
        tsne(a, use_rep="X_pca", perplexity=500)


def test_tsne_above_the_cap_refuses_then_embeds_a_subsample(kang, monkeypatch):
    import engine.analysis.embedding as emb

    a = kang.copy()
    monkeypatch.setattr(emb, "TSNE_MAX_CELLS", 1000)
    with pytest.raises(ValueError, match=r"subsample of 1,000 cells"):
        tsne(a, use_rep="X_pca")
    tsne(a, use_rep="X_pca", subsample=1000, seed=0)
    y = a.obsm["X_tsne"]
    assert y.shape == (a.n_obs, 2) and np.isfinite(y).all()
    assert a.uns["tsne"]["params"]["subsample"] == 1000
    # Placed cells land among their own kind: the cell-type neighbourhoods survive the placement.
    labels = a.obs["cell_type"].to_numpy()
    assert _neighbourhood_cell_type_accuracy(y, labels) > 0.8
