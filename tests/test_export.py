"""Downloadable files of the Export page (dashboard.export): they reopen with the usual tools."""

from __future__ import annotations

import io
import zipfile

import anndata as ad
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import scanpy as sc
import scipy.sparse as sp

from dashboard import export as dexport
from engine.model.inference import latent_mean
from engine.model.params import RunParams
from engine.runs.fit import fit
from engine.runs.storage import load_run


@pytest.fixture(scope="module")
def trained(kang_small_path, tmp_path_factory):
    """The small Kang fixture with counts in layers and a 3-epoch run on its first 300 genes."""
    import torch

    torch.set_num_threads(2)
    adata = ad.read_h5ad(kang_small_path)
    adata.layers["counts"] = adata.X.copy()
    adata.var["display_name"] = adata.var["gene_symbol"].astype(str)
    adata.obs["note"] = np.where(np.arange(adata.n_obs) % 2 == 0, "even", None).astype(object)
    run = fit(adata[:, :300].copy(), params=RunParams(max_epochs=3, seed=0), batch_key="donor",
              cache_dir=tmp_path_factory.mktemp("runs"))
    return adata, run


def _reopen(data: bytes, tmp_path) -> ad.AnnData:
    path = tmp_path / "export.h5ad"
    path.write_bytes(data)
    return sc.read_h5ad(path)


def test_exported_h5ad_reopens_with_every_key(trained, tmp_path):
    adata, run = trained
    umap = np.random.default_rng(0).normal(size=(adata.n_obs, 2))
    clusters = pd.Series(np.where(adata.obs["cell_type"] == "B cells", "B", "10"), index=adata.obs_names)
    exported = dexport.export_anndata(adata, run, clusters=clusters, embeddings={"X_umap": umap},
                                      leiden={"params": {"resolution": 1.0}})
    back = _reopen(dexport.h5ad_bytes(exported), tmp_path)

    assert list(back.var_names) == list(run.var_names)
    assert list(back.obs_names) == list(adata.obs_names)
    counts = adata[:, run.var_names].layers["counts"]
    assert (sp.csr_matrix(back.layers["counts"]) != sp.csr_matrix(counts)).nnz == 0
    np.testing.assert_allclose(back.obsm["X_scVI"], run.latent, rtol=1e-6)
    np.testing.assert_allclose(back.obsm["X_umap"], umap, rtol=1e-6)
    assert list(back.obs["leiden"].cat.categories) == ["10", "B"]  # numbers first, then names
    assert (back.obs["leiden"] == "B").sum() == (adata.obs["cell_type"] == "B cells").sum()
    assert back.uns["leiden"]["params"]["resolution"] == 1.0
    assert back.uns["atlas_run"]["run_id"] == run.run_id
    assert back.uns["atlas_run"]["params"]["max_epochs"] == 3
    assert back.uns["atlas_run"]["batch_key"] == "donor"
    assert "log1p" in back.uns["atlas_run"]["X"]
    # X is log1p(counts per 10k), the library taken over every gene of the data, not only the run's.
    cell = 7
    library = adata.layers["counts"][cell].sum()
    expected = np.log1p(counts[cell].toarray().ravel() / library * 1e4)
    np.testing.assert_allclose(back.X[cell].toarray().ravel(), expected, rtol=1e-5)
    # cellxgene: no object columns (mixed None/str became a categorical of strings).
    assert not any(pd.api.types.is_object_dtype(dtype) for dtype in back.obs.dtypes)
    assert set(back.obs["note"].cat.categories) == {"even", "nan"}
    assert back.var["display_name"].iloc[0] == adata.var["gene_symbol"].iloc[0]


def test_export_of_all_genes_flags_the_runs(trained):
    adata, run = trained
    exported = dexport.export_anndata(adata, run, genes="all")
    assert exported.n_vars == adata.n_vars
    assert int(exported.var["used_by_run"].sum()) == 300
    assert "leiden" not in exported.obs and "X_umap" not in exported.obsm
    with pytest.raises(ValueError, match="genes must be one of 'run', 'all'"):
        dexport.export_anndata(adata, run, genes="hvg")


def test_export_refuses_mismatched_cells_and_bad_embeddings(trained):
    adata, run = trained
    with pytest.raises(ValueError, match="latent for 1145 cells but the data has 100"):
        dexport.export_anndata(adata[:100], run)
    with pytest.raises(ValueError, match="must be named X_<name>"):
        dexport.export_anndata(adata, run, embeddings={"umap": np.zeros((adata.n_obs, 2))})


def test_de_csv_reads_back_equal_with_its_provenance():
    table = pd.DataFrame(
        {"gene": ["CD14", "LYZ"], "lfc_mean": [2.5, -1.25], "proba_de": [0.99, 0.9],
         "is_de_fdr": [True, False]},
        index=pd.Index(["ENSG1", "ENSG2"], name="var_name"),
    )
    data = dexport.de_csv_bytes(table, provenance={"run_id": "abc123", "group1": "B cells"})
    text = data.decode()
    assert text.startswith("# run_id: abc123\n# group1: B cells\n# date: ")
    assert "# versions: python " in text
    back = pd.read_csv(io.BytesIO(data), comment="#", index_col=0)
    pd.testing.assert_frame_equal(back, table)


def test_figure_html_embeds_plotly_js():
    html = dexport.figure_html(go.Figure(go.Scatter(x=[1, 2], y=[3, 4]))).decode()
    assert '<script src="http' not in html and "<script src='http" not in html  # no remote script
    assert "Plotly.newPlot" in html
    assert len(html) > 1_000_000  # plotly.min.js itself is ~4.5 MB


@pytest.mark.slow
def test_figure_image_renders_png_with_the_local_chromium():
    png = dexport.figure_image(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])), fmt="png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(png[16:20], "big")
    assert width == dexport.IMAGE_WIDTH * dexport.PNG_SCALE
    with pytest.raises(ValueError, match="fmt must be one of"):
        dexport.figure_image(go.Figure(), fmt="jpg")


def test_model_bundle_unzips_into_a_loadable_run(trained, tmp_path):
    adata, run = trained
    data = dexport.run_bundle(run)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = sorted(archive.namelist())
        archive.extractall(tmp_path)
    assert names == sorted(f"{run.run_id}/{f}" for f in ("history.csv", "latent.npy", "model.pt", "run.json"))
    loaded = load_run(tmp_path, run.run_id)
    np.testing.assert_array_equal(loaded.latent, run.latent)
    assert loaded.var_names == run.var_names and loaded.params == run.params
    # The weights came back too: encoding the cells again gives the same latent means.
    cells = adata[:, run.var_names].copy()
    np.testing.assert_allclose(latent_mean(loaded, cells), latent_mean(run, cells), rtol=1e-5, atol=1e-6)
