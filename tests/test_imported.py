"""Runs imported from an h5ad that already holds X_scVI/X_pca, X_umap and leiden (engine.runs.imported)."""

from __future__ import annotations

import functools

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from engine.reading.load import read_counts
from engine.runs import imported as eimp
from engine.runs import records
from engine.runs.storage import load_run


@functools.lru_cache(maxsize=2)
def _pcs(path: str) -> np.ndarray:
    """10 principal components of the log-normalised counts of the file (computed once)."""
    counts = sp.csr_matrix(ad.read_h5ad(path).X, dtype=np.float32)
    logn = np.log1p(counts.multiply(1e4 / counts.sum(axis=1)).toarray())
    logn -= logn.mean(axis=0)
    u, s, _ = np.linalg.svd(logn, full_matrices=False)
    pcs = (u[:, :10] * s[:10]).astype(np.float32)
    pcs.flags.writeable = False
    return pcs


def analysed(path, *, rep: str = "X_scVI", umap: bool = True, leiden: bool = True, tsne: bool = False,
             resolution: float | None = 0.8, empty_cell: bool = False) -> ad.AnnData:
    """The small Kang fixture as an analysed atlas: a representation in ``rep``, X_umap and leiden.

    The representation is a PCA of the log-normalised counts (what scanpy stores as X_pca; scVI's
    latent would stand here in an scvi-tools file); X_umap its first two components; leiden the
    cell types as numbers. ``empty_cell`` adds a cell without counts, which reading drops.
    """
    adata = ad.read_h5ad(path)
    pcs = _pcs(str(path))
    adata.obsm[rep] = pcs
    if umap:
        adata.obsm["X_umap"] = pcs[:, :2] * 3
    if tsne:
        adata.obsm["X_tsne"] = pcs[:, 2:4] * 5
    if leiden:
        codes = adata.obs["cell_type"].astype("category").cat.codes
        adata.obs["leiden"] = pd.Categorical(codes.astype(str))
        if resolution is not None:
            adata.uns["leiden"] = {"params": {"resolution": resolution, "n_iterations": -1}}
    if empty_cell:
        extra = ad.AnnData(X=sp.csr_matrix((1, adata.n_vars), dtype=np.float32), var=adata.var,
                           obs=pd.DataFrame({"donor": ["0"], "cell_type": ["none"], "barcode": ["EMPTY"]},
                                            index=["EMPTY"]))
        for key in adata.obsm:
            extra.obsm[key] = np.full((1, adata.obsm[key].shape[1]), 99, dtype=np.float32)
        if leiden:
            extra.obs["leiden"] = ["0"]
        uns = dict(adata.uns)
        adata = ad.concat([extra, adata], merge="same")
        adata.uns.update(uns)
    return adata


@pytest.fixture(scope="module")
def atlas_file(kang_small_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("atlas") / "atlas.h5ad"
    analysed(kang_small_path, empty_cell=True, tsne=True).write_h5ad(path)
    return path


def test_reading_keeps_the_saved_analysis_of_the_kept_cells(atlas_file):
    adata = read_counts(atlas_file)
    assert adata.n_obs == 1145  # the empty cell was dropped, and its rows with it
    assert adata.obsm["X_scVI"].shape == (1145, 10) and adata.obsm["X_umap"].shape == (1145, 2)
    assert not (adata.obsm["X_scVI"] == 99).any()
    assert adata.uns["leiden"] == {"params": {"resolution": 0.8}}
    found = eimp.saved_analysis(adata)
    assert found == eimp.SavedAnalysis("X_scVI", 10, ("X_umap", "X_tsne"), "leiden", 0.8)
    assert "obsm['X_scVI']" in found.describe() and "obs['leiden']" in found.describe()


def test_import_round_trip_and_same_id_twice(atlas_file, tmp_path):
    adata = read_counts(atlas_file)
    run = eimp.import_run(adata, tmp_path, source="atlas.h5ad")
    assert not run.has_model and run.module is None and run.params is None
    assert run.imported["representation"] == "X_scVI" and run.imported["resolution"] == 0.8
    assert run.metrics["cells_hash"] == records.cells_hash(adata)
    loaded = load_run(tmp_path, run.run_id)  # the ordinary loader finds it
    assert loaded is not None and not loaded.has_model
    np.testing.assert_array_equal(loaded.latent, adata.obsm["X_scVI"])
    np.testing.assert_array_equal(loaded.embeddings["X_umap"], adata.obsm["X_umap"])
    np.testing.assert_array_equal(loaded.embeddings["X_tsne"], adata.obsm["X_tsne"])
    np.testing.assert_array_equal(loaded.clusters, adata.obs["leiden"].astype(str).to_numpy())
    assert loaded.var_names == list(adata.var_names)
    # the same file again: the same run, not a second one
    again = eimp.import_run(read_counts(atlas_file), tmp_path)
    assert again.run_id == run.run_id
    listed = records.list_runs(tmp_path)
    assert [r.run_id for r in listed] == [run.run_id] and not listed[0].has_model
    # other clusters: another run
    other = adata.copy()
    other.obs["leiden"] = pd.Categorical(np.where(np.arange(other.n_obs) % 2, "0", "1"))
    assert eimp.import_run(other, tmp_path).run_id != run.run_id


def test_scanpy_file_imports_its_pca_without_umap_or_clusters(kang_small_path, tmp_path):
    adata = analysed(kang_small_path, rep="X_pca", umap=False, leiden=False)
    run = eimp.import_run(adata, tmp_path)
    assert run.imported["representation"] == "X_pca"
    assert run.embeddings == {} and run.clusters is None and run.imported["resolution"] is None
    loaded = load_run(tmp_path, run.run_id)
    assert loaded.embeddings == {} and loaded.clusters is None and loaded.latent.shape == (1145, 10)


def test_clusters_without_resolution_are_taken_at_one(kang_small_path, tmp_path):
    run = eimp.import_run(analysed(kang_small_path, resolution=None), tmp_path)
    assert run.imported["resolution"] == 1.0 and run.imported["resolution_known"] is False


def test_missing_representation_is_an_actionable_error(kang_small_path, tmp_path):
    adata = ad.read_h5ad(kang_small_path)
    adata.obsm["X_umap"] = np.zeros((adata.n_obs, 2), dtype=np.float32)
    assert eimp.saved_analysis(adata) is None
    with pytest.raises(ValueError, match=r"obsm\['X_scVI'\].*obsm\['X_pca'\].*found obsm\['X_umap'\].*Train"):
        eimp.import_run(adata, tmp_path)
    with pytest.raises(ValueError, match=r"no obsm\['X_scVI'\]"):
        eimp.import_run(adata, tmp_path, representation="X_scVI")
    assert records.list_runs(tmp_path) == []


@pytest.mark.parametrize(("key", "value", "message"), [
    ("X_scVI", np.full((1145, 10), "a"), r"not numeric"),
    ("X_umap", np.zeros((1145, 3), dtype=np.float32), r"3 columns: expected 2"),
    ("X_scVI", np.full((1145, 10), np.nan, dtype=np.float32), r"NaN or infinite values in 1,145 cells"),
    ("X_scVI", np.zeros((1145, 1), dtype=np.float32), r"1 column\(s\)"),
])
def test_wrong_shapes_are_refused(kang_small_path, tmp_path, key, value, message):
    adata = analysed(kang_small_path)
    adata.obsm[key] = value
    with pytest.raises(ValueError, match=message):
        eimp.import_run(adata, tmp_path)
    assert records.list_runs(tmp_path) == []


def test_missing_clusters_for_some_cells_are_refused(kang_small_path, tmp_path):
    adata = analysed(kang_small_path)
    adata.obs["leiden"] = adata.obs["leiden"].cat.add_categories([]).astype(object)
    adata.obs.iloc[:3, adata.obs.columns.get_loc("leiden")] = np.nan
    with pytest.raises(ValueError, match=r"no cluster for 3 cells"):
        eimp.import_run(adata, tmp_path)


def test_a_truncated_imported_run_is_corrupt_not_loaded(kang_small_path, tmp_path):
    run = eimp.import_run(analysed(kang_small_path), tmp_path)
    (tmp_path / run.run_id / "X_umap.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(records.CorruptRunError, match="import the file again"):
        load_run(tmp_path, run.run_id)
    (tmp_path / run.run_id / "latent.npy").unlink()
    assert records.list_runs(tmp_path) == []  # incomplete: not listed


def test_cli_refuses_scvi_de_on_an_imported_run_and_write_to_adata_keeps_its_key(kang_small_path, tmp_path):
    from engine.cli.trained_input import read_trained
    from engine.runs.fit import write_to_adata

    adata = analysed(kang_small_path, rep="X_pca")
    run = eimp.import_run(adata, tmp_path / "runs")
    out = adata.copy()
    del out.obsm["X_pca"]
    write_to_adata(out, run)
    assert "X_scVI" not in out.obsm  # the representation goes back where it came from
    np.testing.assert_array_equal(out.obsm["X_pca"], adata.obsm["X_pca"])
    assert out.uns["atlas_run"]["model"] is False and "params" not in out.uns["atlas_run"]
    path = tmp_path / "imported.h5ad"
    out.write_h5ad(path)
    with pytest.raises(ValueError, match="opened from a file without training.*python -m engine train"):
        read_trained(path, tmp_path / "runs")
