"""Pure figure builders: data in, Plotly figure out. No Streamlit, tested without a browser."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly import colors as plotly_colors

DEFAULT_COLOURS = tuple(plotly_colors.DEFAULT_PLOTLY_COLORS)  # Plotly's own violins cycle through these

# Above this many cells a scatter draws a seeded random subsample and says so in its title.
MAX_SCATTER_POINTS = 50_000
# Above this many cells the QC violins are a density view: each violin's outline is computed here from
# every cell (a histogram smoothed with a Gaussian kernel) and its box from every cell's quartiles,
# so the browser draws a few hundred points per violin instead of estimating the density of every
# value it is sent (3 violins of 1M cells took 42 s to appear in Chromium; benchmarks/explore_scale.py).
MAX_VIOLIN_POINTS = 50_000
DENSITY_BINS = 200
VIOLIN_HALF_WIDTH = 0.4  # in group slots

QC_LABELS = {
    "total_counts": "Total counts per cell",
    "n_genes_by_counts": "Genes detected per cell",
    "pct_counts_mt": "% mitochondrial counts",
}


MAX_TICK_CHARS = 14  # longer group names are shortened on violin axes


def violin_density(values: np.ndarray, *, bins: int = DENSITY_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Density of ``values`` on ``bins`` points from their minimum to their maximum (a violin's outline).

    A histogram of every value smoothed with a Gaussian kernel of Silverman's bandwidth (as Plotly's
    violins), at least one bin wide; the density stops at the data's range, as ``spanmode="hard"``.
    Returns ``(grid, density)``, the density scaled to a maximum of 1.
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.zeros(0), np.zeros(0)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.array([low, low]), np.ones(2)
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    grid = (edges[:-1] + edges[1:]) / 2
    q1, q3 = np.percentile(values, [25, 75])
    spread = min(values.std(), (q3 - q1) / 1.349) or values.std()
    bandwidth = 0.9 * spread * values.size ** -0.2 / (edges[1] - edges[0])  # in bins
    sigma = max(bandwidth, 1.0)
    offsets = np.arange(-int(4 * sigma) - 1, int(4 * sigma) + 2)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    density = np.convolve(counts.astype(float), kernel / kernel.sum(), mode="same")
    grid = np.concatenate([[low], grid, [high]])
    density = np.concatenate([[density[0]], density, [density[-1]]])
    return grid, density / density.max()


def _box_stats(values: np.ndarray) -> dict[str, list[float]]:
    """Quartiles and Tukey's fences (as Plotly's box): the extreme values within 1.5 IQR of the box."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    iqr = q3 - q1
    low = values[values >= q1 - 1.5 * iqr].min()
    high = values[values <= q3 + 1.5 * iqr].max()
    return {"q1": [q1], "median": [median], "q3": [q3], "lowerfence": [low], "upperfence": [high]}


def _density_violin(fig: go.Figure, values: np.ndarray, position: int, name: str, colour: str) -> None:
    grid, density = violin_density(values)
    if grid.size == 0:
        return
    half = VIOLIN_HALF_WIDTH * density
    fig.add_trace(go.Scatter(
        x=np.concatenate([position + half, (position - half)[::-1]]), y=np.concatenate([grid, grid[::-1]]),
        fill="toself", mode="lines", line=dict(color=colour, width=1), fillcolor=colour, opacity=0.5,
        name=name, showlegend=False, hoveron="fills", hoverinfo="text",
        text=f"{name}: {np.isfinite(values).sum():,} cells"))
    fig.add_trace(go.Box(x=[position], **_box_stats(values), name=name, width=0.08, showlegend=False,
                         marker_color=colour, line=dict(color="#333333", width=1), fillcolor="white",
                         hoverinfo="y"))


def qc_violin(obs: pd.DataFrame, metric: str, *, groupby: str | None = None,
              lower: float | None = None, upper: float | None = None,
              max_points: int = MAX_VIOLIN_POINTS) -> go.Figure:
    """Violin (with box) of one per-cell QC metric, one violin per group, with threshold lines.

    The density stops at the data's range (no tail below 0 counts); long group names are shortened
    on the axis (the hover gives them whole) so the violins keep their width. Above ``max_points``
    cells the violins are a density view computed here from every cell (:func:`violin_density`),
    which the title says.
    """
    label = QC_LABELS.get(metric, metric)
    values = obs[metric].to_numpy()
    groups = None if groupby is None else obs[groupby].astype("category")
    names: list[str] = ["all cells"] if groups is None else [str(name) for name in groups.cat.categories]
    dense = len(obs) > max_points
    fig = go.Figure()
    if dense:
        label = f"{label}<br><sup>densities of all {len(obs):,} cells</sup>"
        if groups is None:
            _density_violin(fig, values, 0, "all cells", "#4C78A8")
        else:
            codes = groups.cat.codes.to_numpy()
            order = np.argsort(codes, kind="stable")
            starts = np.searchsorted(codes[order], np.arange(len(names) + 1))
            palette = DEFAULT_COLOURS
            for code, name in enumerate(names):
                _density_violin(fig, values[order[starts[code]:starts[code + 1]]], code, name,
                                palette[code % len(palette)])
    elif groups is None:
        fig.add_trace(go.Violin(y=values, name="all cells", box_visible=True, spanmode="hard",
                                points=False, line_color="#4C78A8", showlegend=False))
    else:
        codes = groups.cat.codes.to_numpy()
        for code, name in enumerate(groups.cat.categories):
            fig.add_trace(go.Violin(y=values[codes == code], name=str(name), box_visible=True, points=False,
                                    spanmode="hard", showlegend=False, hoveron="violins",
                                    hovertemplate=f"{name}<extra></extra>"))
    for value, text in ((lower, "min"), (upper, "max")):
        if value is not None:
            fig.add_hline(y=value, line_dash="dash", line_color="#E45756",
                          annotation_text=f"{text} {value:g}", annotation_position="top left")
    # group names such as donor ids "1015" are labels, not numbers
    short = [n if len(n) <= MAX_TICK_CHARS else n[: MAX_TICK_CHARS - 1] + "…" for n in names]
    longest = max(map(len, short))
    # a third of the page holds ~36 characters of labels side by side (8 x "donor0" overlapped)
    rotate = len(names) > 4 and longest * len(names) > 36
    tickangle = -45 if rotate else 0
    if dense:  # the outlines are drawn at group positions 0, 1, ...
        fig.update_xaxes(type="linear", tickvals=list(range(len(names))), ticktext=short, automargin=True,
                         tickangle=tickangle, range=[-0.6, len(names) - 0.4], showgrid=False, zeroline=False)
    else:
        fig.update_xaxes(type="category", tickvals=names, ticktext=short, automargin=True, tickangle=tickangle)
    # The metric is in the panel's title; the y axis needs no second title on top of its ticks.
    fig.update_yaxes(automargin=True, rangemode="tozero")
    fig.update_layout(title=label, xaxis_title=groupby or "",
                      margin=dict(l=10, r=10, t=60 if dense else 40, b=10),
                      height=320 + (6 * longest if rotate else 0))
    return fig


def totals_vs_genes(obs: pd.DataFrame, *, kept: np.ndarray | None = None, seed: int = 0) -> go.Figure:
    """Total counts against genes detected per cell, coloured by % mitochondrial counts.

    ``kept`` (boolean per cell) draws cells removed by the current thresholds in grey.
    """
    n = len(obs)
    idx = np.arange(n)
    title = "Total counts vs genes detected, coloured by % mitochondrial"
    if n > MAX_SCATTER_POINTS:
        idx = np.sort(np.random.default_rng(seed).choice(n, MAX_SCATTER_POINTS, replace=False))
        # on its own line: appended to the title it ran off the chart's edge
        subtitle = f"<br><sup>a random {MAX_SCATTER_POINTS:,} of {n:,} cells shown</sup>"
    else:
        subtitle = ""
    sub = obs.iloc[idx]
    keep = np.ones(len(idx), bool) if kept is None else np.asarray(kept)[idx]
    if (obs["pct_counts_mt"] > 0).any():
        marker = dict(size=4, color=sub["pct_counts_mt"][keep], colorscale="Viridis",
                      colorbar=dict(title="% mito"), showscale=True)
    else:
        marker = dict(size=4, color="#4C78A8")
        title = title.replace(", coloured by % mitochondrial", " (no mitochondrial genes found)")
    fig = go.Figure()
    fig.add_trace(go.Scattergl(
        x=sub["total_counts"][keep], y=sub["n_genes_by_counts"][keep], mode="markers",
        name="kept", text=sub.index[keep], marker=marker,
        hovertemplate="%{text}<br>total %{x:,.0f}<br>genes %{y:,.0f}<extra></extra>",
    ))
    if not keep.all():
        fig.add_trace(go.Scattergl(
            x=sub["total_counts"][~keep], y=sub["n_genes_by_counts"][~keep], mode="markers",
            name="removed by thresholds", text=sub.index[~keep],
            marker=dict(size=4, color="#BBBBBB"),
            hovertemplate="%{text} (removed)<br>total %{x:,.0f}<br>genes %{y:,.0f}<extra></extra>",
        ))
    fig.update_layout(title=title + subtitle, xaxis_title="Total counts", yaxis_title="Genes detected",
                      legend=dict(orientation="h", y=-0.2), margin=dict(l=10, r=10, t=60 if subtitle else 40, b=10),
                      height=420)
    return fig


def gene_detection_histogram(pct_cells: pd.Series) -> go.Figure:
    """Histogram of the per-gene detection rate (% of cells in which a gene has a count)."""
    fig = go.Figure(go.Histogram(x=pct_cells, nbinsx=50, marker_color="#72B7B2"))
    fig.update_layout(title="Detection rate per gene", xaxis_title="% of cells expressing the gene",
                      yaxis_title="genes", margin=dict(l=10, r=10, t=40, b=10), height=320)
    return fig


def elbo_curve(history: pd.DataFrame, *, title: str = "Training curve") -> go.Figure:
    """Train and validation ELBO per epoch (higher is better).

    ``history``: one row per epoch with columns epoch, train_elbo and validation_elbo (NaN when there
    is no validation set).
    """
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=history["epoch"], y=history["train_elbo"], mode="lines",
                             name="train", line=dict(color="#4C78A8")))
    if "validation_elbo" in history and history["validation_elbo"].notna().any():
        fig.add_trace(go.Scatter(x=history["epoch"], y=history["validation_elbo"], mode="lines",
                                 name="validation", line=dict(color="#F58518")))
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title="ELBO per cell (higher is better)",
                      legend=dict(orientation="h", y=-0.25), margin=dict(l=10, r=10, t=40, b=10),
                      height=340,
                      # The live page redraws every 2 s; the browser recomputes only when an epoch was added.
                      datarevision=len(history), uirevision="curve")
    return fig


def latent_activity(activity: dict[str, np.ndarray]) -> go.Figure:
    """Variance of the posterior mean per latent dimension, one bar group per run.

    Dimensions with activity near 0 are unused ("collapsed"): a smaller latent would do.
    """
    fig = go.Figure()
    for label, values in activity.items():
        fig.add_trace(go.Bar(x=[f"z{i + 1}" for i in range(len(values))], y=values, name=label))
    fig.update_layout(title="Latent activity per dimension", yaxis_title="variance of posterior mean",
                      yaxis_type="log", barmode="group", legend=dict(orientation="h", y=-0.25),
                      margin=dict(l=10, r=10, t=40, b=10), height=340)
    return fig


def ppc_scatter(points: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], *, title: str, axis: str,
                log: bool = False) -> go.Figure:
    """Per-gene statistic observed (x) against the same statistic on data sampled from each model (y).

    ``points`` maps a run's label to its (observed, sampled, gene names), each run on its own genes.
    Points on the diagonal mean the model reproduces the data.
    """
    fig = go.Figure()
    lo, hi = np.inf, -np.inf
    for label, (observed, sampled, genes) in points.items():
        fig.add_trace(go.Scattergl(
            x=observed, y=sampled, mode="markers", name=label, marker=dict(size=4, opacity=0.6),
            text=genes, hovertemplate="%{text}<br>observed %{x:.3g}<br>model %{y:.3g}<extra>"
            + label + "</extra>"))
        both = np.concatenate([np.asarray(observed, float), np.asarray(sampled, float)])
        lo, hi = min(lo, float(np.nanmin(both))), max(hi, float(np.nanmax(both)))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="observed = model",
                             line=dict(color="#888", dash="dash")))
    kind = "log" if log else "linear"
    fig.update_layout(title=title, xaxis_title=f"observed {axis}", yaxis_title=f"model {axis}",
                      xaxis_type=kind, yaxis_type=kind, legend=dict(orientation="h", y=-0.25),
                      margin=dict(l=10, r=10, t=40, b=10), height=380)
    return fig


def preview_scatter(layout: np.ndarray, labels: np.ndarray | None, *, epoch: int, n_epochs: int,
                    label_name: str = "") -> go.Figure:
    """The live training preview: a UMAP of a subsample's current latent, coloured by ``labels``."""
    from dashboard.explore_figures import category_colours

    fig = go.Figure()
    if labels is None:
        fig.add_trace(go.Scattergl(x=layout[:, 0], y=layout[:, 1], mode="markers", showlegend=False,
                                   marker=dict(size=3, color="#4C78A8", opacity=0.7), hoverinfo="skip"))
    else:
        names = pd.unique(np.asarray(labels, dtype=str))
        for name, colour in zip(names, category_colours(len(names)), strict=True):
            rows = np.asarray(labels, dtype=str) == name
            fig.add_trace(go.Scattergl(x=layout[rows, 0], y=layout[rows, 1], mode="markers", name=name,
                                       marker=dict(size=3, color=colour, opacity=0.7), hoverinfo="name"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, scaleanchor="x")
    title = f"Latent space at epoch {epoch} of {n_epochs} ({len(layout):,} cells"
    fig.update_layout(title=title + (f", coloured by {label_name})" if label_name else ")"),
                      legend=dict(itemsizing="constant"), margin=dict(l=10, r=10, t=40, b=10), height=380,
                      uirevision="preview",  # keep the user's zoom between refreshes
                      # The page redraws every 2 s during training; the browser redraws the points only
                      # when a new picture arrived (every few epochs), not at every refresh.
                      datarevision=epoch)
    return fig
