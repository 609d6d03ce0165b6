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
from tests.conftest import ARTIFACTS


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


def _publication_figures(width: int) -> dict[str, go.Figure]:
    """Each kind of figure the Export page offers, on made-up data shaped like the real thing."""
    from dashboard.de_figures import volcano
    from dashboard.explore_figures import Colouring, embedding_scatter
    from dashboard.marker_figures import GroupExpression, dotplot

    rng = np.random.default_rng(0)
    names = ["B cells", "CD14+ Monocytes", "CD4 T cells", "NK cells", "FCGR3A+ Monocytes"]
    clusters = pd.Categorical(rng.choice(names, 2000))
    coords = rng.normal(size=(2000, 2)) + 6 * np.asarray(clusters.codes)[:, None] * np.array([[1.0, 0.4]])
    n_genes = 300
    lfc = rng.normal(0, 1.5, n_genes)
    proba = 1 / (1 + np.exp(-(np.abs(lfc) * 3 - 3)))
    table = pd.DataFrame({
        "gene": [f"GENE{i}" for i in range(n_genes)], "lfc_mean": lfc, "proba_de": proba,
        "bayes_factor": np.sign(lfc) * np.log(proba / (1 - proba)), "is_de_fdr": proba > 0.95,
        "mean_norm_1": rng.gamma(2, 5, n_genes), "mean_norm_2": rng.gamma(2, 5, n_genes),
    }, index=pd.Index([f"ENSG{i:05d}" for i in range(n_genes)], name="var_name"))
    genes = ["CD79A", "CD74", "S100A8", "LYZ", "IL7R", "GNLY", "NKG7", "FCGR3A", "MS4A7"]
    stats = GroupExpression(pd.DataFrame(rng.random((5, 9)) * 3, index=names, columns=genes),
                            pd.DataFrame(rng.random((5, 9)), index=names, columns=genes))
    return {
        "umap": embedding_scatter(coords, colouring=Colouring("cluster", clusters), clusters=clusters,
                                  title="UMAP of the scVI latent space", labels_on_data=True, show_legend=False),
        "volcano": volcano(table, delta=0.25, group_names=("B cells", "rest")),
        "dotplot": dotplot(stats, title="Markers of cell_type", width=width),
    }


@pytest.mark.slow  # kaleido starts the local Chromium for each image (~2 s)
@pytest.mark.parametrize("size", list(dexport.FIGURE_SIZES))
def test_exported_figures_fit_their_size_with_nothing_cut_at_the_edges(size):
    import PIL.Image

    out = ARTIFACTS / "figures"
    out.mkdir(parents=True, exist_ok=True)
    width, height = dexport.FIGURE_SIZES[size]
    for name, fig in _publication_figures(width).items():
        png = dexport.figure_image(fig, fmt="png", size=size)
        path = out / f"{name}_{size.split(' ')[0]}.png"
        path.write_bytes(png)
        image = np.asarray(PIL.Image.open(io.BytesIO(png)).convert("L"), dtype=float)
        assert image.shape == (height * dexport.PNG_SCALE, width * dexport.PNG_SCALE), name
        # Margins: a white frame all round (nothing drawn up to the edge, so no label is cut off).
        frame = np.concatenate([image[:6].ravel(), image[-6:].ravel(), image[:, :6].ravel(), image[:, -6:].ravel()])
        assert frame.min() > 240, (name, size, path)
        if size == next(iter(dexport.FIGURE_SIZES)):  # SVG once: each image starts Chromium (~2 s)
            svg = dexport.figure_image(fig, fmt="svg", size=size).decode()
            assert svg.startswith("<svg") and f'width="{width}"' in svg
