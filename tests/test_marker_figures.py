"""Markers page figures: group statistics as scanpy's dot plot computes them, dot plot and heatmap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from dashboard import marker_figures as mf


def _toy():
    counts = sp.csr_matrix(np.array([[10, 0, 90], [0, 5, 95], [20, 20, 60], [0, 0, 100]], dtype=np.float32))
    labels = pd.Series(["a", "a", "b", "b"])
    return counts, labels


def test_group_expression_means_over_every_cell_and_fractions_above_zero():
    counts, labels = _toy()
    stats = mf.group_expression(counts, labels, [0, 1], ["G0", "G1"], ["a", "b"])
    # cell 0: 10 of 100 counts -> log1p(1000); cell 1: 0
    assert stats.mean.loc["a", "G0"] == np.float64((np.log1p(1000.0) + 0.0) / 2)
    assert stats.fraction.loc["a", "G0"] == 0.5 and stats.fraction.loc["b", "G1"] == 0.5
    assert list(stats.mean.index) == ["a", "b"] and list(stats.mean.columns) == ["G0", "G1"]


def test_dotplot_sizes_follow_fractions_and_colours_are_scaled_per_gene():
    counts, labels = _toy()
    stats = mf.group_expression(counts, labels, [0, 1, 2], ["G0", "G1", "G2"], ["a", "b"])
    fig = mf.dotplot(stats)
    trace = fig.data[0]
    sizes = dict(zip(zip(trace.y, trace.x, strict=True), trace.marker.size, strict=True))
    assert sizes[("a", "G2")] > sizes[("a", "G0")]  # every a cell expresses G2, half express G0
    colours = np.asarray(trace.marker.color)
    assert colours.min() == 0.0 and colours.max() == 1.0
    assert fig.layout.xaxis.categoryarray == ("G0", "G1", "G2")


def test_heatmap_is_z_scored_per_gene_with_a_symmetric_scale():
    counts, labels = _toy()
    stats = mf.group_expression(counts, labels, [0, 1], ["G0", "G1"], ["a", "b"])
    fig = mf.heatmap(stats)
    z = np.asarray(fig.data[0].z)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    assert fig.data[0].zmin == -fig.data[0].zmax
