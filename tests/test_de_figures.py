"""Figure builders of the Differential expression page (dashboard.de_figures), without a browser."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from dashboard import de_figures as figs


def _table() -> pd.DataFrame:
    """A DE table shaped like DEResult.table(): gene 0-1 DE up, 2 DE down, 3-5 not DE."""
    proba = np.array([0.999, 0.98, 0.97, 0.6, 0.3, 0.1])
    lfc = np.array([3.0, 1.5, -2.0, 0.4, -0.1, 0.05])
    sign = np.sign(lfc)
    return pd.DataFrame(
        {
            "gene": ["CD3E", "IL7R", "LYZ", "ACTB", "B2M", "MALAT1"],
            "lfc_mean": lfc,
            "proba_de": proba,
            "bayes_factor": sign * np.log(proba / (1 - proba)),
            "is_de_fdr": proba > 0.9,
            "mean_norm_1": np.array([80.0, 20.0, 1.0, 500.0, 900.0, 1200.0]),
            "mean_norm_2": np.array([10.0, 7.0, 4.0, 380.0, 950.0, 1150.0]),
        },
        index=pd.Index([f"ENSG{i:03d}" for i in range(6)], name="var_name"),
    )


def test_volcano_colours_genes_by_fdr_call():
    table = _table()
    fig = figs.volcano(table, delta=0.25, group_names=("T cells", "monocytes"))
    de, rest = fig.data[0], fig.data[1]
    assert de.marker.color == figs.DE_COLOR and rest.marker.color == figs.NOT_DE_COLOR
    assert list(de.customdata[:, 1]) == ["CD3E", "IL7R", "LYZ"]
    assert list(rest.customdata[:, 1]) == ["ACTB", "B2M", "MALAT1"]
    np.testing.assert_allclose(de.x, [3.0, 1.5, -2.0])
    np.testing.assert_allclose(de.y, [0.999, 0.98, 0.97])
    assert "3 of 6 genes DE" in fig.layout.title.text
    assert fig.layout.xaxis.title.text == "LFC mean (log2 T cells / monocytes)"


def test_volcano_hover_names_the_gene_and_its_numbers():
    fig = figs.volcano(_table(), group_names=("T cells", "monocytes"))
    hover = fig.data[0].hovertemplate
    for part in ("customdata[1]", "customdata[0]", "LFC mean", "P(DE)", "log Bayes factor",
                 "expression T cells", "expression monocytes"):
        assert part in hover
    # The first customdata entry is the var_name a click hands back.
    assert fig.data[0].customdata[0, 0] == "ENSG000"


def test_volcano_threshold_lines_at_delta_and_the_fdr_cut():
    fig = figs.volcano(_table(), delta=0.5)
    vertical = sorted(s.x0 for s in fig.layout.shapes if s.x0 == s.x1)
    horizontal = [s.y0 for s in fig.layout.shapes if s.y0 == s.y1]
    assert vertical == [-0.5, 0.5]
    assert horizontal == [pytest.approx(0.97)]  # smallest P(DE) among the genes called
    no_delta = figs.volcano(_table(), delta=None)  # vanilla mode: no delta lines
    assert not [s for s in no_delta.layout.shapes if s.x0 == s.x1]


def test_volcano_bayes_factor_axis_uses_its_magnitude():
    table = _table()
    fig = figs.volcano(table, y="bayes_factor")
    expected = np.abs(np.log(0.97 / 0.03))  # LYZ is down: negative factor, plotted by magnitude
    assert fig.data[0].y[2] == pytest.approx(expected)
    assert fig.layout.yaxis.title.text == "|log Bayes factor|"
    with pytest.raises(ValueError, match="y must be one of 'proba_de', 'bayes_factor'"):
        figs.volcano(table, y="pvalue")


def test_volcano_without_de_genes_has_no_fdr_line_and_rings_the_selected_gene():
    table = _table().assign(is_de_fdr=False)
    fig = figs.volcano(table, selected="ENSG003")
    assert not [s for s in fig.layout.shapes if s.y0 == s.y1]
    ring = fig.data[-1]
    assert list(ring.text) == ["ACTB"] and ring.x[0] == pytest.approx(0.4)


def test_clicked_gene_reads_the_var_name_from_customdata():
    assert figs.clicked_gene([{"point_index": 2, "customdata": ["ENSG002", "LYZ", -2.0]}]) == "ENSG002"
    assert figs.clicked_gene([{"point_index": 0}]) is None
    assert figs.clicked_gene([]) is None


def test_gene_embedding_draws_expressing_cells_on_top():
    coords = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    fig = figs.gene_embedding(coords, np.array([2.0, 0.0, 1.0]), gene="LYZ", basis="UMAP")
    trace = fig.data[0]
    np.testing.assert_allclose(trace.marker.color, [0.0, 1.0, 2.0])
    np.testing.assert_allclose(trace.x, [1.0, 2.0, 0.0])
    assert fig.layout.title.text == "LYZ on the UMAP"
    with pytest.raises(ValueError, match="coords must be"):
        figs.gene_embedding(coords[:, :1], np.zeros(3), gene="LYZ")


def test_gene_embedding_subsamples_large_data():
    n = figs.MAX_SCATTER_POINTS + 10
    fig = figs.gene_embedding(np.zeros((n, 2)), np.zeros(n), gene="CD3E")
    assert len(fig.data[0].x) == figs.MAX_SCATTER_POINTS
    assert "random 50,000 of 50,010 cells" in fig.layout.title.text


def test_gene_violins_one_per_group_with_sizes():
    fig = figs.gene_violins({"B cells": np.array([1.0, 2.0]), "rest": np.array([0.0, 0.0, 0.5])},
                            gene="MS4A1")
    assert [t.name for t in fig.data] == ["B cells (2 cells)", "rest (3 cells)"]
    assert all(isinstance(t, go.Violin) for t in fig.data)
    np.testing.assert_allclose(fig.data[1].y, [0.0, 0.0, 0.5])


def test_concordance_scatter_ranks_and_top_overlap():
    de = _table()
    wilcoxon = de.iloc[[1, 0, 5, 3, 4, 2]]  # CD3E rank 2, IL7R rank 1, LYZ rank 6
    fig = figs.concordance_scatter(de, wilcoxon, top_n=2)
    both = fig.data[0]
    assert list(both.text) == ["CD3E", "IL7R"]
    np.testing.assert_array_equal(both.x, [1, 2])
    np.testing.assert_array_equal(both.y, [2, 1])
    assert "(2)" in both.name
    with pytest.raises(ValueError, match="different genes"):
        figs.concordance_scatter(de, wilcoxon.iloc[:4])


def test_volcano_labels_the_top_genes_called_de():
    table = _table()
    fig = figs.volcano(table, label_top=2)
    labels = [a.text for a in fig.layout.annotations if a.text != "FDR threshold"]
    assert labels == ["CD3E", "IL7R"]  # the two highest P(DE) among the three called DE
    every = figs.volcano(table, label_top=10)
    assert {a.text for a in every.layout.annotations} - {"FDR threshold"} == {"CD3E", "IL7R", "LYZ"}
    assert not [a for a in figs.volcano(table, label_top=0).layout.annotations if a.text != "FDR threshold"]
    # the y title keeps clear of the tick labels (automargin); the FDR label sits on the right
    assert fig.layout.yaxis.automargin
    fdr_label = next(a for a in fig.layout.annotations if a.text == "FDR threshold")
    assert fdr_label.xanchor == "right"
