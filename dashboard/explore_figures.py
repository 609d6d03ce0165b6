"""Pure figure builders of the Explore page: embeddings coloured by anything, cluster sizes.

Data in, Plotly figure out; no Streamlit, tested without a browser.

Large data: a scatter never draws more than :data:`MAX_POINTS` cells. Above that it draws a seeded
random subsample (:func:`subsample`, ``numpy.random.default_rng(seed).choice`` without replacement,
sorted) and says so in its title. Points are WebGL (``Scattergl``) with float32 coordinates, which
Plotly serialises as binary arrays, so 200,000 points stay well under 20 MB of JSON.

Every point carries its row position in the data as ``customdata``: a lasso or box selection maps back
to cells through it, whatever the subsample or the split of points into one trace per category.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.palettes import palette_for

# Above this many cells a scatter draws a seeded random subsample of this size and says so. A
# uniform subsample keeps the density: each region keeps its share of the points. Measured at 1M
# cells (benchmarks/explore_scale.py, headless Chromium): the canvas draws 1M points (0.3-0.6 s a
# pass, 36 MB of JS heap), but every rerun sends the positions again, so a colour change took
# 2.6 s with 1M drawn against 0.8 s with 200k, and the first picture 6.0 s against 2.0 s.
MAX_POINTS = 200_000
MAX_POINTS_ENV = "ATLAS_MAX_POINTS"  # the Explore scatter's cap, when set (see cell_scatter.drawing_cap)
SUBSAMPLE_SEED = 0

MISSING_COLOUR = "#BBBBBB"
MISSING_LABEL = "(no value)"
CONTINUOUS_SCALE = "Viridis"


@dataclass(frozen=True)
class Colouring:
    """What the points are coloured by: one value per cell, in the data's cell order.

    ``values`` is a ``pandas.Categorical`` for a categorical colouring (one legend entry per category,
    in category order) and a float array for a continuous one (a colour bar).
    """

    label: str
    values: pd.Categorical | np.ndarray

    @property
    def categorical(self) -> bool:
        """Whether the colouring is categorical (a legend) rather than continuous (a colour bar)."""
        return isinstance(self.values, pd.Categorical)


def subsample(n_cells: int, *, max_points: int = MAX_POINTS, seed: int = SUBSAMPLE_SEED) -> np.ndarray:
    """Row positions drawn: all cells up to ``max_points``, else a seeded random subsample, sorted."""
    if n_cells <= max_points:
        return np.arange(n_cells)
    return np.sort(np.random.default_rng(seed).choice(n_cells, max_points, replace=False))


def drawn_rows(coords: np.ndarray, *, colouring: Colouring, clusters, title: str,
               max_points: int = MAX_POINTS, seed: int = SUBSAMPLE_SEED) -> tuple[np.ndarray, str]:
    """The rows a scatter draws (see :func:`subsample`) and its title, which says when it is a subsample.

    Raises when ``coords`` is not ``(n_cells, 2)`` or the colouring and clusters do not have one
    entry per cell.
    """
    n = coords.shape[0]
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords has shape {coords.shape}; expected (n_cells, 2)")
    if len(colouring.values) != n or len(clusters) != n:
        raise ValueError(f"coords ({n} cells), colouring ({len(colouring.values)}) and clusters "
                         f"({len(clusters)}) must have one entry per cell")
    rows = subsample(n, max_points=max_points, seed=seed)
    if len(rows) < n:
        title = f"{title}<br><sup>random {len(rows):,} of {n:,} cells shown (seed {seed})</sup>"
    return rows, title


def category_colours(n_categories: int) -> list[str]:
    """Colour of each category, by position (stable when categories are renamed), as scanpy colours them.

    Up to 20 categories scanpy's default_20, up to 28 its default_28, then its 102 distinct colours
    (reused from the start beyond 102).
    """
    palette = palette_for(n_categories)
    return [palette[i % len(palette)] for i in range(n_categories)]


def hover_text(clusters: pd.Categorical | np.ndarray) -> np.ndarray:
    """Per-cell hover line: the cell's cluster (by its name once named).

    Cell barcodes are left out: they mean nothing on a slide, and at 12k cells they tripled the
    bytes of every redraw (848 vs 289 KB of JSON).
    """
    return np.asarray(clusters, dtype=str)


def embedding_scatter(coords: np.ndarray, *, colouring: Colouring, clusters: pd.Categorical,
                      title: str, point_size: float = 3.0,
                      opacity: float = 0.8, max_points: int = MAX_POINTS,
                      seed: int = SUBSAMPLE_SEED, height: int = 620,
                      show_legend: bool = True, labels_on_data: bool = False) -> go.Figure:
    """A 2-D embedding of cells (UMAP, t-SNE), coloured by ``colouring``.

    Parameters
    ----------
    coords
        ``(n_cells, 2)`` embedding.
    colouring
        One value per cell; categorical values give one trace per category (legend), continuous
        values one trace with a colour bar, high values drawn on top.
    clusters
        Cluster labels (names), shown on hover.
    max_points, seed
        Subsampling above ``max_points`` cells (see :func:`subsample`).
    labels_on_data
        Write each category's name at the median position of its cells (scanpy's
        ``legend_loc="on data"``); categorical colourings only.
    """
    coords = np.asarray(coords)
    rows, title = drawn_rows(coords, colouring=colouring, clusters=clusters, title=title,
                             max_points=max_points, seed=seed)
    # float32 halves the bytes sent; 3 decimals are far below a pixel on any embedding scale.
    xy = np.round(coords[rows].astype(np.float32), 3)
    text = hover_text(np.asarray(clusters)[rows])
    marker = dict(size=point_size, opacity=opacity)
    # Traces as dicts: go.Figure validates them once, where trace objects would be deep-copied
    # (every hover string of every point) on the way in.
    traces: list[dict] = []
    if colouring.categorical:
        codes = np.asarray(colouring.values.codes)[rows]
        names = [str(c) for c in colouring.values.categories]
        for code, (name, colour) in enumerate(zip(names, category_colours(len(names)), strict=True)):
            traces.append(_points(xy, rows, text, codes == code, name=name,
                                  marker=dict(marker, color=colour), label=colouring.label,
                                  show_legend=show_legend))
        if (codes < 0).any():
            traces.append(_points(xy, rows, text, codes < 0, name=MISSING_LABEL,
                                  marker=dict(marker, color=MISSING_COLOUR), label=colouring.label,
                                  show_legend=show_legend))
    else:
        values = np.asarray(colouring.values, dtype=np.float32)[rows]
        order = np.argsort(np.nan_to_num(values, nan=-np.inf), kind="stable")
        colour = np.round(values[order], 4)
        traces.append(dict(
            type="scattergl", x=xy[order, 0], y=xy[order, 1], customdata=rows[order], text=text[order],
            mode="markers", name=colouring.label, showlegend=False,
            marker=dict(marker, color=colour, colorscale=CONTINUOUS_SCALE,
                        colorbar=dict(title=dict(text=colouring.label, side="right"),
                                      thickness=12) if show_legend else None,
                        showscale=show_legend),
            hovertemplate=f"cluster: %{{text}}<br>{colouring.label}: %{{marker.color:.3g}}<extra></extra>",
        ))
    fig = go.Figure(traces)
    if labels_on_data and colouring.categorical:
        for name, (x, y) in category_centres(coords, colouring.values).items():
            fig.add_annotation(x=x, y=y, text=f"<b>{name}</b>", showarrow=False, font=dict(size=12, color="#222"),
                               bgcolor="rgba(255,255,255,0.6)")
    fig.update_layout(
        title=dict(text=title), height=height, margin=dict(l=10, r=10, t=60, b=10),
        dragmode="lasso", plot_bgcolor="white", legend=dict(itemsizing="constant", title=colouring.label),
        # Zoom and legend clicks survive a change of colour.
        uirevision="embedding",
        # Reruns that change nothing here (a saved group, another panel) leave the points alone:
        # the browser redraws them only when positions or colours changed.
        datarevision=_fingerprint(xy, colouring.values, point_size, opacity),
    )
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, scaleanchor="x")
    return fig


def _fingerprint(*parts) -> str:
    """A short hash of arrays and values: equal inputs, equal string."""
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        if isinstance(part, pd.Categorical):
            digest.update(np.asarray(part.codes).tobytes())
            digest.update("\x1f".join(map(str, part.categories)).encode())
        elif isinstance(part, np.ndarray):
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(repr(part).encode())
    return digest.hexdigest()


def category_centres(coords: np.ndarray, values: pd.Categorical) -> dict[str, tuple[float, float]]:
    """Median position of the cells of each category (where its name goes on the plot), in category order."""
    codes = np.asarray(values.codes)
    # One sort, then each category is a slice: a mask per category cost 1.2 s for 224 clusters of 1M cells.
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(len(values.categories) + 1))
    centres = {}
    for code, name in enumerate(values.categories):
        rows = order[starts[code]:starts[code + 1]]
        if len(rows):
            centres[str(name)] = (float(np.median(coords[rows, 0])), float(np.median(coords[rows, 1])))
    return centres


def _points(xy: np.ndarray, rows: np.ndarray, text: np.ndarray, mask: np.ndarray, *, name: str,
            marker: dict, label: str, show_legend: bool) -> dict:
    return dict(
        type="scattergl", x=xy[mask, 0], y=xy[mask, 1], customdata=rows[mask], text=text[mask], mode="markers",
        name=name, legendgroup=name, showlegend=show_legend, marker=marker,
        # the hover text already names the cluster: colouring by cluster adds no second line
        hovertemplate="cluster: %{text}" + ("" if label.lower() == "cluster" else f"<br>{label}: {name}")
        + "<extra></extra>",
    )


def cluster_sizes(labels: pd.Categorical, *, title: str = "Cells per cluster") -> go.Figure:
    """Bar chart of the number of cells in each category, in category order, coloured as in the embedding."""
    counts = pd.Series(labels).value_counts(sort=False).reindex(labels.categories, fill_value=0)
    names = [str(c) for c in counts.index]
    fig = go.Figure(go.Bar(x=names, y=counts.to_numpy(), marker_color=category_colours(len(names)),
                           hovertemplate="%{x}: %{y:,} cells<extra></extra>"))
    fig.update_layout(title=title, yaxis_title="cells", xaxis_type="category",
                      margin=dict(l=10, r=10, t=40, b=10), height=260)
    return fig
