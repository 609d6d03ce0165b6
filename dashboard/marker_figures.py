"""Pure figure builders of the Markers page: scanpy-style dot plot and heatmap of marker genes.

Data in, Plotly figure out; no Streamlit, tested without a browser.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import scipy.sparse as sp

from engine.preprocessing.normalize import TARGET_SUM


@dataclass(frozen=True)
class GroupExpression:
    """Per group (rows) and gene (columns): mean log1p expression and the fraction of cells expressing."""

    mean: pd.DataFrame
    fraction: pd.DataFrame


def group_expression(counts: sp.spmatrix | np.ndarray, labels: pd.Series, genes: Sequence[int],
                     gene_names: Sequence[str], groups: Sequence[str]) -> GroupExpression:
    """Mean log1p(counts per 10,000) and fraction of cells with a count, per group, of the genes at ``genes``.

    As scanpy's dot plot: the mean is over every cell of the group (expressing or not), and a cell
    expresses a gene when its count is above 0.
    """
    counts = sp.csr_matrix(counts)
    library = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    library[library == 0] = 1.0
    columns = counts[:, list(genes)].toarray().astype(np.float64)
    logn = np.log1p(columns / library[:, None] * TARGET_SUM)
    values = np.asarray(labels, dtype=str)
    mean = np.vstack([logn[values == g].mean(axis=0) for g in groups])
    fraction = np.vstack([(columns[values == g] > 0).mean(axis=0) for g in groups])
    index = pd.Index(list(groups), name="group")
    names = pd.Index(list(gene_names), name="gene")
    return GroupExpression(pd.DataFrame(mean, index=index, columns=names),
                           pd.DataFrame(fraction, index=index, columns=names))


def _gene_axis(title: str, genes: Sequence[str]) -> dict:
    # every gene named, however narrow the figure (plotly would skip every other tick label)
    return dict(title=title, tickangle=-60, type="category", categoryorder="array", categoryarray=list(genes),
                tickmode="array", tickvals=list(genes), ticktext=list(genes), automargin=True)


def _width(n_genes: int) -> int:
    return max(640, 260 + 22 * n_genes)


def dotplot(stats: GroupExpression, *, title: str = "Marker genes", width: int | None = None) -> go.Figure:
    """A dot plot as scanpy draws it: dot size = fraction of cells expressing, colour = mean expression scaled per gene.

    Each gene's means are scaled to 0-1 across groups (scanpy's ``standard_scale="var"``), so that
    lowly and highly expressed markers read alike; the hover gives the unscaled numbers.
    """
    mean, fraction = stats.mean, stats.fraction
    # The largest dot fills most of a gene's column: sized for ``width`` (an export size) or the
    # figure's own width, so that dots never overlap their neighbours.
    total = width or _width(len(mean.columns))
    plot_width = max(total - 300, 0.38 * total)  # less the group names and the colour bar
    max_size = float(np.clip(0.85 * plot_width / max(len(mean.columns), 1), 4.0, 18.0))
    span = (mean.max(axis=0) - mean.min(axis=0)).replace(0, 1.0)
    scaled = (mean - mean.min(axis=0)) / span
    genes, groups = list(mean.columns), list(mean.index)
    gx, gy = np.meshgrid(np.arange(len(genes)), np.arange(len(groups)))
    sizes = np.sqrt(fraction.to_numpy().ravel()) * max_size  # area proportional to the fraction
    fig = go.Figure(go.Scatter(
        x=[genes[i] for i in gx.ravel()], y=[groups[j] for j in gy.ravel()], mode="markers",
        marker=dict(size=np.maximum(sizes, 1.0), color=scaled.to_numpy().ravel(), colorscale="Reds", cmin=0,
                    cmax=1, line=dict(width=0.5, color="#888888"),
                    colorbar=dict(title=dict(text="mean expression<br>(scaled per gene)", side="right"),
                                  thickness=12)),
        customdata=np.column_stack([mean.to_numpy().ravel(), 100 * fraction.to_numpy().ravel()]),
        hovertemplate="%{y} · %{x}<br>mean log1p expression %{customdata[0]:.2f}"
                      "<br>%{customdata[1]:.0f}% of cells express it<extra></extra>",
    ))
    # A legend for the dot sizes, as scanpy draws one: what share of cells each size means.
    for share in (0.2, 0.5, 1.0):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"{share:.0%} of cells",
                                 marker=dict(size=np.sqrt(share) * max_size, color="#999999"),
                                 showlegend=True, hoverinfo="skip"))
    fig.data[0].showlegend = False
    fig.update_layout(legend=dict(title="expressing", orientation="h", y=-0.25 - 0.01 * max(map(len, genes))))
    _layout(fig, title, genes, groups)
    return fig


def heatmap(stats: GroupExpression, *, title: str = "Marker genes") -> go.Figure:
    """Mean expression per group, z-scored per gene across groups (red above, blue below the gene's mean)."""
    mean = stats.mean
    sd = mean.std(axis=0, ddof=0).replace(0, 1.0)
    z = (mean - mean.mean(axis=0)) / sd
    genes, groups = list(mean.columns), list(mean.index)
    limit = float(max(np.abs(z.to_numpy()).max(), 1e-9))
    fig = go.Figure(go.Heatmap(
        z=z.to_numpy(), x=genes, y=groups, colorscale="RdBu_r", zmin=-limit, zmax=limit,
        customdata=mean.to_numpy(), colorbar=dict(title=dict(text="z-score per gene", side="right"), thickness=12),
        hovertemplate="%{y} · %{x}<br>mean log1p expression %{customdata:.2f} (z %{z:.2f})<extra></extra>",
    ))
    _layout(fig, title, genes, groups)
    return fig


def _layout(fig: go.Figure, title: str, genes: list[str], groups: list[str]) -> None:
    fig.update_layout(
        title=dict(text=title), plot_bgcolor="white",
        height=max(320, 140 + 28 * len(groups)), width=_width(len(genes)),
        margin=dict(l=10, r=10, t=60, b=10),
        xaxis=_gene_axis("", genes),
        yaxis=dict(title="", type="category", categoryorder="array", categoryarray=list(groups)[::-1],
                   automargin=True),
    )
