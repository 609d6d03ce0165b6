"""QC violins of the Data page at atlas scale: drawn from a subsample, said in the title (issue 15)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from dashboard.figures import MAX_VIOLIN_POINTS, MIN_GROUP_POINTS, qc_violin, violin_rows


def _obs(n: int, groups: list[str], weights: list[float], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "total_counts": rng.lognormal(8, 0.5, n), "n_genes_by_counts": rng.integers(200, 4000, n).astype(float),
        "pct_counts_mt": rng.uniform(0, 20, n),
        "donor": pd.Categorical(rng.choice(groups, n, p=weights), categories=groups),
    }, index=pd.RangeIndex(n).astype(str))


def _values(fig) -> int:
    return sum(len(trace.y) for trace in fig.data)


def test_small_data_is_drawn_whole_with_the_usual_title():
    obs = _obs(2_000, ["a", "b"], [0.5, 0.5])
    fig = qc_violin(obs, "total_counts", groupby="donor", lower=500)
    assert _values(fig) == 2_000
    assert fig.layout.title.text == "Total counts per cell"
    assert violin_rows(obs).tolist() == list(range(2_000))


def test_a_million_cells_are_drawn_from_a_subsample_that_says_so():
    obs = _obs(1_000_000, ["big", "medium", "tiny"], [0.899, 0.1, 0.001])
    started = time.perf_counter()
    fig = qc_violin(obs, "n_genes_by_counts", groupby="donor", lower=300)
    whole = qc_violin(obs, "total_counts")
    assert time.perf_counter() - started < 3.0
    assert "random" in fig.layout.title.text and "of 1,000,000 cells shown" in fig.layout.title.text
    assert _values(whole) == MAX_VIOLIN_POINTS
    per_group = {trace.name: len(trace.y) for trace in fig.data}
    # every group is shown; a small group keeps all its cells (here ~1,000), the others their share
    tiny = int((obs["donor"] == "tiny").sum())
    assert per_group["tiny"] == min(tiny, max(MAX_VIOLIN_POINTS // 3, MIN_GROUP_POINTS))
    assert per_group["big"] == per_group["medium"] == MAX_VIOLIN_POINTS // 3
    # the threshold line is still where it was asked for
    assert any(shape.y0 == 300 for shape in fig.layout.shapes)


def test_subsample_is_seeded_and_keeps_the_distribution():
    obs = _obs(300_000, ["a", "b"], [0.5, 0.5])
    rows = violin_rows(obs, groupby="donor")
    assert rows.tolist() == violin_rows(obs, groupby="donor").tolist()
    assert np.all(np.diff(rows) > 0)
    full, sub = obs["total_counts"].to_numpy(), obs["total_counts"].to_numpy()[rows]
    assert abs(np.median(sub) / np.median(full) - 1) < 0.01
