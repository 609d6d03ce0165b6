"""Checks of the AnnData contract shared by every layer, each with one message that says what to do."""

from __future__ import annotations

import pandas as pd
from anndata import AnnData

__all__ = ["obs_column"]


def obs_column(adata: AnnData, key: str, *, role: str = "column", allow_missing: bool = True) -> pd.Series:
    """``adata.obs[key]``, or a ValueError naming the columns there are.

    ``role`` says what the column is for in the message ("batch_key", "groupby" ...);
    ``allow_missing=False`` also refuses a column with missing labels.
    """
    if key not in adata.obs.columns:
        available = ", ".join(map(str, adata.obs.columns)) or "none"
        raise ValueError(f"{role} {key!r} is not a column of adata.obs; available: {available}")
    column = adata.obs[key]
    if not allow_missing and column.isna().any():
        raise ValueError(
            f"adata.obs[{key!r}] ({role}) has {int(column.isna().sum()):,} missing labels: fill or drop those cells"
        )
    return column
