"""Explore page figure builders: traces, colours, subsampling, hover text, size sent to the browser."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from dashboard import explore_figures as ef
from dashboard.palettes import DEFAULT_20, DEFAULT_102, palette_for


def _clusters(n: int, k: int = 3) -> pd.Categorical:
    return pd.Categorical([str(i % k) for i in range(n)], categories=[str(i) for i in range(k)])


def test_categorical_colouring_gives_one_trace_per_category_with_palette_colours():
    n = 12
    colour = ef.Colouring("cell type", pd.Categorical(["B", "T", "NK"] * 4, categories=["T", "B", "NK"]))
    coords = np.arange(2 * n, dtype=float).reshape(n, 2)
    fig = ef.embedding_scatter(coords, colouring=colour, clusters=_clusters(n),
                               title="UMAP")
    assert [t.name for t in fig.data] == ["T", "B", "NK"]
    assert all(isinstance(t, go.Scattergl) for t in fig.data)
    assert [t.marker.color for t in fig.data] == list(palette_for(3)[:3])
    # Each trace holds exactly the cells of its category, identified by their row positions.
    b_rows = np.asarray(fig.data[1].customdata)
    assert b_rows.tolist() == [0, 3, 6, 9]
    np.testing.assert_allclose(fig.data[1].x, coords[b_rows, 0])
    assert sum(len(t.x) for t in fig.data) == n


def test_missing_categories_are_drawn_grey_and_named():
    values = pd.Categorical(["a", None, "b", None])
    fig = ef.embedding_scatter(np.zeros((4, 2)), colouring=ef.Colouring("x", values),
                               clusters=_clusters(4), title="t")
    assert fig.data[-1].name == ef.MISSING_LABEL
    assert fig.data[-1].marker.color == ef.MISSING_COLOUR
    assert list(fig.data[-1].customdata) == [1, 3]


def test_continuous_colouring_has_colour_bar_and_draws_high_values_last():
    values = np.array([5.0, 1.0, 3.0, np.nan], dtype=np.float32)
    fig = ef.embedding_scatter(np.eye(4, 2), colouring=ef.Colouring("CD3E (observed)", values),
                               clusters=_clusters(4), title="t",
                               point_size=6, opacity=0.5)
    (trace,) = fig.data
    assert list(trace.customdata) == [3, 1, 2, 0]  # NaN first, then increasing
    np.testing.assert_allclose(trace.marker.color[1:], [1.0, 3.0, 5.0])
    assert trace.marker.showscale and trace.marker.colorscale is not None
    assert trace.marker.size == 6 and trace.marker.opacity == 0.5


def test_hover_shows_cluster_name_and_value():
    clusters = pd.Categorical(["B cells", "T cells"])
    fig = ef.embedding_scatter(np.zeros((2, 2)), colouring=ef.Colouring("score", np.array([0.5, 2.0])),
                               clusters=clusters, title="t")
    trace = fig.data[0]
    assert list(trace.text) == ["B cells", "T cells"]
    assert "cluster: %{text}" in trace.hovertemplate and "score: %{marker.color" in trace.hovertemplate
    cat = ef.embedding_scatter(np.zeros((2, 2)), colouring=ef.Colouring("donor", pd.Categorical(["d1", "d2"])),
                               clusters=clusters, title="t")
    assert "donor: d2" in cat.data[1].hovertemplate and "cluster: %{text}" in cat.data[1].hovertemplate


def test_subsample_is_seeded_sorted_and_only_above_the_limit():
    assert np.array_equal(ef.subsample(10, max_points=10), np.arange(10))
    a = ef.subsample(1000, max_points=100, seed=3)
    b = ef.subsample(1000, max_points=100, seed=3)
    assert np.array_equal(a, b) and len(np.unique(a)) == 100 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, ef.subsample(1000, max_points=100, seed=4))


def test_large_embedding_is_subsampled_and_says_so():
    n = 1000
    rng = np.random.default_rng(0)
    fig = ef.embedding_scatter(rng.normal(size=(n, 2)), colouring=ef.Colouring("v", rng.random(n)),
                               clusters=_clusters(n), title="UMAP", max_points=300)
    assert len(fig.data[0].x) == 300
    assert "random 300 of 1,000 cells shown" in fig.layout.title.text
    rows = np.sort(np.asarray(fig.data[0].customdata))
    assert np.array_equal(rows, ef.subsample(n, max_points=300))


@pytest.mark.parametrize("categorical", [True, False])
def test_figure_for_200k_points_stays_under_20_mb(categorical):
    n = ef.MAX_POINTS
    rng = np.random.default_rng(0)
    clusters = pd.Categorical(rng.integers(0, 25, n).astype(str))
    colour = (ef.Colouring("cluster", clusters) if categorical
              else ef.Colouring("CD14 (denoised)", rng.gamma(2.0, size=n)))
    fig = ef.embedding_scatter(rng.normal(size=(n, 2)) * 10, colouring=colour, clusters=clusters, title="UMAP")
    size = len(fig.to_json())
    assert sum(len(t.x) for t in fig.data) == n
    assert size < 20e6, f"{size / 1e6:.1f} MB"


def test_more_points_than_the_limit_are_never_sent():
    n = ef.MAX_POINTS + 5000
    fig = ef.embedding_scatter(np.zeros((n, 2)), colouring=ef.Colouring("v", np.zeros(n)),
                               clusters=_clusters(n), title="t")
    assert len(fig.data[0].x) == ef.MAX_POINTS


def test_mismatched_lengths_raise_an_actionable_error():
    with pytest.raises(ValueError, match="one entry per cell"):
        ef.embedding_scatter(np.zeros((3, 2)), colouring=ef.Colouring("v", np.zeros(2)),
                             clusters=_clusters(3), title="t")


def test_cluster_sizes_counts_cells_in_category_order_with_embedding_colours():
    labels = pd.Categorical(["1", "0", "0", "2", "0"], categories=["0", "1", "2", "3"])
    fig = ef.cluster_sizes(labels)
    assert list(fig.data[0].x) == ["0", "1", "2", "3"]
    assert list(fig.data[0].y) == [3, 1, 1, 0]
    assert list(fig.data[0].marker.color) == list(palette_for(4)[:4])


def test_palette_follows_scanpy_and_keeps_30_clusters_apart():
    assert ef.category_colours(14) == list(DEFAULT_20[:14])
    colours = ef.category_colours(30)
    assert colours == list(DEFAULT_102[:30]) and len(set(colours)) == 30
    assert len(set(ef.category_colours(102))) == 102


def test_cluster_names_can_sit_on_the_plot_at_each_cluster_centre():
    coords = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0], [10.0, 10.0], [12.0, 10.0]])
    clusters = pd.Categorical(["B cells", "B cells", "B cells", "NK", "NK"])
    fig = ef.embedding_scatter(coords, colouring=ef.Colouring("cluster", clusters), clusters=clusters,
                               title="t", labels_on_data=True)
    placed = {a.text: (a.x, a.y) for a in fig.layout.annotations}
    assert placed == {"<b>B cells</b>": (1.0, 0.0), "<b>NK</b>": (11.0, 10.0)}
    plain = ef.embedding_scatter(coords, colouring=ef.Colouring("v", np.arange(5.0)), clusters=clusters,
                                 title="t", labels_on_data=True)
    assert not plain.layout.annotations  # a continuous colouring has no categories to name


def test_redraws_only_when_positions_or_colours_change():
    coords = np.random.default_rng(0).normal(size=(50, 2))
    clusters = pd.Categorical(np.repeat(["a", "b"], 25))
    values = np.arange(50.0)

    def revision(colour, xy=coords, size=3.0):
        return ef.embedding_scatter(xy, colouring=colour, clusters=clusters, title="t",
                                    point_size=size).layout.datarevision

    gene = ef.Colouring("CD79A (observed)", values)
    assert revision(gene) == revision(ef.Colouring("CD79A (observed)", values.copy()))
    assert revision(gene) != revision(ef.Colouring("CD79A (observed)", values[::-1].copy()))
    assert revision(gene) != revision(gene, xy=coords + 1)
    assert revision(gene) != revision(gene, size=4.0)
    assert revision(ef.Colouring("cluster", clusters)) != revision(
        ef.Colouring("cluster", clusters.rename_categories(["B cells", "b"])))
