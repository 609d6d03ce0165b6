"""The Explore page's cell scatter: a canvas component (``cell_scatter.js``) instead of a Plotly chart.

A colour change through ``st.plotly_chart`` took 0.6-0.8 s from click to picture at 12k cells
(Plotly.react of a WebGL scatter, 170-280 ms in the browser alone); the issue allows 300 ms. This
component receives the positions once (they are decoded again only when ``xy_rev`` changes) and
one small colour array per change, and draws on a 2-D canvas in one pass. It keeps what the page
needs from Plotly: lasso and box selection (sent back as point indices), wheel zoom, pan, reset,
a hover line per cell, a legend or a colour bar, names on the data. Figures for papers are still
Plotly's (:func:`dashboard.explore_figures.embedding_scatter`, Export page).

:func:`scatter_data` is pure (tested without a browser); :func:`cell_scatter` mounts it.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from dashboard.explore_figures import (
    MAX_POINTS,
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


def cell_scatter(coords: np.ndarray, *, colouring: Colouring, clusters: pd.Categorical, title: str,
                 key: str, point_size: float = 3.0, opacity: float = 0.8, labels_on_data: bool = False,
                 height: int = 620) -> np.ndarray:
    """Draw the scatter; returns the data rows of the cells selected with the lasso or box (empty: none)."""
    data, rows = scatter_data(coords, colouring=colouring, clusters=clusters, title=title, point_size=point_size,
                              opacity=opacity, labels_on_data=labels_on_data, height=height)
    result = _COMPONENT(data=data, key=key, default={"selection": None}, height=height + 40,
                        on_selection_change=lambda: None)
    return selected_rows(result.selection if result is not None else None, data["xy_rev"], rows)


def selected_rows(selection: Any, rev: str, rows: np.ndarray) -> np.ndarray:
    """Data rows of a selection the component sent back; a selection made on other positions counts as none."""
    if not isinstance(selection, dict) or selection.get("rev") != rev:
        return np.empty(0, dtype=np.int64)
    points = np.asarray(selection.get("rows") or [], dtype=np.int64)
    points = points[(points >= 0) & (points < len(rows))]
    return np.asarray(rows)[points]
