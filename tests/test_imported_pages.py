"""An h5ad that already holds X_scVI, X_umap and leiden opens in the dashboard without training (AppTest).

The file is the small Kang fixture with a representation, an embedding and clusters added
(tests/test_imported.py's ``analysed``): the Data page offers to open it, Explore shows the file's
own UMAP and clusters, denoised expression and markers say they need a model, the Differential
expression page runs a Wilcoxon test, Export writes the file's arrays back, and a link reopens it.
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import explore as ex
from tests.conftest import REPO
from tests.test_imported import analysed

EXPLORE = "../pages/explore.py"
DE_PAGE = "../pages/differential_expression.py"
OPEN = "Open the embedding saved in this file (no training)"


def _session() -> AppTest:
    return AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=180)


def _widget(elements, label):
    for element in elements:
        if element.label == label:
            return element
    raise AssertionError(f"no widget labelled {label!r}; have {[e.label for e in elements]}")


@pytest.fixture(scope="module")
def atlas(kang_small_path, tmp_path_factory):
    """The analysed fixture as the bytes of an .h5ad, and the AnnData written."""
    adata = analysed(kang_small_path, resolution=0.8)
    path = tmp_path_factory.mktemp("atlas") / "atlas.h5ad"
    adata.write_h5ad(path)
    return path.read_bytes(), adata


@pytest.fixture(scope="module")
def opened(run_cache, atlas):
    """A session that uploaded the analysed file, filtered some cells, then opened its saved analysis."""
    data, adata = atlas
    at = _session()
    at.run()
    at.file_uploader[0].set_value(("atlas.h5ad", data, "application/octet-stream")).run()
    assert not at.exception, at.exception
    state = at.session_state["atlas_state"]
    # QC thresholds that drop cells: opening the saved analysis must keep every cell of the file
    from dashboard import loading
    from engine.preprocessing.qc import QCThresholds

    loading.apply_settings(state, QCThresholds(min_genes=300), state.n_top_genes, None)
    at.run()
    assert state.filtered.n_obs < adata.n_obs
    assert any("obsm['X_scVI']" in m.value and "obs['leiden']" in m.value for m in at.markdown)
    assert state.active_run_id is None
    _widget(at.button, OPEN).click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert state.active_run_id is not None
    assert any("saved analysis is the active run" in s.value for s in at.success)
    return at, state, adata


def test_opening_keeps_every_cell_and_the_files_arrays(opened):
    at, state, adata = opened
    from dashboard.training import load_run

    run = load_run(state.active_run_id)
    assert not run.has_model
    assert state.filtered.n_obs == adata.n_obs and state.thresholds.min_genes == 0
    np.testing.assert_array_equal(run.latent, adata.obsm["X_scVI"])
    assert state.leiden_resolution == 0.8


def test_explore_shows_the_files_umap_and_clusters_and_denoised_needs_a_model(opened):
    at, state, adata = opened
    from dashboard.training import load_run

    run = load_run(state.active_run_id)
    at.switch_page(EXPLORE).run()
    assert not at.exception, at.exception
    assert any("without training" in i.value for i in at.info)
    (element,) = at.get("bidi_component")
    assert "UMAP" in json.loads(element.proto.json)["title"]
    np.testing.assert_array_equal(ex.embedding(state, run, "UMAP"), adata.obsm["X_umap"])
    # the file's own 8 clusters, at the file's resolution, with no graph computed
    assert any(h.value == "Leiden clusters: 8 at resolution 0.8" for h in at.subheader)
    assert (ex.leiden_clusters(state, run).astype(str) == adata.obs["leiden"].astype(str).to_numpy()).all()
    at.selectbox(key="explore_source").set_value("Gene").run()
    assert not at.exception, at.exception
    assert at.radio(key="explore_expression").disabled
    assert any("Denoised values need a trained model" in i.value for i in at.info)
    with pytest.raises(ValueError, match="Denoised values need a trained model"):
        ex.gene_expression(state, run, "CD79A", expression="denoised")
    # another resolution clusters the representation's graph here
    at.slider(key="explore_resolution").set_value(0.3).run()
    assert not at.exception, at.exception
    header = next(h.value for h in at.subheader if h.value.startswith("Leiden clusters"))
    assert header.endswith("at resolution 0.3")
    assert 2 <= int(header.split(":")[1].split()[0]) < 30
    at.slider(key="explore_resolution").set_value(0.8).run()
    assert any(h.value == "Leiden clusters: 8 at resolution 0.8" for h in at.subheader)


def test_de_without_a_model_is_a_wilcoxon_test_with_known_markers(opened):
    at, state, adata = opened
    at.switch_page(DE_PAGE).run()
    assert not at.exception, at.exception
    assert any("scVI's Bayesian differential expression" in i.value and "need a trained model" in i.value
               for i in at.info)
    assert not [r for r in at.radio if r.label == "Mode"]
    _widget(at.selectbox, "Compare groups of").set_value("cell_type").run()
    _widget(at.selectbox, "Group 1").set_value("B cells").run()
    _widget(at.selectbox, "Group 2").set_value("CD14+ Monocytes").run()
    _widget(at.button, "Run differential expression").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.get("plotly_chart"), "no volcano drawn"
    table = at.dataframe[0].value
    assert {"pvalue_adj", "score", "lfc_mean"} <= set(table.columns)
    de_genes = table[table["is_de_fdr"]]
    assert "CD79A" in set(de_genes.loc[de_genes["lfc_mean"] > 0, "gene"])
    assert {"LYZ", "S100A8", "CD14"} <= set(de_genes.loc[de_genes["lfc_mean"] < 0, "gene"])
    n_de = int(next(m.value for m in at.metric if m.label == "Genes called DE").replace(",", ""))
    _widget(at.slider, "delta: smallest |LFC| that counts (log2)").set_value(2.0).run()
    stricter = int(next(m.value for m in at.metric if m.label == "Genes called DE").replace(",", ""))
    assert 0 < stricter < n_de


def test_markers_and_model_bundle_say_they_need_a_model_and_export_writes_the_files_arrays(opened, tmp_path):
    at, state, adata = opened
    at.switch_page("../pages/markers.py").run()
    assert not at.exception, at.exception
    assert any("Marker genes" in i.value and "need a trained model" in i.value for i in at.info)
    at.switch_page("../pages/export.py").run()
    assert not at.exception, at.exception
    assert any("A model bundle need a trained model" in i.value for i in at.info)
    _widget(at.button, "Prepare the .h5ad").click().run()
    assert not at.exception, at.exception
    path = tmp_path / "exported.h5ad"
    path.write_bytes(at.session_state["export_h5ad"][1])
    exported = ad.read_h5ad(path)
    np.testing.assert_allclose(exported.obsm["X_scVI"], adata.obsm["X_scVI"])
    np.testing.assert_allclose(exported.obsm["X_umap"], adata.obsm["X_umap"])
    assert (exported.obs["leiden"].astype(str).to_numpy() == adata.obs["leiden"].astype(str).to_numpy()).all()
    assert exported.uns["atlas_run"]["model"] is False or exported.uns["atlas_run"]["model"] == 0
    assert "params" not in exported.uns["atlas_run"]  # no model, no training parameters
    assert "volcano (top 10 genes named)" in _widget(at.selectbox, "Figure").options


def test_a_link_reopens_the_imported_run(opened):
    at, state, adata = opened
    rid = state.active_run_id
    at.switch_page(EXPLORE).run()  # the first sync recorded how to open the data again
    b = _session()
    b.query_params.update({"run": rid, "embedding": "UMAP", "colour": "Cluster", "res": "0.8"})
    b.switch_page(EXPLORE).run()
    assert not b.exception, b.exception
    state_b = b.session_state["atlas_state"]
    assert state_b.active_run_id == rid
    assert state_b.filtered.n_obs == adata.n_obs
    assert any(h.value == "Leiden clusters: 8 at resolution 0.8" for h in b.subheader)
