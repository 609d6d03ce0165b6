"""The Explore page's cell scatter: a canvas component (``cell_scatter.js``) instead of a Plotly chart.

A colour change through ``st.plotly_chart`` took 0.6-0.8 s from click to picture at 12k cells
(Plotly.react of a WebGL scatter, 170-280 ms in the browser alone); the issue allows 300 ms. This
component receives the positions once per session and embedding (the server remembers which
``xy_rev`` it sent; a tab that lost them asks again with the ``need_xy`` trigger) and one small
colour array per change, and draws on a 2-D canvas in one pass. It keeps what the page
needs from Plotly: lasso and box selection, wheel zoom, pan, reset, a hover line per cell, a
legend or a colour bar, names on the data. Figures for papers are still Plotly's
(:func:`dashboard.explore_figures.embedding_scatter`, Export page).

Selection covers every cell, drawn or not. Above ``MAX_POINTS`` cells only a random subsample is
drawn, so the component does not send back the points it drew inside the lasso or box but the region
itself, in data coordinates (``{"box": [x0, x1, y0, y1]}`` or ``{"lasso": [[x, y], ...]}``), and
:func:`cells_in_region` finds every cell inside it: the same even-odd test the browser used to
make on the drawn points, on the same float32 positions, vectorised (a sweep over the cells sorted by
y: each lasso edge touches only the cells in its band of y). 1M cells: tens of milliseconds
(``benchmarks/explore_scale.py``).

:func:`scatter_data`, :func:`cells_in_region` and :func:`selection_caption` are pure (tested without
a browser); :func:`cell_scatter` mounts the component.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from dashboard.explore_figures import (
    MAX_POINTS,
    MAX_POINTS_ENV,
    SUBSAMPLE_SEED,
    Colouring,
    _fingerprint,
    category_centres,
    category_colours,
    drawn_rows,
)

_COMPONENT = st.components.v2.component(
    "atlas_cell_scatter", js=(Path(__file__).with_name("cell_scatter.js")).read_text(),
    isolate_styles=False,  # plain DOM: browser tests and the benchmark find the canvas directly
)


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def scatter_data(coords: np.ndarray, *, colouring: Colouring, clusters: pd.Categorical, title: str,
                 point_size: float = 3.0, opacity: float = 0.8, labels_on_data: bool = False,
                 height: int = 620, max_points: int = MAX_POINTS,
                 seed: int = SUBSAMPLE_SEED) -> tuple[dict[str, Any], np.ndarray]:
    """What the component draws, and the row of each drawn point in the data (a subsample above ``max_points``).

    Positions travel as float32, category codes and clusters as int16 (-1: no value), continuous
    values as float32 (NaN: no value) with their range; everything as base64 in one JSON payload.
    """
    coords = np.asarray(coords)
    rows, title = drawn_rows(coords, colouring=colouring, clusters=clusters, title=title,
                             max_points=max_points, seed=seed)
    xy = coords[rows].astype(np.float32)
    clusters = pd.Categorical(clusters)
    data: dict[str, Any] = {
        "xy": _b64(xy), "xy_rev": _fingerprint(xy), "title": title, "label": colouring.label,
        "point_size": float(point_size), "opacity": float(opacity), "height": int(height),
        "clusters": _b64(np.asarray(clusters.codes, dtype=np.int16)[rows]),
        "cluster_names": [str(c) for c in clusters.categories], "text_labels": None,
    }
    if colouring.categorical:
        codes = np.asarray(colouring.values.codes, dtype=np.int16)[rows]
        names = [str(c) for c in colouring.values.categories]
        data.update(kind="categorical", codes=_b64(codes), names=names, colours=category_colours(len(names)),
                    has_missing=bool((codes < 0).any()))
        if labels_on_data:
            data["text_labels"] = [[name, x, y] for name, (x, y) in category_centres(coords, colouring.values).items()]
    else:
        values = np.asarray(colouring.values, dtype=np.float32)[rows]
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        data.update(kind="continuous", values=_b64(values), vmin=low, vmax=high if high > low else low + 1.0)
    return data, rows


@dataclass(frozen=True)
class ScatterResult:
    """What the page needs back from the scatter: the selected cells and how many cells are drawn."""

    selected: np.ndarray  # data rows of every cell inside the lasso or box (empty: no selection)
    n_cells: int
    n_drawn: int
    n_selected_drawn: int  # how many of the selected cells are drawn points


def cell_scatter(coords: np.ndarray, *, colouring: Colouring, clusters: pd.Categorical, title: str,
                 key: str, point_size: float = 3.0, opacity: float = 0.8, labels_on_data: bool = False,
                 height: int = 620, max_points: int | None = None) -> ScatterResult:
    """Draw the scatter; returns every cell inside the lasso or box drawn on it, drawn or not."""
    max_points = drawing_cap() if max_points is None else max_points
    data, rows = scatter_data(coords, colouring=colouring, clusters=clusters, title=title, point_size=point_size,
                              opacity=opacity, labels_on_data=labels_on_data, height=height,
                              max_points=max_points)
    # The browser keeps the positions (they change only with the embedding or the data), so a colour
    # change sends the colours alone: at 1M cells the 200,000 drawn positions were 2.1 MB of the 3.2 MB
    # payload, serialised twice by Streamlit and parsed again by the browser on every rerun.
    sent_key = f"_atlas_scatter_sent_{key}"
    if st.session_state.get(sent_key) == data["xy_rev"]:
        data["xy"] = None
    # room for the title, and for its second line when it says the points are a subsample
    result = _COMPONENT(data=data, key=key, default={"selection": None},
                        height=height + (64 if "<br>" in data["title"] else 40),
                        on_selection_change=lambda: None, on_need_xy_change=lambda: None)
    if data["xy"] is None and getattr(result, "need_xy", None) == data["xy_rev"]:
        st.session_state.pop(sent_key, None)  # the tab lost them (rare): send them with the next run
        st.rerun()
    st.session_state[sent_key] = data["xy_rev"]
    selected = selected_rows(result.selection if result is not None else None, data["xy_rev"], coords)
    n = len(coords)
    drawn = np.zeros(n, dtype=bool)
    drawn[rows] = True
    n_selected_drawn = int(drawn[selected].sum())
    return ScatterResult(selected, n, len(rows), n_selected_drawn)


def drawing_cap() -> int:
    """Most points drawn: ``MAX_POINTS``, or ``ATLAS_MAX_POINTS`` when set (tests, small browsers)."""
    import os

    value = os.environ.get(MAX_POINTS_ENV, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else MAX_POINTS


def selection_caption(result: ScatterResult) -> str:
    """'200,000 of 1,000,000 cells drawn (a random subsample); 12,345 selected (2,469 of them drawn)'."""
    if result.n_drawn < result.n_cells:
        text = f"{result.n_drawn:,} of {result.n_cells:,} cells drawn (a random subsample)"
    else:
        text = f"{result.n_cells:,} cells, all drawn"
    if len(result.selected):
        text += f"; {len(result.selected):,} selected"
        if result.n_drawn < result.n_cells:
            text += f" ({result.n_selected_drawn:,} of them drawn)"
    else:
        text += "; none selected"
    return text + "."


def selected_rows(selection: Any, rev: str, coords: np.ndarray) -> np.ndarray:
    """Data rows of every cell inside the region the component sent back.

    A selection made on other positions (``rev`` differs), or a malformed one, counts as none.
    """
    if not isinstance(selection, dict) or selection.get("rev") != rev:
        return np.empty(0, dtype=np.int64)
    try:
        region = {k: selection[k] for k in ("box", "lasso") if k in selection}
        return cells_in_region(coords, region)
    except (TypeError, ValueError):
        return np.empty(0, dtype=np.int64)


def cells_in_region(coords: np.ndarray, region: dict[str, Any]) -> np.ndarray:
    """Rows (in order) of the cells inside a box or a lasso.

    A box is ``{"box": [x0, x1, y0, y1]}`` (edges included), a lasso ``{"lasso": [[x, y], ...]}``
    (even-odd rule, closed from the last vertex to the first). Positions are tested as the browser
    draws them (float32). Raises ``ValueError`` for a region that is neither.
    """
    xy = np.asarray(coords, dtype=np.float32).astype(np.float64)
    x, y = xy[:, 0], xy[:, 1]
    if "box" in region:
        x0, x1, y0, y1 = (float(v) for v in region["box"])
        x0, x1, y0, y1 = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        return np.flatnonzero((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1))
    if "lasso" in region:
        poly = np.asarray(region["lasso"], dtype=np.float64)
        if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3 or not np.isfinite(poly).all():
            raise ValueError("a lasso needs at least 3 finite [x, y] vertices")
        return _in_polygon(x, y, poly)
    raise ValueError(f"a region is a box or a lasso; got keys {sorted(region)}")


def _in_polygon(x: np.ndarray, y: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Rows of the points inside ``poly`` by ray casting (a ray to +x crosses an odd number of edges).

    The crossing test is ``pointInPolygon``'s in ``cell_scatter.js``: an edge (i, j) flips a point
    when ``(yi > y) != (yj > y)`` and ``x < (xj - xi) * (y - yi) / (yj - yi) + xi``. Only the cells
    in the polygon's bounding box are tested, grouped into horizontal bands of y (a radix sort of
    16-bit band numbers), so each edge tests only the cells of the bands it spans, not all of them.
    """
    (xmin, ymin), (xmax, ymax) = poly.min(axis=0), poly.max(axis=0)
    candidates = np.flatnonzero((x >= xmin) & (x <= xmax) & (y >= ymin) & (y <= ymax))
    if len(candidates) == 0 or ymax <= ymin:
        return candidates[:0]
    n_bands = int(min(4096, max(1, len(candidates) // 64)))
    scale = n_bands / (ymax - ymin)
    band_of = np.minimum(((y[candidates] - ymin) * scale).astype(np.uint16), n_bands - 1)
    order = np.argsort(band_of, kind="stable")  # radix sort for 16-bit integers
    starts = np.searchsorted(band_of[order], np.arange(n_bands + 1), side="left")
    order = candidates[order]
    ys, xs = y[order], x[order]
    inside = np.zeros(len(order), dtype=bool)
    for (xi, yi), (xj, yj) in zip(poly, np.roll(poly, 1, axis=0), strict=True):
        if yi == yj:
            continue  # (yi > y) != (yj > y) never holds
        first = min(n_bands - 1, int((min(yi, yj) - ymin) * scale))
        last = min(n_bands - 1, int((max(yi, yj) - ymin) * scale))
        band = slice(starts[first], starts[last + 1])
        yb = ys[band]
        inside[band] ^= ((yi > yb) != (yj > yb)) & (xs[band] < (xj - xi) * (yb - yi) / (yj - yi) + xi)
    selected = np.zeros(len(x), dtype=bool)
    selected[order[inside]] = True
    return np.flatnonzero(selected)  # in row order
