"""Highly variable genes (scanpy's Seurat v3 inside engine.preprocessing.hvg): known genes, records, errors."""

from __future__ import annotations

import numpy as np
import pytest

from engine.preprocessing.hvg import highly_variable_genes
from engine.reading.load import read_counts
from tests.conftest import shared_file


@pytest.fixture()
def kang(kang_small_path):
    return read_counts(kang_small_path)


def _symbols(adata, mask) -> set[str]:
    return set(adata.var.loc[mask, "display_name"] if "display_name" in adata.var else adata.var_names[mask])


def test_hvg_finds_the_pbmc_cell_type_markers(kang):
    counts_before = kang.layers["counts"].copy()
    highly_variable_genes(kang, n_top_genes=300)
    var = kang.var
    assert var["highly_variable"].sum() == 300
    # Markers that tell PBMC types apart vary most: monocytes, NK cells, B cells, platelets.
    assert {"LYZ", "S100A8", "GNLY", "NKG7", "CD74", "CD79A"} <= _symbols(kang, var["highly_variable"].to_numpy())
    # ranks 0..299 on the flagged genes, NaN elsewhere; the counts are untouched
    assert sorted(var.loc[var["highly_variable"], "highly_variable_rank"]) == list(range(300))
    assert var.loc[~var["highly_variable"], "highly_variable_rank"].isna().all()
    assert (kang.layers["counts"] != counts_before).nnz == 0
    assert kang.uns["hvg"] == {"flavor": "seurat_v3_paper", "n_top_genes": 300, "batch_key": None}


def test_hvg_more_than_genes_flags_all(kang):
    highly_variable_genes(kang, n_top_genes=5000)
    assert kang.var["highly_variable"].all()
    assert kang.uns["hvg"]["n_top_genes"] == kang.n_vars


def test_hvg_on_a_handful_of_genes_flags_all_or_says_what_to_do(kang):
    few = kang[:, :6].copy()
    highly_variable_genes(few, n_top_genes=2000)  # the loess cannot fit 6 genes; all are kept
    assert few.var["highly_variable"].all() and few.var["highly_variable_rank"].isna().all()
    with pytest.raises(ValueError, match="Use all genes"):
        highly_variable_genes(few, n_top_genes=3)


def test_hvg_batch_aware_on_pancreas_two_technologies():
    adata = read_counts(shared_file("pancreas_2tech_3514x1194.h5ad"))
    highly_variable_genes(adata, n_top_genes=500, batch_key="tech")
    var = adata.var
    assert var["highly_variable"].sum() == 500
    # Hormone genes of the islet cell types vary most across cells: insulin, somatostatin,
    # pancreatic polypeptide.
    for gene in ("INS", "SST", "PPY"):
        assert var.loc[gene, "highly_variable"], gene
    assert set(var["highly_variable_nbatches"]) <= {0, 1, 2}
    top = var[var["highly_variable"]]
    # genes HV in both technologies come before genes HV in one (Seurat's integration features)
    assert top["highly_variable_nbatches"].min() >= 1
    assert (var.loc[~var["highly_variable"], "highly_variable_nbatches"] <= top["highly_variable_nbatches"].min()).all()
    assert np.isfinite(var["variances_norm"]).all()


def test_hvg_says_what_to_do(kang):
    with pytest.raises(ValueError, match="batch_key 'sample' is not a column of adata.obs"):
        highly_variable_genes(kang, batch_key="sample")
    with pytest.raises(ValueError, match="whole number"):
        highly_variable_genes(kang, n_top_genes=0)
    kang.obs["tiny"] = ["a"] + ["b"] * (kang.n_obs - 1)
    with pytest.raises(ValueError, match="fewer than 2 cells"):
        highly_variable_genes(kang, batch_key="tiny")
    del kang.layers["counts"]
    with pytest.raises(ValueError, match="read_counts"):
        highly_variable_genes(kang)
