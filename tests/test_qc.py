"""QC metrics against scanpy, filters against direct counting."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
from scipy import sparse

from engine.preprocessing import qc
from engine.reading.load import read_counts

# The fixture's 1,287 genes include no MT- gene; ribosomal RPS genes stand in for them so that
# the percentage and its threshold are exercised with real, non-zero values.
STAND_IN = ("RPS",)


@pytest.fixture()
def kang(kang_small_path):
    adata = read_counts(kang_small_path)
    qc.calculate_qc_metrics(adata, mito_prefixes=STAND_IN)
    return adata


def test_metrics_equal_scanpy(kang):
    ref = kang.copy()
    ref.var["mt"] = ref.var["display_name"].str.startswith("RPS")
    obs, var = sc.pp.calculate_qc_metrics(ref, qc_vars=["mt"], inplace=False, percent_top=None)
    assert kang.var["mt"].sum() == ref.var["mt"].sum() > 10
    for column in ("total_counts", "n_genes_by_counts", "pct_counts_mt"):
        np.testing.assert_allclose(kang.obs[column], obs[column], rtol=1e-6)
    np.testing.assert_array_equal(kang.var["n_cells_by_counts"], var["n_cells_by_counts"])
    np.testing.assert_allclose(kang.var["total_counts"], var["total_counts"], rtol=1e-6)
    np.testing.assert_allclose(kang.var["pct_cells_by_counts"], 100 - var["pct_dropout_by_counts"])


def test_mito_prefixes_use_display_names(kang):
    qc.calculate_qc_metrics(kang, mito_prefixes=("RPL", "MT-"))
    expected = kang.var["display_name"].str.startswith("RPL")
    np.testing.assert_array_equal(kang.var["mt"], expected)
    assert kang.var_names[expected.to_numpy()][0].startswith("ENSG")


def test_thresholds_are_validated():
    with pytest.raises(ValueError, match="max_pct_mt is a percentage"):
        qc.QCThresholds(max_pct_mt=120)
    with pytest.raises(ValueError, match="min_genes must be a whole number"):
        qc.QCThresholds(min_genes=-1)
    with pytest.raises(ValueError, match="max_counts .* at least min_counts"):
        qc.QCThresholds(min_counts=500, max_counts=100)


@pytest.mark.parametrize("max_counts", [None, 1500.0])
def test_filter_masks_count_directly(kang, max_counts):
    t = qc.QCThresholds(min_genes=300, min_cells=20, max_pct_mt=15.0, min_counts=600, max_counts=max_counts)
    cells, genes = qc.filter_masks(kang, t)
    x = kang.layers["counts"]
    n_genes = (x > 0).sum(axis=1).A1
    total = x.sum(axis=1).A1
    mt = x[:, kang.var["mt"].to_numpy()].sum(axis=1).A1
    expected = (n_genes >= 300) & (total >= 600) & (100 * mt / total <= 15.0)
    if max_counts is not None:
        expected &= total <= max_counts
    np.testing.assert_array_equal(cells, expected)
    np.testing.assert_array_equal(genes, (x[expected] > 0).sum(axis=0).A1 >= 20)
    assert 0 < cells.sum() < kang.n_obs and 0 < genes.sum() < kang.n_vars


def test_apply_filters_new_object_and_record(kang):
    t = qc.QCThresholds(min_genes=300, min_cells=20, max_pct_mt=15.0)
    cells, genes = qc.filter_masks(kang, t)
    filtered = qc.apply_filters(kang, t)
    assert filtered.shape == (cells.sum(), genes.sum())
    assert kang.n_obs == 1145  # the input is unchanged
    assert filtered.layers["counts"] is filtered.X and isinstance(filtered.X, sparse.csr_matrix)
    record = filtered.uns["atlas_qc"]
    assert record["n_cells_removed"] == kang.n_obs - cells.sum()
    assert record["n_genes_removed"] == kang.n_vars - genes.sum()
    assert record["min_genes"] == 300 and "max_counts" not in record
    # metrics were recomputed on the kept genes
    np.testing.assert_allclose(filtered.obs["total_counts"], filtered.X.sum(axis=1).A1)


def test_apply_filters_names_the_threshold_that_removes_everything(kang):
    with pytest.raises(ValueError, match="min_genes=100000 alone removes"):
        qc.apply_filters(kang, qc.QCThresholds(min_genes=100_000))
    with pytest.raises(ValueError, match="Lower min_cells"):
        qc.apply_filters(kang, qc.QCThresholds(min_cells=100_000))


def test_filter_needs_metrics(kang_small_path):
    with pytest.raises(ValueError, match="calculate_qc_metrics"):
        qc.filter_masks(read_counts(kang_small_path), qc.QCThresholds())
