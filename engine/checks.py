"""Checks of the AnnData contract shared by every layer, each with one message that says what to do."""

from __future__ import annotations

import pandas as pd
from anndata import AnnData

__all__ = ["as_text", "obs_column"]


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


def as_text(values: pd.Series) -> pd.Series:
    """``values`` as ``values.astype(str)`` would write them, but categorical.

    A categorical column keeps its codes and only its category names become text: at 1M cells the
    million Python strings of ``astype(str)`` cost ~0.75 s per column. (A column with a missing
    value, which ``astype(str)`` writes as "nan", or whose names collide as text, takes that way.)
    """
    if isinstance(values.dtype, pd.CategoricalDtype):
        names = values.cat.categories.astype(str)
        codes = values.cat.codes.to_numpy()
        if names.is_unique and (codes >= 0).all():
            return pd.Series(pd.Categorical.from_codes(codes, categories=names), index=values.index, name=values.name)
    return values.astype(str).astype("category")
