"""The Explore scatter alone, on synthetic cells: the page ``benchmarks/explore_scale.py`` drives.

Query parameters: ``n`` (cells, default 1,000,000) and ``cap`` (most points drawn). A radio switches
the colour between 30 clusters and a continuous value; the caption under the plot is the Explore
page's (drawn and selected cells). No run, no engine: only what the browser gets and draws.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explore_scale import synthetic_cells  # noqa: E402  (beside this script)

from dashboard.cell_scatter import cell_scatter, selection_caption  # noqa: E402
from dashboard.explore_figures import Colouring  # noqa: E402


@st.cache_data(max_entries=2)
def cells(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return synthetic_cells(n)


params = st.query_params
n = int(params.get("n", 1_000_000))
cap = int(params.get("cap", 200_000))
coords, labels, value = cells(n)
clusters = pd.Categorical.from_codes(labels, categories=[str(i) for i in range(30)])
kind = st.radio("Colour", ["cluster", "value"], horizontal=True, key="colour")
colour = Colouring("Cluster", clusters) if kind == "cluster" else Colouring("value", value)
result = cell_scatter(coords, colouring=colour, clusters=clusters, title="Synthetic UMAP", key="scale_scatter",
                      point_size=2.0, max_points=cap)
st.caption(selection_caption(result))
