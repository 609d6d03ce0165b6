"""The Explore scatter alone, on synthetic cells: the page ``benchmarks/explore_scale.py`` drives.

Query parameters: ``n`` (cells, default 1,000,000) and ``cap`` (most points drawn); with
``page=qc`` the Data page's three QC violins (by donor) and totals-vs-genes scatter instead. A radio switches
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

from explore_scale import qc_obs, synthetic_cells  # noqa: E402  (beside this script)

from dashboard.cell_scatter import cell_scatter, selection_caption  # noqa: E402
from dashboard.explore_figures import Colouring  # noqa: E402
from dashboard.figures import qc_violin, totals_vs_genes  # noqa: E402


@st.cache_data(max_entries=2)
def cells(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return synthetic_cells(n)


@st.cache_data(max_entries=2)
def cached_qc_obs(n: int):
    return qc_obs(n)


params = st.query_params
n = int(params.get("n", 1_000_000))
cap = int(params.get("cap", 200_000))
if params.get("page") == "qc":  # the Data page's QC plots of n cells; cap: violins' density view above it
    obs = cached_qc_obs(n)
    kept = obs["total_counts"].to_numpy() > 1500
    columns = st.columns(3)
    for column, metric in zip(columns, ("total_counts", "n_genes_by_counts", "pct_counts_mt"), strict=True):
        column.plotly_chart(qc_violin(obs, metric, groupby="donor", lower=500, max_points=cap), width="stretch")
    if params.get("scatter", "1") == "1":
        st.plotly_chart(totals_vs_genes(obs, kept=kept), width="stretch")
    st.stop()
coords, labels, value = cells(n)
clusters = pd.Categorical.from_codes(labels, categories=[str(i) for i in range(30)])
kind = st.radio("Colour", ["cluster", "value"], horizontal=True, key="colour")
colour = Colouring("Cluster", clusters) if kind == "cluster" else Colouring("value", value)
result = cell_scatter(coords, colouring=colour, clusters=clusters, title="Synthetic UMAP", key="scale_scatter",
                      point_size=2.0, max_points=cap)
st.caption(selection_caption(result))
