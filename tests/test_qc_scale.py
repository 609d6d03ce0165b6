"""QC violins of the Data page at atlas scale: a density view computed from every cell (issue 15)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.figures import MAX_VIOLIN_POINTS, qc_violin, violin_density


def _obs(n: int, groups: list[str], weights: list[float], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "total_counts": rng.lognormal(8, 0.5, n), "n_genes_by_counts": rng.integers(200, 4000, n).astype(float),
        "pct_counts_mt": rng.uniform(0, 20, n),
        "donor": pd.Categorical(rng.choice(groups, n, p=weights), categories=groups),
    }, index=pd.RangeIndex(n).astype(str))


def test_small_data_keeps_plotlys_violins_of_every_value():
    obs = _obs(2_000, ["a", "b"], [0.5, 0.5])
    fig = qc_violin(obs, "total_counts", groupby="donor", lower=500)
    assert all(isinstance(t, go.Violin) for t in fig.data) and sum(len(t.y) for t in fig.data) == 2_000
    assert fig.layout.title.text == "Total counts per cell"


def test_a_million_cells_are_a_density_view_of_every_cell():
    obs = _obs(1_000_000, ["big", "medium", "tiny"], [0.899, 0.1, 0.001])
    started = time.perf_counter()
    fig = qc_violin(obs, "n_genes_by_counts", groupby="donor", lower=300)
    whole = qc_violin(obs, "total_counts")
    assert time.perf_counter() - started < 3.0
    assert fig.layout.title.text.endswith("<sup>densities of all 1,000,000 cells</sup>")
    sent = sum(len(t.y) for t in (*fig.data, *whole.data) if t.y is not None)
    assert sent < 2_000  # a few hundred points per violin, whatever the number of cells
    outlines = [t for t in fig.data if isinstance(t, go.Scatter)]
    boxes = [t for t in fig.data if isinstance(t, go.Box)]
    assert [t.name for t in outlines] == [t.name for t in boxes] == ["big", "medium", "tiny"]
    # each box holds the quartiles of every cell of its group
    tiny = obs.loc[obs["donor"] == "tiny", "n_genes_by_counts"].to_numpy()
    assert boxes[2].median[0] == np.median(tiny) and boxes[2].q1[0] == np.percentile(tiny, 25)
    assert fig.layout.xaxis.ticktext == ("big", "medium", "tiny")
    assert any(shape.y0 == 300 for shape in fig.layout.shapes)  # the threshold line is still there


def test_density_spans_the_data_and_peaks_where_the_values_are():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(10, 1, 50_000), rng.normal(20, 1, 10_000)])
    grid, density = violin_density(values)
    assert grid[0] == values.min() and grid[-1] == values.max()  # no tail beyond the data
    assert density.max() == 1.0
    peak = grid[np.argmax(density)]
    assert abs(peak - 10) < 0.5
    second = grid[grid > 15][np.argmax(density[grid > 15])]
    assert abs(second - 20) < 0.5 and 0.1 < density[grid > 15].max() < 0.4  # 1/5 of the cells


def test_threshold_between_the_two_views():
    small = _obs(MAX_VIOLIN_POINTS, ["a"], [1.0])
    big = _obs(MAX_VIOLIN_POINTS + 1, ["a"], [1.0])
    assert isinstance(qc_violin(small, "total_counts").data[0], go.Violin)
    assert isinstance(qc_violin(big, "total_counts").data[0], go.Scatter)
