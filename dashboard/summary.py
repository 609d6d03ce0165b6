"""Summaries of a loaded dataset for display: the summary card and the choice of grouping columns."""

from __future__ import annotations

import anndata as ad
import pandas as pd
import streamlit as st

from dashboard.state import Dataset
from engine.reading import load as eio

# A column with more distinct values than this is not offered for splitting plots or as a batch.
MAX_GROUPS = 100


@st.cache_data(show_spinner=False, max_entries=8)
def _summarize(key: str, _adata: ad.AnnData) -> eio.DatasetSummary:
    return eio.summarize(_adata)


def dataset_summary(dataset: Dataset) -> eio.DatasetSummary:
    return _summarize(dataset.key, dataset.adata)


def obs_columns_table(summary: eio.DatasetSummary) -> pd.DataFrame:
    """One row per obs column: its name, type and number of categories."""
    rows = [
        {"column": name, "type": dtype, "categories": "" if n is None else f"{n:,}"}
        for name, n, dtype in summary.obs_columns
    ]
    return pd.DataFrame(rows, columns=["column", "type", "categories"])


def grouping_columns(adata: ad.AnnData) -> list[str]:
    """Obs columns that make sensible groups: categorical or text with 2 to MAX_GROUPS values.

    QC metrics that the app computes (numbers per cell) are never groups.
    """
    out = []
    for name, col in adata.obs.items():
        if isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object or col.dtype == bool:
            n = col.nunique(dropna=True)
            if 2 <= n <= MAX_GROUPS:
                out.append(str(name))
    return out
