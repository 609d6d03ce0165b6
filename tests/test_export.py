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

    # Genes named by symbol (the default), the ids the run was trained on kept in var["gene_ids"].
    assert list(back.var_names) == list(adata.var.loc[run.var_names, "gene_symbol"])
    assert list(back.var["gene_ids"]) == list(run.var_names)
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


def test_saved_groups_become_in_out_columns_that_scanpy_colours(trained, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    adata, run = trained
    names = adata.obs_names
    b_cells = names[(adata.obs["cell_type"] == "B cells").to_numpy()]
    groups = {
        "my T cells": np.asarray(list(names[:10]) + ["a cell filtered out since"], dtype=object),
        "my T-cells": names[5:25].to_numpy(dtype=object),  # same column name once sanitised
        "B/plasma": b_cells.to_numpy(dtype=object),  # "/" is not allowed in an h5ad key
        "note": names[:3].to_numpy(dtype=object),  # not the existing obs["note"]
    }
    exported = dexport.export_anndata(adata, run, cell_groups=groups,
                                      embeddings={"X_umap": np.zeros((adata.n_obs, 2))})
    back = _reopen(dexport.h5ad_bytes(exported), tmp_path)

    columns = ["group_my_T_cells", "group_my_T_cells_2", "group_B_plasma", "group_note"]
    assert [c for c in back.obs.columns if c.startswith("group_")] == columns
    for column in columns:
        assert list(back.obs[column].cat.categories) == ["in", "out"], column
    assert list(back.obs_names[back.obs["group_my_T_cells"] == "in"]) == list(names[:10])
    assert list(back.obs_names[back.obs["group_my_T_cells_2"] == "in"]) == list(names[5:25])
    assert list(back.obs_names[back.obs["group_B_plasma"] == "in"]) == list(b_cells)
    assert int((back.obs["group_B_plasma"] == "in").sum()) == 150
    assert list(back.obs_names[back.obs["group_note"] == "in"]) == list(names[:3])
    assert set(back.obs["note"].cat.categories) == {"even", "nan"}  # the annotation is untouched
    table = back.uns["atlas_groups"]
    assert list(table["name"]) == list(groups) and list(table["obs_column"]) == columns
    assert list(table["n_cells"]) == [10, 20, 150, 3]
    sc.pl.umap(back, color="group_B_plasma", show=False)  # what a scanpy user does with it
    matplotlib.pyplot.close("all")


def test_symbols_are_made_unique_and_ids_can_be_kept(trained, tmp_path):
    adata, run = trained
    adata = adata.copy()
    symbols = adata.var["display_name"].to_numpy(dtype=object)
    symbols[:3] = "DUP"  # three genes sharing a symbol (as in real annotations)
    adata.var["display_name"] = symbols
    exported = dexport.export_anndata(adata, run)
    assert list(exported.var_names[:4]) == ["DUP", "DUP-1", "DUP-2", str(symbols[3])]
    assert exported.var_names.is_unique
    assert list(exported.var["gene_ids"]) == list(run.var_names)

    kept = dexport.export_anndata(adata, run, gene_names="ids")
    assert list(kept.var_names) == list(run.var_names)
    assert "gene_ids" not in kept.var.columns
    assert list(kept.var["display_name"][:3]) == ["DUP"] * 3
    with pytest.raises(ValueError, match="gene_names must be one of 'symbols', 'ids'"):
        dexport.export_anndata(adata, run, gene_names="ensembl")

    # Data without symbols keeps its names and gains no gene_ids column.
    plain = adata.copy()
    del plain.var["display_name"]
    assert list(dexport.export_anndata(plain, run).var_names) == list(run.var_names)
    assert "gene_ids" not in dexport.export_anndata(plain, run).var.columns


def test_cli_reads_an_export_named_by_symbol_with_the_runs_ids(trained, tmp_path):
    from engine.cli.trained_input import read_trained

    adata, run = trained
    path = tmp_path / "symbols.h5ad"
    path.write_bytes(dexport.h5ad_bytes(dexport.export_anndata(adata, run)))
    back, loaded = read_trained(path, run.path.parent)
    assert loaded.run_id == run.run_id
    assert list(back.var_names) == list(run.var_names)
    assert list(back.var["display_name"]) == list(adata.var.loc[run.var_names, "gene_symbol"])


def test_de_and_markers_go_to_uns_with_their_parameters(trained, tmp_path):
    from dashboard import de as dede
    from dashboard import markers as dmark
    from engine.analysis.de import differential_expression
    from engine.analysis.markers import find_markers

    adata, run = trained
    cells = adata[:, run.var_names].copy()
    b_cells = (cells.obs["cell_type"] == "B cells").to_numpy()
    monocytes = (cells.obs["cell_type"] == "CD14+ Monocytes").to_numpy()
    result = differential_expression(run, cells, group1=b_cells, group2=monocytes, n_samples=500,
                                     max_cells_per_group=100)
    request = dede.DERequest(run.run_id, dede.Comparison("cell_type", "B cells", "CD14+ Monocytes"))
    de_table = result.table(delta=0.5, fdr=0.1)
    de_params = dede.provenance(request, result, delta=0.5, fdr=0.1, dataset="kang_small")
    found = find_markers(run, cells, groupby="cell_type", groups=["B cells", "NK cells"], n_samples=500,
                         max_cells_per_group=100, top=5)
    marker_params = dmark.provenance(found, run_id=run.run_id, groupby="cell_type", dataset="kang_small")
    exported = dexport.export_anndata(adata, run, de=(de_table, de_params),
                                      markers=(found.table, marker_params))
    back = _reopen(dexport.h5ad_bytes(exported), tmp_path)

    de = back.uns["atlas_de"]
    pd.testing.assert_frame_equal(de["table"], de_table, check_dtype=False)
    assert de["table"].index.name == "var_name" and de["table"]["is_de_fdr"].dtype == bool
    assert de["params"]["run_id"] == run.run_id
    assert (de["params"]["group1"], de["params"]["group2"]) == ("B cells", "CD14+ Monocytes")
    assert de["params"]["comparison"] == "cell_type: B cells vs CD14+ Monocytes"
    assert (de["params"]["mode"], de["params"]["delta"], de["params"]["fdr"]) == ("change", 0.5, 0.1)
    assert (de["params"]["n_cells_1"], de["params"]["n_cells_2"]) == (150, 150)
    assert de["params"]["n_sampled_1"] == 100

    markers = back.uns["atlas_markers"]
    pd.testing.assert_frame_equal(markers["table"].reset_index(drop=True), found.table, check_dtype=False)
    assert set(markers["table"]["group"]) == {"B cells", "NK cells"}
    params = markers["params"]
    assert (params["run_id"], params["groupby"], params["top"]) == (run.run_id, "cell_type", 5)
    assert (params["delta"], params["fdr"], params["mode"]) == (0.25, 0.05, "change")
    assert list(params["groups"]) == ["B cells", "NK cells"]
    counts = params["n_cells"].set_index("group")["n_cells"]
    assert counts["B cells"] == 150 and counts["NK cells"] == 150


def test_uns_result_makes_parameters_storable(tmp_path):
    table = pd.DataFrame({"gene": ["A", None], "score": [1.0, 2.0]}, index=pd.Index(["g1", "g2"], name="var_name"))
    stored = dexport.uns_result(table, {"run_id": "abc", "unused": None, "n_cells": {"B/plasma": 3, "T": 4},
                                        "thresholds": {"delta": 0.25}, "groups": ("B/plasma", "T")})
    adata = ad.AnnData(obs=pd.DataFrame(index=["c1"]))
    adata.uns["result"] = stored
    adata.write_h5ad(tmp_path / "r.h5ad")
    back = ad.read_h5ad(tmp_path / "r.h5ad").uns["result"]
    assert "unused" not in back["params"] and back["params"]["thresholds"] == {"delta": 0.25}
    assert dict(zip(back["params"]["n_cells"]["key"], back["params"]["n_cells"]["value"], strict=True)) == {
        "B/plasma": 3, "T": 4}
    assert list(back["params"]["groups"]) == ["B/plasma", "T"]
    assert list(back["table"]["gene"]) == ["A", "None"] and list(back["table"].index) == ["g1", "g2"]


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
