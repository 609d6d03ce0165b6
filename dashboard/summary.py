"""Summaries of a loaded dataset for display: the summary card and the choice of grouping columns."""

from __future__ import annotations

import re

import anndata as ad
import pandas as pd
import streamlit as st

from dashboard.state import Dataset
from engine.reading import load as eio

# Obs columns with more distinct values than these are not offered as groups (to compare, to split
# plots by) or as a batch key (donors, samples, lanes: an atlas can have hundreds).
MAX_GROUPS = 100
MAX_BATCHES = 1000


@st.cache_data(show_spinner=False, max_entries=8)
def _summarize(key: str, _adata: ad.AnnData) -> eio.DatasetSummary:
    return eio.summarize(_adata)


def dataset_summary(dataset: Dataset) -> eio.DatasetSummary:
    """The numbers the Data page shows about ``dataset`` (cached per dataset)."""
    return _summarize(dataset.key, dataset.adata)


def _kind(dtype: str) -> str:
    """A column's dtype in words: numbers (a QC metric, a score) or labels (a cell type, a donor)."""
    return "numbers" if re.match(r"u?int|float", dtype) else "labels"


def obs_columns_table(summary: eio.DatasetSummary) -> pd.DataFrame:
    """One row per cell annotation: its name, whether it holds numbers or labels, and how many labels."""
    rows = [
        {"column": name, "type": _kind(str(dtype)), "categories": "" if n is None else f"{n:,}"}
        for name, n, dtype in summary.obs_columns
    ]
    return pd.DataFrame(rows, columns=["column", "type", "categories"])


# A load message naming where in the file something came from speaks AnnData (X, layers['counts'],
# var['gene_symbol'], .raw): it goes to the "for scanpy users" detail, the rest is for everyone.
_ANNDATA_WORDS = re.compile(r"\b(?:X|raw)\b|\.raw\b|\b(?:layers|var|obs|obsm|uns)\[")


def split_load_messages(messages: list[str]) -> tuple[list[str], list[str]]:
    """The load report's messages for everyone (cells dropped, names made unique) and for scanpy users."""
    technical = [m for m in messages if _ANNDATA_WORDS.search(m)]
    return [m for m in messages if m not in technical], technical


def categorical_columns(adata: ad.AnnData, *, max_values: int, min_values: int = 2) -> list[str]:
    """Obs columns of labels (categorical, text or bool) with ``min_values`` to ``max_values`` values.

    The one test of "is this column a grouping of the cells": numbers per cell (QC metrics, doses)
    never are.
    """
    out = []
    for name, column in adata.obs.items():
        if isinstance(column.dtype, pd.CategoricalDtype) or column.dtype in (object, bool):
            if min_values <= column.nunique(dropna=True) <= max_values:
                out.append(str(name))
    return out


def grouping_columns(adata: ad.AnnData) -> list[str]:
    """Obs columns that make sensible groups to compare or split plots by."""
    return categorical_columns(adata, max_values=MAX_GROUPS)


def batch_columns(adata: ad.AnnData) -> list[str]:
    """Obs columns offered as a batch key."""
    return categorical_columns(adata, max_values=MAX_BATCHES, min_values=1)


#: Words that name a batch in obs column names, most specific first (issue 18: the sample has ``donor``).
BATCH_WORDS = ("batch", "donor", "sample", "library", "tech", "patient", "individual", "lane")


def default_batch_key(columns: list[str]) -> str | None:
    """The batch key to preselect: the first column named like a batch (:data:`BATCH_WORDS`), else None.

    Whole words of the name count (``donor``, ``donor_id``, ``Sample``), not substrings of other
    words (``resample_flag``).
    """
    for word in BATCH_WORDS:
        for column in columns:
            parts = re.split(r"[^a-z0-9]+", column.lower())
            if word in parts or (word == "tech" and "technology" in parts):
                return column
    return None
