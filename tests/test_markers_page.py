"""The Markers page in Streamlit's AppTest: every group's markers, the dot plot, heatmap and table."""

from __future__ import annotations

import pytest

from engine.analysis.annotation import reference_markers
from tests.conftest import app_with_active_run

MARKERS_PAGE = "../pages/markers.py"


@pytest.fixture(scope="module")
def markers_app(run_cache, kang_small_path):
    return app_with_active_run(run_cache, kang_small_path, batch_key="donor")


def _widget(elements, label):
    for element in elements:
        if element.label == label:
            return element
    raise AssertionError(f"no widget labelled {label!r}; have {[e.label for e in elements]}")


@pytest.mark.slow  # one quick training run, then 8 one-vs-rest DEs on the small fixture
def test_markers_of_every_cell_type_with_a_dot_plot_heatmap_and_table(markers_app):
    at, state, run = markers_app
    at.switch_page(MARKERS_PAGE).run()
    assert not at.exception, at.exception
    assert "Choose the groups" in at.info[0].value
    _widget(at.selectbox, "Markers of").set_value("cell_type").run()
    button = next(b for b in at.button if b.label.startswith("Find markers of"))
    assert button.label == "Find markers of 8 groups"
    button.click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]

    # the dot plot: the top 3 of each of the 8 groups, groups as rows
    fig = at.get("plotly_chart")[0].proto.spec
    assert '"scatter"' in fig and "B cells" in fig
    table = at.dataframe[0].value
    assert list(table["rank"][:3]) == [1, 2, 3] and (table["lfc_mean"] > 0).all()
    assert (table["frac_expr_group"] >= 0.1).all()
    _widget(at.selectbox, "Group").set_value("B cells").run()
    b_cells = at.dataframe[0].value
    assert "CD79A" in set(b_cells["gene"].head(15)), list(b_cells["gene"].head(15))

    _widget(at.radio, "Plot").set_value("Heatmap").run()
    assert '"heatmap"' in at.get("plotly_chart")[0].proto.spec
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Download every group's markers (.csv)" in labels and "Download as HTML" in labels
    assert not at.exception, at.exception


@pytest.mark.slow
def test_suggested_names_come_with_evidence_and_name_the_clusters(markers_app, monkeypatch):
    from dashboard import markers as dmark

    at, state, run = markers_app
    at.switch_page(MARKERS_PAGE).run()
    _widget(at.selectbox, "Markers of").set_value("Leiden clusters").run()
    next(b for b in at.button if b.label.startswith("Find markers of")).click().run()
    assert not at.exception, at.exception
    result = dmark.markers(state, run, at.session_state["markers_session"])
    suggested = dmark.suggestions(result, reference_markers("blood"))
    assert suggested["suggestion"].astype(bool).sum() >= 3, suggested  # most clusters get a name
    assert all(e for e, s in zip(suggested["evidence"], suggested["suggestion"], strict=True) if s)

    computed = []
    monkeypatch.setattr(dmark, "run_long", lambda *a, **k: computed.append(1))
    _widget(at.button, "Use these names for the clusters").click().run()
    assert not at.exception, at.exception
    named = state.cluster_names
    assert len(named) >= 3 and set(named.values()) <= set(suggested["suggestion"]) - {""}
    assert any("Named" in s.value for s in at.success)
    # the clusters now show by their names, without computing their markers again
    groups = dmark.markers(state, run, at.session_state["markers_session"]).groups
    # (clusters given the same name show as "name (cluster id)")
    assert all(any(g == n or g.startswith(f"{n} (") for g in groups) for n in named.values()), groups
    assert computed == []
