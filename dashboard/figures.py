"""Pure figure builders: data in, Plotly figure out. No Streamlit, tested without a browser."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

# Above this many cells a scatter draws a seeded random subsample and says so in its title.
MAX_SCATTER_POINTS = 50_000
# A QC violin is drawn from at most this many cells (each group keeps at least MIN_GROUP_POINTS, or
# all its cells), a seeded random subsample: the browser computes a violin's density from every
# value it is sent, 1M values per violin took seconds. Thresholds and kept counts use every cell.
MAX_VIOLIN_POINTS = 100_000
MIN_GROUP_POINTS = 1_000

QC_LABELS = {
    "total_counts": "Total counts per cell",
    "n_genes_by_counts": "Genes detected per cell",
    "pct_counts_mt": "% mitochondrial counts",
}


MAX_TICK_CHARS = 14  # longer group names are shortened on violin axes


def violin_rows(obs: pd.DataFrame, *, groupby: str | None = None, max_points: int = MAX_VIOLIN_POINTS,
                seed: int = 0) -> np.ndarray:
    """Rows a QC violin is drawn from: every cell up to ``max_points``, else a seeded random subsample.

    Each group keeps ``max_points / n_groups`` cells but at least ``MIN_GROUP_POINTS`` (or all of a
    smaller group), so a small group's violin is not drawn from a handful of cells. Sorted.
    """
    codes = None if groupby is None else obs[groupby].astype("category").cat.codes.to_numpy()
    return _violin_rows(len(obs), codes, max_points=max_points, seed=seed)


def _violin_rows(n: int, codes: np.ndarray | None, *, max_points: int, seed: int) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if codes is None:
        return np.sort(rng.choice(n, max_points, replace=False))
    n_groups = max(int(codes.max()) + 1, 1)
    per_group = max(max_points // n_groups, MIN_GROUP_POINTS)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(n_groups + 1))
    picked = []
    for g in range(n_groups):
        members = order[starts[g]:starts[g + 1]]
        picked.append(members if len(members) <= per_group else rng.choice(members, per_group, replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.arange(0)


def qc_violin(obs: pd.DataFrame, metric: str, *, groupby: str | None = None,
              lower: float | None = None, upper: float | None = None,
              max_points: int = MAX_VIOLIN_POINTS, seed: int = 0) -> go.Figure:
    """Violin (with box) of one per-cell QC metric, one violin per group, with threshold lines.

    The density stops at the data's range (no tail below 0 counts); long group names are shortened
    on the axis (the hover gives them whole) so the violins keep their width. Above ``max_points``
    cells the violins are drawn from a random subsample (:func:`violin_rows`), which the title says.
    """
    label = QC_LABELS.get(metric, metric)
    values = obs[metric].to_numpy()
    groups = None if groupby is None else obs[groupby].astype("category")
    codes = None if groups is None else groups.cat.codes.to_numpy()
    rows = _violin_rows(len(obs), codes, max_points=max_points, seed=seed)
    subsampled = len(rows) < len(obs)
    if subsampled:
        label = f"{label}<br><sup>random {len(rows):,} of {len(obs):,} cells shown</sup>"
        values = values[rows]
        codes = None if codes is None else codes[rows]
    fig = go.Figure()
    if groups is None:
        fig.add_trace(go.Violin(y=values, name="all cells", box_visible=True, spanmode="hard",
                                points=False, line_color="#4C78A8", showlegend=False))
        names: list[str] = ["all cells"]
    else:
        names = [str(name) for name in groups.cat.categories]
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
    fig.update_xaxes(type="category", tickvals=names, ticktext=short, automargin=True,
                     tickangle=-45 if longest > 6 and len(names) > 4 else 0)
    # The metric is in the panel's title; the y axis needs no second title on top of its ticks.
    fig.update_yaxes(automargin=True, rangemode="tozero")
    fig.update_layout(title=label, xaxis_title=groupby or "",
                      margin=dict(l=10, r=10, t=60 if subsampled else 40, b=10),
                      height=320 + (6 * longest if longest > 6 and len(names) > 4 else 0))
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
        title += f" (random {MAX_SCATTER_POINTS:,} of {n:,} cells shown)"
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
    fig.update_layout(title=title, xaxis_title="Total counts", yaxis_title="Genes detected",
                      legend=dict(orientation="h", y=-0.2), margin=dict(l=10, r=10, t=40, b=10),
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
