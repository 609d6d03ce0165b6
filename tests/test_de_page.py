"""The Differential expression and Export pages in Streamlit's AppTest, and their glue (dashboard.de)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dashboard import de as dede
from tests.conftest import app_with_active_run

DE_PAGE = "../pages/differential_expression.py"


@pytest.fixture(scope="module")
def de_app(run_cache, kang_small_path):
    return app_with_active_run(run_cache, kang_small_path, batch_key="donor")


@pytest.fixture(scope="module")
def counted(de_app):
    """Counts calls of the engine's DE while the module's tests run (the page reaches it through dashboard.de).

    With the count, a test can tell a recomputation from a cache hit.
    """
    calls = []
    original = dede.ede.differential_expression

    def counting(*args, **kwargs):
        calls.append(kwargs.get("group1").sum())
        return original(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(dede.ede, "differential_expression", counting)
    yield calls
    mp.undo()


def _widget(elements, label):
    for element in elements:
        if element.label == label:
            return element
    raise AssertionError(f"no widget labelled {label!r}; have {[e.label for e in elements]}")


def _metric(at, label) -> str:
    return next(m.value for m in at.metric if m.label == label)


@pytest.mark.slow  # one quick training run and a DE on the small fixture
def test_cell_types_compare_with_a_volcano_and_rethreshold_without_recomputing(de_app, counted):
    at, state, run = de_app
    at.switch_page(DE_PAGE).run()
    assert not at.exception, at.exception
    assert "Pick two groups" in at.info[0].value
    _widget(at.selectbox, "Compare groups of").set_value("cell_type").run()
    _widget(at.selectbox, "Group 1").set_value("B cells").run()
    _widget(at.selectbox, "Group 2").set_value("CD14+ Monocytes").run()
    assert any("**B cells**: 150 cells · **CD14+ Monocytes**: 150 cells" in m.value
               for m in at.markdown)
    _widget(at.button, "Run differential expression").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert len(counted) == 1 and counted[0] == 150

    charts = at.get("plotly_chart")
    assert charts, "no volcano drawn"
    assert at.subheader[-1].value == "cell_type: B cells vs CD14+ Monocytes"
    n_de = int(_metric(at, "Genes called DE").replace(",", ""))
    assert 0 < n_de < len(run.var_names)
    # Known markers are called: B cells up (CD79A; MS4A1 is not in the fixture), monocytes up.
    table = at.dataframe[0].value
    de_genes = table[table["is_de_fdr"]]
    assert "CD79A" in set(de_genes.loc[de_genes["lfc_mean"] > 0, "gene"])
    assert {"LYZ", "S100A8", "CD14"} <= set(de_genes.loc[de_genes["lfc_mean"] < 0, "gene"])
    session = at.session_state["de_session"]
    assert session.request.comparison == dede.Comparison("cell_type", "B cells", "CD14+ Monocytes")

    _widget(at.slider, "FDR target").set_value(0.01).run()
    strict = int(_metric(at, "Genes called DE").replace(",", ""))
    _widget(at.slider, "delta: smallest |LFC| that counts (log2)").set_value(1.5).run()
    stricter = int(_metric(at, "Genes called DE").replace(",", ""))
    assert stricter < strict <= n_de
    assert len(counted) == 1, "moving a threshold recomputed the DE"
    # what P(DE) and the FDR threshold mean, for the thresholds on the sliders
    assert any("2.83-fold" in c.value and "FDR target (1%)" in c.value for c in at.caption)
    # an impossible delta: the page says why so few genes pass and what to try
    _widget(at.slider, "delta: smallest |LFC| that counts (log2)").set_value(2.0).run()
    assert int(_metric(at, "Genes called DE").replace(",", "")) < 10
    assert any("delta is 2" in i.value and "Lower delta" in i.value for i in at.info), [i.value for i in at.info]
    assert not at.exception, at.exception


@pytest.mark.slow
def test_a_group_under_three_cells_is_refused(de_app, counted):
    at, state, run = de_app
    state.cell_groups["tiny"] = np.asarray(state.filtered.obs_names[:2])
    at.switch_page(DE_PAGE).run()
    _widget(at.selectbox, "Compare groups of").set_value(dede.LASSO).run()
    _widget(at.selectbox, "Group 1").set_value("tiny").run()
    assert any("fewer than 3 cells" in e.value for e in at.error)
    before = len(counted)
    _widget(at.button, "Run differential expression").click().run()
    assert any("needs at least 3 cells per group" in e.value for e in at.error)
    assert len(counted) == before + 1  # the engine was asked and refused: nothing cached or shown
    assert not at.exception, at.exception


def _prepared_h5ad(at, tmp_path):
    import anndata as ad

    path = tmp_path / "prepared.h5ad"
    path.write_bytes(at.session_state["export_h5ad"][1])
    return ad.read_h5ad(path)


@pytest.mark.slow
def test_export_page_offers_every_download(de_app, counted, tmp_path):
    at, state, run = de_app
    at.switch_page("../pages/export.py").run()
    assert not at.exception, at.exception
    _widget(at.button, "Prepare the .h5ad").click().run()
    assert not at.exception, at.exception
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Download .h5ad" in labels
    # The file holds the saved group, gene symbols (ids kept) and the session's DE with its parameters.
    exported = _prepared_h5ad(at, tmp_path)
    assert list(exported.obs_names[exported.obs["group_tiny"] == "in"]) == list(state.cell_groups["tiny"])
    symbols = state.filtered.var.loc[run.var_names, "display_name"].astype(str)
    assert list(exported.var_names) == list(symbols) and list(exported.var["gene_ids"]) == list(run.var_names)
    de = exported.uns["atlas_de"]
    session = at.session_state["de_session"]
    assert (de["params"]["run_id"], de["params"]["group1"], de["params"]["group2"]) == (
        run.run_id, "B cells", "CD14+ Monocytes")
    assert (de["params"]["delta"], de["params"]["fdr"]) == (session.delta, session.fdr) == (2.0, 0.01)
    assert len(de["table"]) == len(run.var_names) and "CD79A" in set(de["table"]["gene"])
    # Ensembl ids instead: the prepared file no longer matches, so it is prepared again.
    _widget(at.radio, "Gene names").set_value("ids").run()
    assert "Download .h5ad" not in [b.proto.label for b in at.get("download_button")]
    _widget(at.button, "Prepare the .h5ad").click().run()
    exported = _prepared_h5ad(at, tmp_path)
    assert list(exported.var_names) == list(run.var_names) and "gene_ids" not in exported.var
    assert "Download the model bundle" in labels
    assert "Download the DE table (.csv)" in labels
    figures = _widget(at.selectbox, "Figure").options
    assert figures[0] == "UMAP, clusters named on the plot" and "volcano (top 10 genes named)" in figures
    assert any(b.label == "Render figure" for b in at.button)  # PNG by default, drawn on request
    _widget(at.radio, "Format").set_value("html").run()
    assert "Download figure" in [b.proto.label for b in at.get("download_button")]  # HTML: no rendering


def test_group_masks_within_and_lasso():
    obs_names = pd.Index([f"c{i}" for i in range(8)])
    labels = {
        dede.CLUSTERS: pd.Series(list("00001111"), index=obs_names),
        "condition": pd.Series(["stim", "ctrl"] * 4, index=obs_names),
    }
    comparison = dede.Comparison("condition", "stim", "ctrl", within=(dede.CLUSTERS, "1"))
    m1, m2 = dede.group_masks(comparison, labels=labels, cell_groups={}, obs_names=obs_names)
    assert list(obs_names[m1]) == ["c4", "c6"] and list(obs_names[m2]) == ["c5", "c7"]
    lasso = dede.Comparison(dede.LASSO, "mine", dede.REST)
    m1, m2 = dede.group_masks(lasso, labels=labels, cell_groups={"mine": np.array(["c0", "c3"])},
                              obs_names=obs_names)
    assert m1.sum() == 2 and m2.sum() == 6 and not (m1 & m2).any()
    with pytest.raises(ValueError, match="draw it on the Explore page"):
        dede.group_masks(dede.Comparison(dede.LASSO, "gone", dede.REST), labels=labels,
                         cell_groups={}, obs_names=obs_names)
    inside = dede.Comparison(dede.LASSO, "mine", dede.REST, within=(dede.CLUSTERS, "1"))
    with pytest.raises(ValueError, match="'mine' has no cells inside Leiden clusters = 1"):
        dede.group_masks(inside, labels=labels, cell_groups={"mine": np.array(["c0", "c3"])},
                         obs_names=obs_names)
    assert comparison.describe() == "condition: stim vs ctrl, inside Leiden clusters = 1"


def test_session_follows_the_latest_gene_pick():
    session = dede.DESession()
    session.pick(volcano="A", table=None)
    assert session.selected_gene == "A"
    session.pick(volcano="A", table="B")  # the table changed: it wins
    assert session.selected_gene == "B"
    session.pick(volcano="C", table="B")
    assert session.selected_gene == "C"
    session.pick(volcano="C", table="B")  # nothing new: keep
    assert session.selected_gene == "C"
