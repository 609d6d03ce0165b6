"""The Explore scatter's payload (what the canvas component draws) and the region it sends back.

The drawing itself is proven in a real browser (tests/test_browser_explore.py: points painted,
legend, hover, lasso -> saved group).
"""

from __future__ import annotations

import base64

import numpy as np
import pandas as pd
import pytest

from dashboard.cell_scatter import (
    ScatterResult,
    cells_in_region,
    drawing_cap,
    scatter_data,
    selected_rows,
    selection_caption,
)
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


def test_subsample_above_the_cap_is_seeded_and_says_so():
    coords = np.random.default_rng(1).normal(size=(100, 2))
    clusters = pd.Categorical(["a"] * 100)
    data, rows = scatter_data(coords, colouring=Colouring("Cluster", clusters), clusters=clusters, title="t",
                              max_points=30)
    assert len(rows) == 30 and len(_decode(data["xy"], np.float32)) == 60
    assert np.all(np.diff(rows) > 0) and rows.max() < 100
    np.testing.assert_array_equal(_decode(data["xy"], np.float32).reshape(-1, 2), coords[rows].astype(np.float32))
    assert "random 30 of 100 cells shown" in data["title"]
    again, rows_again = scatter_data(coords, colouring=Colouring("g", np.arange(100.0)), clusters=clusters,
                                     title="t", max_points=30)
    assert rows_again.tolist() == rows.tolist() and again["xy_rev"] == data["xy_rev"]  # same cells each rerun
    assert len(_decode(again["values"], np.float32)) == 30 and len(_decode(again["clusters"], np.int16)) == 30


# ---- the region sent back: every cell inside, drawn or not ----------------------------------------
GRID = np.array([(x, y) for y in range(10) for x in range(10)], dtype=float)  # row = 10 * y + x


def _rows(points) -> list[int]:
    return sorted(10 * y + x for x, y in points)


def test_a_box_selects_the_grid_points_inside_edges_included():
    picked = cells_in_region(GRID, {"box": [1.5, 4.0, 2.0, 3.5]})
    assert picked.tolist() == _rows((x, y) for x in (2, 3, 4) for y in (2, 3))
    # corners in any order
    assert cells_in_region(GRID, {"box": [4.0, 1.5, 3.5, 2.0]}).tolist() == picked.tolist()
    assert cells_in_region(GRID, {"box": [20, 30, 20, 30]}).size == 0


def test_a_concave_lasso_leaves_out_its_notch():
    # a U: the square [0.5, 6.5] x [0.5, 6.5] without the notch [2.5, 4.5] x [2.5, 6.5]
    u = [[0.5, 0.5], [6.5, 0.5], [6.5, 6.5], [4.5, 6.5], [4.5, 2.5], [2.5, 2.5], [2.5, 6.5], [0.5, 6.5]]
    picked = cells_in_region(GRID, {"lasso": u})
    expected = _rows((x, y) for x in range(1, 7) for y in range(1, 7) if not (3 <= x <= 4 and y >= 3))
    assert picked.tolist() == expected
    assert cells_in_region(GRID, {"lasso": u[::-1]}).tolist() == expected  # either direction
    # a triangle under the line y = x - 0.4: the grid points with y < x
    triangle = cells_in_region(GRID, {"lasso": [[-0.5, -0.9], [9.5, -0.9], [9.5, 9.1]]})
    assert triangle.tolist() == _rows((x, y) for x in range(10) for y in range(10) if y < x)


def test_the_lasso_agrees_with_the_browsers_point_in_polygon_test():
    # the even-odd test cell_scatter.js used on the drawn points, one point at a time
    def js_inside(x, y, poly):
        inside = False
        j = len(poly) - 1
        for i in range(len(poly)):
            (xi, yi), (xj, yj) = poly[i], poly[j]
            if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
                inside = not inside
            j = i
        return inside

    rng = np.random.default_rng(3)
    points = rng.normal(size=(3000, 2))
    angles = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    radius = 1.2 + 0.6 * np.sin(5 * angles)  # a star: concave everywhere
    star = np.c_[radius * np.cos(angles), radius * np.sin(angles)].tolist()
    expected = [i for i, (x, y) in enumerate(points.astype(np.float32).astype(float)) if js_inside(x, y, star)]
    assert cells_in_region(points, {"lasso": star}).tolist() == expected
    assert 0 < len(expected) < len(points)


def test_every_cell_in_the_region_is_selected_when_only_some_are_drawn():
    rng = np.random.default_rng(2)
    coords = rng.uniform(0, 10, size=(5000, 2))
    clusters = pd.Categorical(["a"] * 5000)
    data, rows = scatter_data(coords, colouring=Colouring("Cluster", clusters), clusters=clusters, title="t",
                              max_points=500)
    box = {"rev": data["xy_rev"], "box": [2.0, 5.0, 1.0, 4.0]}
    picked = selected_rows(box, data["xy_rev"], coords)
    inside = (coords[:, 0] >= 2) & (coords[:, 0] <= 5) & (coords[:, 1] >= 1) & (coords[:, 1] <= 4)
    assert picked.tolist() == np.flatnonzero(inside).tolist()
    assert len(picked) > np.isin(picked, rows).sum() > 0  # far more than the drawn points in the box


def test_with_every_cell_drawn_the_selection_is_the_drawn_points_inside():
    # what the browser selected before (drawn points inside, by their pixel positions) is what the
    # region selects now: same positions, same test
    coords = np.random.default_rng(4).normal(size=(400, 2))
    clusters = pd.Categorical(["a"] * 400)
    data, rows = scatter_data(coords, colouring=Colouring("Cluster", clusters), clusters=clusters, title="t")
    assert len(rows) == 400
    xy = _decode(data["xy"], np.float32).reshape(-1, 2).astype(float)
    drawn_inside = np.flatnonzero((xy[:, 0] >= -0.5) & (xy[:, 0] <= 1) & (xy[:, 1] >= -1) & (xy[:, 1] <= 0.3))
    picked = selected_rows({"rev": data["xy_rev"], "box": [-0.5, 1, -1, 0.3]}, data["xy_rev"], coords)
    assert picked.tolist() == rows[drawn_inside].tolist()


@pytest.mark.parametrize("selection", [None, {}, {"rev": "other", "box": [0, 1, 0, 1]}, "junk",
                                       {"rev": "rev", "rows": [1, 2]}, {"rev": "rev", "lasso": [[0, 0], [1, 1]]},
                                       {"rev": "rev", "box": [0, 1]}, {"rev": "rev", "lasso": "x"}])
def test_no_selection_or_one_made_on_other_positions_selects_nothing(selection):
    assert selected_rows(selection, "rev", np.zeros((10, 2))).size == 0


def test_caption_says_how_many_cells_are_drawn_and_selected():
    sub = ScatterResult(np.arange(12_345), n_cells=1_000_000, n_drawn=200_000, n_selected_drawn=2_469)
    assert selection_caption(sub) == ("200,000 of 1,000,000 cells drawn (a random subsample); "
                                      "12,345 selected (2,469 of them drawn).")
    every = ScatterResult(np.empty(0, dtype=np.int64), n_cells=1_145, n_drawn=1_145, n_selected_drawn=0)
    assert selection_caption(every) == "1,145 cells, all drawn; none selected."


def test_drawing_cap_from_the_environment(monkeypatch):
    from dashboard.explore_figures import MAX_POINTS

    monkeypatch.delenv("ATLAS_MAX_POINTS", raising=False)
    assert drawing_cap() == MAX_POINTS
    monkeypatch.setenv("ATLAS_MAX_POINTS", "5000")
    assert drawing_cap() == 5000
    monkeypatch.setenv("ATLAS_MAX_POINTS", "lots")
    assert drawing_cap() == MAX_POINTS


def test_bad_shapes_say_what_is_wrong():
    clusters = pd.Categorical(["a"] * 3)
    with pytest.raises(ValueError, match="expected \\(n_cells, 2\\)"):
        scatter_data(np.zeros((3, 3)), colouring=Colouring("Cluster", clusters), clusters=clusters, title="t")
    with pytest.raises(ValueError, match="one entry per cell"):
        scatter_data(np.zeros((4, 2)), colouring=Colouring("Cluster", clusters), clusters=clusters, title="t")
