"""Views kept in a run's folder (engine.runs.views): what a restarted server reads instead of recomputing."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from engine.runs import views


def test_view_round_trip_and_size_check(tmp_path):
    coords = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    assert views.load_view(tmp_path, "X_umap", n_cells=50) is None
    views.save_view(tmp_path, "X_umap", coords)
    np.testing.assert_array_equal(views.load_view(tmp_path, "X_umap", n_cells=50), coords)
    assert views.load_view(tmp_path, "X_umap", n_cells=49) is None  # other cells: not this view
    assert views.load_view(None, "X_umap", n_cells=50) is None
    labels = np.array(["0", "1", "10"] * 10)
    views.save_view(tmp_path, views.leiden_view(0.8), labels)
    assert views.leiden_view(0.8) == "leiden-0.8" and views.leiden_view(1) == "leiden-1"
    np.testing.assert_array_equal(views.load_view(tmp_path, "leiden-0.8", n_cells=30), labels)
    assert not [p for p in (tmp_path / "views").iterdir() if p.name.startswith(".")]  # no temporary left
    with pytest.raises(ValueError, match="not a view name"):
        views.save_view(tmp_path, "../escape", coords)


def test_graph_round_trip(tmp_path):
    conn = sp.random(40, 40, density=0.1, format="csr", random_state=0, dtype=np.float32)
    conn = (conn + conn.T).tocsr()
    dist = sp.random(40, 40, density=0.1, format="csr", random_state=1)
    params = {"n_neighbors": 15, "knn_search": "exact"}
    assert views.load_graph(tmp_path, n_cells=40) is None
    views.save_graph(tmp_path, dist, conn, params)
    d, c, p = views.load_graph(tmp_path, n_cells=40)
    assert (abs(c - conn)).max() == 0 and (abs(d - dist)).max() == 0 and p == params
    assert views.load_graph(tmp_path, n_cells=41) is None
    views.save_graph(tmp_path, dist, conn * 2, params)  # a second writer keeps the first graph
    assert (abs(views.load_graph(tmp_path, n_cells=40)[1] - conn)).max() == 0


def test_unwritable_folder_is_logged_not_raised(tmp_path, caplog):
    blocker = tmp_path / "run"
    blocker.write_text("a file where the run folder should be")
    views.save_view(blocker, "X_umap", np.zeros((3, 2)))
    assert "could not keep view" in caplog.text
