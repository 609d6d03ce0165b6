"""The Explore scatter's payload (what the canvas component draws) and the selection it sends back.

The drawing itself is proven in a real browser (tests/test_browser_explore.py: points painted,
legend, hover, lasso -> saved group).
"""

from __future__ import annotations

import base64

import numpy as np
import pandas as pd
import pytest

from dashboard.cell_scatter import scatter_data, selected_rows
from dashboard.explore_figures import Colouring, category_colours


def _decode(text: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


def test_categorical_payload_round_trips_positions_codes_and_clusters():
    coords = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]])
    values = pd.Categorical(["T", None, "B", "T"], categories=["T", "B"])
    clusters = pd.Categorical(["c0", "c1", "c1", "c0"])
    data, rows = scatter_data(coords, colouring=Colouring("cell type", values), clusters=clusters,
                              title="UMAP", labels_on_data=True)
    assert rows.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(_decode(data["xy"], np.float32).reshape(-1, 2), coords.astype(np.float32))
    assert _decode(data["codes"], np.int16).tolist() == [0, -1, 1, 0]
    assert data["names"] == ["T", "B"] and data["colours"] == category_colours(2) and data["has_missing"]
    assert _decode(data["clusters"], np.int16).tolist() == [0, 1, 1, 0]
    assert data["cluster_names"] == ["c0", "c1"]
    # names on the data sit at each category's median position
    assert data["text_labels"] == [["T", 3.0, 4.0], ["B", 4.0, 5.0]]


def test_continuous_payload_keeps_missing_values_and_the_finite_range():
    values = np.array([0.5, np.nan, 2.5, 1.0], dtype=np.float32)
    data, _ = scatter_data(np.zeros((4, 2)), colouring=Colouring("LYZ (observed)", values),
                           clusters=pd.Categorical(["a"] * 4), title="UMAP")
    assert data["kind"] == "continuous" and data["label"] == "LYZ (observed)"
    decoded = _decode(data["values"], np.float32)
    assert np.isnan(decoded[1]) and decoded[[0, 2, 3]].tolist() == [0.5, 2.5, 1.0]
    assert (data["vmin"], data["vmax"]) == (0.5, 2.5)
    flat, _ = scatter_data(np.zeros((2, 2)), colouring=Colouring("g", np.ones(2, dtype=np.float32)),
                           clusters=pd.Categorical(["a", "a"]), title="t")
    assert flat["vmax"] > flat["vmin"]  # a constant gene still gets a usable colour scale


def test_positions_fingerprint_changes_with_positions_only():
    coords = np.random.default_rng(0).normal(size=(50, 2))
    clusters = pd.Categorical(["a"] * 50)
    one, _ = scatter_data(coords, colouring=Colouring("Cluster", clusters), clusters=clusters, title="t")
    two, _ = scatter_data(coords, colouring=Colouring("g", np.arange(50.0)), clusters=clusters, title="t")
    moved, _ = scatter_data(coords + 1, colouring=Colouring("Cluster", clusters), clusters=clusters, title="t")
    assert one["xy_rev"] == two["xy_rev"] != moved["xy_rev"]


def test_subsample_above_the_cap_and_selection_maps_back_to_rows():
    coords = np.random.default_rng(1).normal(size=(100, 2))
    clusters = pd.Categorical(["a"] * 100)
    data, rows = scatter_data(coords, colouring=Colouring("Cluster", clusters), clusters=clusters, title="t",
                              max_points=30)
    assert len(rows) == 30 and len(_decode(data["xy"], np.float32)) == 60
    assert "random 30 of 100 cells shown" in data["title"]
    picked = selected_rows({"rev": data["xy_rev"], "rows": [0, 5, 29, 99]}, data["xy_rev"], rows)
    assert picked.tolist() == [rows[0], rows[5], rows[29]]  # an index past the drawn points is dropped


@pytest.mark.parametrize("selection", [None, {}, {"rev": "other", "rows": [1, 2]}, "junk"])
def test_no_selection_or_one_made_on_other_positions_selects_nothing(selection):
    assert selected_rows(selection, "rev", np.arange(10)).size == 0


def test_bad_shapes_say_what_is_wrong():
    clusters = pd.Categorical(["a"] * 3)
    with pytest.raises(ValueError, match="expected \\(n_cells, 2\\)"):
        scatter_data(np.zeros((3, 3)), colouring=Colouring("Cluster", clusters), clusters=clusters, title="t")
    with pytest.raises(ValueError, match="one entry per cell"):
        scatter_data(np.zeros((4, 2)), colouring=Colouring("Cluster", clusters), clusters=clusters, title="t")
