"""Highly variable genes: scanpy's Seurat v3 selection on raw counts, with checks that say what to do.

The selection itself is ``scanpy.pp.highly_variable_genes`` (flavor ``seurat_v3_paper``, its loess
from scikit-misc): a kept library rather than our own loess. ``seurat_v3_paper`` orders genes by the
number of batches in which they are among the top ``n_top_genes``, then by their median rank
(Seurat's SelectIntegrationFeatures); without a batch key it is identical to ``seurat_v3``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from engine.checks import obs_column

__all__ = ["highly_variable_genes"]


def highly_variable_genes(adata: AnnData, *, n_top_genes: int = 2000, batch_key: str | None = None) -> None:
    """Flag highly variable genes with the Seurat v3 method (variance-stabilising transformation).

    Works on ``layers["counts"]``. ``n_top_genes`` above the number of genes flags every gene.

    Writes:
        var: ``highly_variable`` (bool), ``highly_variable_rank`` (median rank, NaN when the gene
        is in no batch's top list), ``highly_variable_nbatches``, ``variances_norm`` (mean over
        batches); uns["hvg"] = {"flavor": "seurat_v3_paper", "n_top_genes": <genes flagged>,
        "batch_key": batch_key}.
    """
    if isinstance(n_top_genes, bool) or not isinstance(n_top_genes, (int, np.integer)) or n_top_genes < 1:
        raise ValueError(f"n_top_genes must be a whole number >= 1, got {n_top_genes!r}.")
    if "counts" not in adata.layers:
        raise ValueError(
            "layers['counts'] is missing. Load the data with engine.read_counts, which puts the raw "
            "counts there."
        )
    _check_batches(adata, batch_key)
    import scanpy as sc  # deferred: importing scanpy takes seconds

    n_top = int(min(n_top_genes, adata.n_vars))
    view = AnnData(  # scanpy reads only these; the caller's AnnData gets the documented columns
        X=sparse.csr_matrix(adata.layers["counts"]),
        obs=pd.DataFrame(
            {"batch": adata.obs[batch_key].astype(str).to_numpy()} if batch_key else {},
            index=adata.obs_names,
        ),
        var=pd.DataFrame(index=adata.var_names),
    )
    try:
        result = sc.pp.highly_variable_genes(
            view, flavor="seurat_v3_paper", n_top_genes=n_top, batch_key="batch" if batch_key else None,
            inplace=False, check_values=False,
        )
    except ValueError as err:  # scikit-misc's loess fails on a handful of genes ("svddc failed")
        if n_top < adata.n_vars:
            raise ValueError(
                f"Highly variable genes could not be chosen: the fit of variance against mean over "
                f"{adata.n_vars:,} genes failed ({err}). Use all genes, or load more genes."
            ) from err
        result = pd.DataFrame({"highly_variable": True, "highly_variable_rank": np.nan,
                               "variances_norm": np.nan}, index=adata.var_names)
    result = result.reindex(adata.var_names)
    adata.var["highly_variable"] = result["highly_variable"].to_numpy(dtype=bool)
    adata.var["highly_variable_rank"] = result["highly_variable_rank"].to_numpy(dtype=np.float64)
    nbatches = result["highly_variable_nbatches"] if "highly_variable_nbatches" in result else result["highly_variable"]
    adata.var["highly_variable_nbatches"] = nbatches.to_numpy().astype(np.int64)
    adata.var["variances_norm"] = result["variances_norm"].to_numpy(dtype=np.float64)
    adata.uns["hvg"] = {"flavor": "seurat_v3_paper", "n_top_genes": n_top, "batch_key": batch_key}


def _check_batches(adata: AnnData, batch_key: str | None) -> None:
    if batch_key is None:
        return
    sizes = obs_column(adata, batch_key, role="batch_key").astype(str).value_counts()
    small = sizes[sizes < 2]
    if len(small):
        raise ValueError(
            f"Batch {small.index[0]!r} of {batch_key!r} has fewer than 2 cells, so its gene variances "
            "are undefined. Filter those cells out or pick another batch_key."
        )
