"""Figure builders are pure functions: check what they draw."""

import numpy as np
import pandas as pd

from dashboard import figures


def obs_frame(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "total_counts": rng.integers(500, 5000, n).astype(float),
        "n_genes_by_counts": rng.integers(100, 1000, n).astype(float),
        "pct_counts_mt": rng.uniform(0, 20, n),
        "donor": pd.Categorical(rng.choice(["a", "b", "c"], n)),
    }, index=[f"cell{i}" for i in range(n)])


def test_violin_has_one_trace_per_group_and_threshold_lines():
    obs = obs_frame()
    fig = figures.qc_violin(obs, "total_counts", groupby="donor", lower=800, upper=4000)
    assert [t.name for t in fig.data] == ["a", "b", "c"]
    assert sum(len(t.y) for t in fig.data) == len(obs)
    assert {s.y0 for s in fig.layout.shapes} == {800, 4000}


def test_scatter_greys_out_removed_cells():
    obs = obs_frame()
    kept = obs["pct_counts_mt"].to_numpy() < 10
    fig = figures.totals_vs_genes(obs, kept=kept)
    assert len(fig.data[0].x) == kept.sum()
    assert len(fig.data[1].x) == (~kept).sum()


def test_scatter_subsamples_large_data_and_says_so():
    obs = obs_frame(figures.MAX_SCATTER_POINTS + 1000)
    fig = figures.totals_vs_genes(obs)
    assert len(fig.data[0].x) == figures.MAX_SCATTER_POINTS
    assert "random 50,000 of 51,000 cells shown" in fig.layout.title.text


def test_preview_scatter_colours_each_label_and_says_the_epoch():
    from dashboard.figures import preview_scatter

    layout = np.arange(12, dtype=np.float32).reshape(6, 2)
    fig = preview_scatter(layout, np.array(["B", "T", "B", "NK", "T", "B"]), epoch=5, n_epochs=40,
                          label_name="cell_type")
    assert [t.name for t in fig.data] == ["B", "T", "NK"]
    assert [len(t.x) for t in fig.data] == [3, 2, 1]
    assert len({t.marker.color for t in fig.data}) == 3
    assert fig.layout.title.text == "Latent space at epoch 5 of 40 (6 cells, coloured by cell_type)"
    plain = preview_scatter(layout, None, epoch=1, n_epochs=2)
    assert len(plain.data) == 1 and plain.layout.title.text.endswith("(6 cells)")


def test_violin_stops_at_zero_and_shortens_long_group_names():
    obs = obs_frame()
    long_names = {"a": "CD14+ Monocytes from donor 1015", "b": "b", "c": "c"}
    obs["sample"] = pd.Categorical(obs["donor"].map(long_names))
    fig = figures.qc_violin(obs, "total_counts", groupby="sample")
    assert all(t.spanmode == "hard" for t in fig.data)  # no density tail below the smallest count
    ticks = dict(zip(fig.layout.xaxis.tickvals, fig.layout.xaxis.ticktext, strict=True))
    assert ticks["CD14+ Monocytes from donor 1015"] == "CD14+ Monocyt…" and ticks["b"] == "b"
    assert not fig.layout.yaxis.title.text  # the panel title names the metric once
