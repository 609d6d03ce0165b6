"""The Explore page through Streamlit's AppTest, and its session logic (clusters, names, groups)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pandas as pd
import pytest

from dashboard import explore as ex
from dashboard.cell_scatter import selected_rows
from dashboard.explore_figures import _fingerprint
from dashboard.state import AppState

from .conftest import app_with_active_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(run_cache, kang_small_path):
    at, state, run = app_with_active_run(run_cache, kang_small_path, batch_key="donor")
    at.switch_page("../pages/explore.py").run()
    assert not at.exception, at.exception
    return at, state, run


def scatter(at) -> dict:
    """What the page sent the Explore scatter component (:func:`dashboard.cell_scatter.scatter_data`)."""
    (element,) = at.get("bidi_component")
    return json.loads(element.proto.json)


def positions(state, run) -> np.ndarray:
    """The drawn positions as the scatter gets them (every cell of this small data set is drawn)."""
    return np.asarray(ex.embedding(state, run), dtype=np.float32)


def n_clusters(at) -> int:
    header = next(h.value for h in at.subheader if h.value.startswith("Leiden clusters"))
    return int(header.split(":")[1].split()[0])


def decode(text: str, dtype) -> np.ndarray:
    """One of the payload's base64 arrays as numpy."""
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


def drawn_categories(data: dict) -> np.ndarray:
    """The category name of each drawn cell."""
    return np.asarray(data["names"] + ["(no value)"], dtype=object)[decode(data["codes"], np.int16)]


def test_positions_are_sent_once_then_only_colours(app):
    at, state, run = app
    st_key = "_atlas_scatter_sent_explore_scatter"
    at.session_state[st_key] = None  # as for a new session
    at.run()
    first = scatter(at)
    np.testing.assert_array_equal(decode(first["xy"], np.float32).reshape(-1, 2), positions(state, run))
    at.selectbox(key="explore_source").set_value("Annotation").run()
    again = scatter(at)
    # the browser keeps them: a colour change sends the colours alone
    assert again["xy"] is None and again["xy_rev"] == first["xy_rev"] and again["label"] != first["label"]
    at.selectbox(key="explore_source").set_value("Cluster").run()
    assert scatter(at)["xy"] is None


def test_reruns_read_the_kept_umap_not_the_first_views_cache(app, monkeypatch):
    at, state, run = app
    at.run()
    assert (run.path / "views" / "X_umap.npy").is_file()

    def not_again(*args, **kwargs):
        raise AssertionError("a rerun read the first view's cached graph again (hundreds of MB at 1M cells)")

    monkeypatch.setattr(ex, "_first_view", not_again)
    for source in ("Annotation", "Cluster"):
        at.selectbox(key="explore_source").set_value(source).run()
        assert not at.exception, at.exception


def test_page_shows_umap_coloured_by_cluster(app):
    at, state, run = app
    data = scatter(at)
    labels = ex.cluster_labels(state, run, state.filtered)
    assert data["kind"] == "categorical" and data["names"] == list(labels.cat.categories)
    assert data["xy_rev"] == _fingerprint(positions(state, run))
    assert "UMAP" in data["title"]
    # Every cell is drawn in its cluster's colour, and its hover names its cluster.
    assert (drawn_categories(data) == labels.to_numpy().astype(str)).all()
    assert data["cluster_names"] == list(labels.cat.categories)


def test_colour_by_obs_column(app):
    at, state, _ = app
    at.selectbox(key="explore_source").set_value("Annotation").run()
    at.selectbox(key="explore_annotation").set_value("cell_type").run()
    assert not at.exception, at.exception
    data = scatter(at)
    assert set(data["names"]) == set(state.filtered.obs["cell_type"].astype(str))
    assert (drawn_categories(data) == state.filtered.obs["cell_type"].astype(str).to_numpy()).all()


def test_colour_by_gene_shows_log_normalised_counts(app):
    at, state, run = app
    at.selectbox(key="explore_source").set_value("Gene").run()
    at.selectbox(key="explore_gene").set_value("CD79A").run()
    assert not at.exception, at.exception
    data = scatter(at)
    assert data["kind"] == "continuous" and data["label"] == "CD79A (observed)"
    colour = decode(data["values"], np.float32)
    filtered = state.filtered
    gene = int(np.flatnonzero(filtered.var["display_name"] == "CD79A")[0])
    counts = filtered.layers["counts"]
    expected = np.log1p(counts[:, gene].toarray().ravel() / counts.sum(axis=1).A1 * 1e4)
    np.testing.assert_allclose(colour, expected, atol=1e-3)
    # CD79A is a B-cell marker: far higher in annotated B cells than elsewhere.
    b = (filtered.obs["cell_type"] == "B cells").to_numpy()
    assert expected[b].mean() > 5 * expected[~b].mean()


def test_colour_by_denoised_gene_is_smooth_and_follows_the_marker(app):
    at, state, _ = app
    at.selectbox(key="explore_source").set_value("Gene").run()
    at.selectbox(key="explore_gene").set_value("CD79A").run()
    at.radio(key="explore_expression").set_value("denoised").run()
    assert not at.exception, at.exception
    data = scatter(at)
    assert data["label"] == "CD79A (denoised)"
    values = decode(data["values"], np.float32)
    b = (state.filtered.obs["cell_type"] == "B cells").to_numpy()
    assert values[b].mean() > values[~b].mean()
    # The model's estimate has no exact zeros, unlike the observed counts.
    assert (values > 0).all()
    at.radio(key="explore_expression").set_value("observed").run()


def test_leiden_slider_changes_the_number_of_clusters(app):
    at, state, _ = app
    at.slider(key="explore_resolution").set_value(0.2).run()
    few = n_clusters(at)
    at.slider(key="explore_resolution").set_value(2.0).run()
    many = n_clusters(at)
    assert state.leiden_resolution == 2.0
    assert many > few >= 1
    at.slider(key="explore_resolution").set_value(1.0).run()


def test_a_restarted_server_shows_the_kept_views_without_computing(app, monkeypatch):
    import streamlit as st

    at, state, run = app
    before = scatter(at)["xy_rev"]
    labels = ex.cluster_labels(state, run, state.filtered).to_numpy().astype(str)
    kept = {p.name for p in (run.path / "views").iterdir()}
    assert {"X_umap.npy", "leiden-1.npy", "graph"} <= kept
    # A new server: nothing in Streamlit's caches, and no long job may run.
    st.cache_data.clear()

    def no_long_jobs(job, *args, **kwargs):
        raise AssertionError(f"{job.__name__} ran although its result was kept")

    monkeypatch.setattr(ex, "run_long", no_long_jobs)
    at.run()
    assert not at.exception, at.exception
    assert scatter(at)["xy_rev"] == before  # the same positions
    assert (ex.cluster_labels(state, run, state.filtered).to_numpy().astype(str) == labels).all()
    # Another resolution clusters the kept graph (no neighbour search).
    at.slider(key="explore_resolution").set_value(0.5).run()
    assert not at.exception, at.exception
    assert (run.path / "views" / "leiden-0.5.npy").is_file()
    at.slider(key="explore_resolution").set_value(1.0).run()


def test_renamed_clusters_appear_on_the_plot_and_in_the_labels(app):
    at, state, run = app
    at.selectbox(key="explore_source").set_value("Cluster").run()
    clusters = list(ex.cluster_table(state, run)["cluster"])
    ex.apply_cluster_edits(state, clusters, {0: {"name": "B cells"}, 1: {"name": "  "}})
    at.run()
    assert state.cluster_names == {clusters[0]: "B cells"}
    names = scatter(at)["names"]
    assert names[0] == "B cells" and clusters[0] not in names
    labels = ex.cluster_labels(state, run, state.filtered)
    assert labels.index.equals(state.filtered.obs_names)
    assert labels.cat.categories[0] == "B cells"
    state.cluster_names = {}


def test_group_from_a_simulated_lasso_selection_is_listed(app):
    at, state, run = app
    data = scatter(at)
    # what the component sends back after a box: the region in data coordinates, on these positions
    coords = positions(state, run)
    x0, y0 = np.quantile(coords, 0.3, axis=0)
    x1, y1 = np.quantile(coords, 0.7, axis=0)
    chosen = selected_rows({"rev": data["xy_rev"], "box": [x0, x1, y0, y1]}, data["xy_rev"], coords)
    n = int(((coords[:, 0] >= x0) & (coords[:, 0] <= x1) & (coords[:, 1] >= y0) & (coords[:, 1] <= y1)).sum())
    assert len(chosen) == n > 0
    cells = np.asarray(state.filtered.obs_names[chosen])
    ex.save_group(state, "lasso test", cells)
    at.run()
    table = at.table[0].value
    row = table.loc["lasso test"]
    assert row["cells"] == n and row["in current data"] == n
    assert set(state.cell_groups["lasso test"]) == set(state.filtered.obs_names[chosen])
    state.cell_groups = {}


def test_batch_panel_shows_embeddings_and_metrics(app):
    at, state, _ = app
    at.button(key="explore_batch_button").click().run()
    assert not at.exception, at.exception
    table = next(df.value for df in at.dataframe if "metric" in df.value.columns)
    assert len(table) == len(ex.METRIC_HELP)
    values = table[["uncorrected (PCA)", "scVI latent"]].to_numpy()
    assert np.isfinite(values).all()
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert any(t.startswith("Uncorrected (PCA): by donor") for t in titles)
    assert any(t.startswith("scVI latent: by cluster") for t in titles)


def test_tsne_is_computed_when_chosen_and_exported(app, monkeypatch):
    at, state, run = app
    # Above the engine's cap the page offers a subsample first (the cap lowered to this data's size).
    import engine.analysis.embedding as eemb

    monkeypatch.setattr(eemb, "TSNE_MAX_CELLS", state.filtered.n_obs // 2)
    at.radio(key="explore_embedding").set_value("t-SNE").run()
    assert not at.exception, at.exception
    assert any(f"random subsample of {state.filtered.n_obs // 2:,} cells" in i.value for i in at.info)
    assert not at.get("bidi_component")
    at.button(key=f"explore_tsne_subsample_{run.run_id}").click().run()
    assert not at.exception, at.exception
    assert "t-SNE" in scatter(at)["title"]
    assert not any("random subsample" in i.value for i in at.info)
    # The session remembers the choice, so the export includes the t-SNE.
    assert (run.run_id, state.filtered_key) in state.tsne_requested
    ex.save_group(state, "first ten", state.filtered.obs_names[:10].to_numpy())
    adata = ex.explored_adata(state)
    ex.delete_group(state, "first ten")
    assert list(adata.obs_names[adata.obs["group_first_ten"] == "in"]) == list(state.filtered.obs_names[:10])
    assert adata.obsm["X_tsne"].shape == (state.filtered.n_obs, 2)
    assert adata.obsm["X_umap"].shape == (state.filtered.n_obs, 2)
    np.testing.assert_allclose(adata.obsm["X_scVI"], run.latent, rtol=1e-6)
    assert adata.obs["leiden"].dtype == "category"
    assert adata.uns["leiden"]["cluster_names"] == {}
    at.radio(key="explore_embedding").set_value("UMAP").run()


def test_page_without_a_run_says_what_to_do(app):
    at, state, _ = app
    rid, state.active_run_id = state.active_run_id, None
    at.run()
    assert any("Train a model" in i.value for i in at.info)
    assert ex.explored_adata(state) is None
    state.active_run_id = rid


# ---- Session logic, without the app -------------------------------------------------------------
def _state(names: list[str]) -> AppState:
    import anndata as ad

    state = AppState()
    state.filtered = ad.AnnData(obs=pd.DataFrame(index=names))
    return state


def test_renamed_merges_clusters_given_the_same_name_and_keeps_order():
    labels = pd.Categorical(["0", "1", "2", "1"], categories=["0", "1", "2"])
    out = ex.renamed(labels, {"0": "T cells", "2": "T cells", "1": "B cells"})
    assert list(out.categories) == ["T cells", "B cells"]
    assert list(out) == ["T cells", "B cells", "T cells", "B cells"]
    assert list(ex.renamed(labels, {})) == ["0", "1", "2", "1"]


def test_apply_cluster_edits_sets_and_clears_names():
    state = _state([])
    ex.apply_cluster_edits(state, ["0", "1", "2"], {1: {"name": "NK"}, 2: {"name": "x"}})
    assert state.cluster_names == {"1": "NK", "2": "x"}
    ex.apply_cluster_edits(state, ["0", "1", "2"], {2: {"name": ""}, 0: {"name": "0"}})
    assert state.cluster_names == {"1": "NK"}


def test_group_save_rename_delete_combine():
    state = _state(list("abcdef"))
    ex.save_group(state, " g1 ", np.array(["a", "b"], dtype=object))
    ex.save_group(state, "g2", np.array(["b", "c"], dtype=object))
    with pytest.raises(ValueError, match="exists already"):
        ex.save_group(state, "g1", np.array(["d"], dtype=object))
    with pytest.raises(ValueError, match="No cells are selected"):
        ex.save_group(state, "g3", np.array([], dtype=object))
    with pytest.raises(ValueError, match="Give the group a name"):
        ex.save_group(state, "  ", np.array(["d"], dtype=object))
    ex.combine_groups(state, ["g1", "g2"], "both")
    assert sorted(state.cell_groups["both"]) == ["a", "b", "c"]
    ex.rename_group(state, "g1", "first")
    assert list(state.cell_groups) == ["first", "g2", "both"]
    ex.delete_group(state, "g2")
    table = ex.groups_table(state)
    assert table.to_dict("list") == {"group": ["first", "both"], "cells": [2, 3],
                                     "in current data": [2, 3]}
    with pytest.raises(ValueError, match="at least two"):
        ex.combine_groups(state, ["first"], "x")


def test_denoised_decode_is_prepared_ahead_only_for_small_data(monkeypatch):
    """Above PREPARE_DENOISED_MAX_CELLS the decode waits for the first denoised colour.

    The next click would otherwise wait for it; the spinner then says what is happening.
    """
    from types import SimpleNamespace

    decoded: list[int] = []
    monkeypatch.setattr(ex, "_gene_decoder", lambda run_id, key, run, filtered: decoded.append(filtered.n_obs))
    run = SimpleNamespace(run_id="r", has_model=True)
    for n in (ex.PREPARE_DENOISED_MAX_CELLS, ex.PREPARE_DENOISED_MAX_CELLS + 1):
        state = SimpleNamespace(filtered=SimpleNamespace(n_obs=n), filtered_key="k")
        ex.prepare_denoised(state, run)
    assert decoded == [ex.PREPARE_DENOISED_MAX_CELLS]
    big = SimpleNamespace(filtered=SimpleNamespace(n_obs=1_000_000))
    assert "decodes all 1,000,000 cells once, about 60 s" in ex.colouring_wait(big, run, source="Gene",
                                                                                expression="denoised")
    assert ex.colouring_wait(big, run, source="Gene", expression="observed") == "Computing the colours..."
    assert ex.colouring_wait(state, run, source="Cluster") == "Computing the colours..."
