"""Each reader round-trips the Kang fixture to exactly the same counts and names."""

from __future__ import annotations

import gzip
import tarfile
import zipfile
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.io import mmwrite

from engine.reading.formats import read_mtx_dir
from engine.reading.load import (
    SUPPORTED_FORMATS,
    check_counts,
    format_of,
    read_counts,
    set_display_names,
    summarize,
)


@pytest.fixture(scope="module")
def kang(kang_small_path: Path) -> anndata.AnnData:
    return anndata.read_h5ad(kang_small_path)


@pytest.fixture(scope="module")
def small(kang: anndata.AnnData) -> anndata.AnnData:
    """200 cells x 300 genes with counts in every row and column, for the text formats."""
    sub = kang[:200, :300].copy()
    keep = np.asarray(sub.X.sum(axis=0)).ravel() > 0
    return sub[:, keep].copy()


def assert_same_counts(adata: anndata.AnnData, expected: anndata.AnnData) -> None:
    assert list(adata.obs_names) == list(expected.obs_names)
    assert list(adata.var_names) == list(expected.var_names)
    assert adata.layers["counts"] is adata.X
    assert isinstance(adata.X, sparse.csr_matrix) and adata.X.dtype == np.float32
    diff = adata.X - sparse.csr_matrix(expected.X, dtype=np.float32)
    assert diff.count_nonzero() == 0


def write_10x_folder(adata: anndata.AnnData, folder: Path, *, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    with (gzip.open if gz else open)(folder / f"matrix.mtx{ext}", "wb") as f:
        mmwrite(f, sparse.csr_matrix(adata.X).T.tocoo().astype(np.int64))
    features = pd.DataFrame(
        {"id": adata.var_names, "name": adata.var["gene_symbol"], "type": "Gene Expression"}
    )
    features.to_csv(folder / f"features.tsv{ext}", sep="\t", header=False, index=False)
    pd.Series(adata.obs_names).to_csv(folder / f"barcodes.tsv{ext}", sep="\t", header=False, index=False)
    return folder


def write_10x_h5(adata: anndata.AnnData, path: Path) -> None:
    """The Cell Ranger v3 layout: /matrix with CSC (genes x cells) arrays and /matrix/features."""
    csc = sparse.csr_matrix(adata.X).T.tocsc().astype(np.int32)  # genes x cells, stored by cell
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array(adata.obs_names, dtype="S")
        m["data"] = csc.data
        m["indices"] = csc.indices.astype(np.int64)
        m["indptr"] = csc.indptr.astype(np.int64)
        m["shape"] = np.array(csc.shape, dtype=np.int32)
        feat = m.create_group("features")
        feat["id"] = np.array(adata.var_names, dtype="S")
        feat["name"] = np.array(adata.var["gene_symbol"], dtype="S")
        feat["feature_type"] = np.array(["Gene Expression"] * adata.n_vars, dtype="S")
        feat["genome"] = np.array(["GRCh38"] * adata.n_vars, dtype="S")
        feat["_all_tag_keys"] = np.array([b"genome"])


def test_format_of_names_every_format():
    assert format_of("a.h5ad") == "h5ad"
    assert format_of("filtered_feature_bc_matrix.h5") == "10x_h5"
    assert format_of("a.LOOM") == "loom"
    assert format_of("a.tsv.gz") == "csv" and format_of("a.txt") == "csv"
    assert format_of("a.tar.gz") == "archive" and format_of("a.tgz") == "archive"
    assert format_of("a.zip") == "archive"
    assert format_of("matrix.mtx.gz") == "mtx_dir"
    assert len(SUPPORTED_FORMATS) >= 5


def test_h5ad_round_trip_and_symbols(kang_small_path, kang):
    adata = read_counts(kang_small_path)
    assert_same_counts(adata, kang)
    report = adata.uns["atlas_load"]
    assert report["format"] == "h5ad" and report["counts_source"] == "X"
    assert report["symbol_column"] == "gene_symbol" and "gene_symbol" in report["symbol_candidates"]
    assert adata.var_names[0].startswith("ENSG")
    assert "CD79A" in set(adata.var["display_name"])
    assert adata.var.loc[kang.var_names[kang.var["gene_symbol"] == "CD79A"][0], "display_name"] == "CD79A"
    assert list(adata.obs["cell_type"].cat.categories) == list(kang.obs["cell_type"].cat.categories)


def test_report_is_h5ad_writable(kang_small_path, tmp_path):
    adata = read_counts(kang_small_path)
    adata.write_h5ad(tmp_path / "out.h5ad")
    back = anndata.read_h5ad(tmp_path / "out.h5ad")
    assert back.uns["atlas_load"]["format"] == "h5ad"
    assert back.uns["atlas_load"]["symbol_column"] == "gene_symbol"


def test_counts_found_in_layer_when_x_is_log(kang, tmp_path):
    adata = kang.copy()
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X.copy()
    adata.X.data = np.log1p(adata.X.data)
    adata.write_h5ad(tmp_path / "log.h5ad")
    loaded = read_counts(tmp_path / "log.h5ad")
    assert loaded.uns["atlas_load"]["counts_source"] == "layers['counts']"
    assert "X looks log-transformed" in loaded.uns["atlas_load"]["messages"][0]
    assert_same_counts(loaded, kang)


def test_counts_found_in_raw(kang, tmp_path):
    adata = kang.copy()
    adata.raw = adata
    adata.X = adata.X.copy()
    sums = np.asarray(adata.X.sum(axis=1)).ravel()
    adata.X = sparse.csr_matrix(sparse.diags(1e4 / sums) @ adata.X)
    adata.write_h5ad(tmp_path / "raw.h5ad")
    loaded = read_counts(tmp_path / "raw.h5ad")
    assert loaded.uns["atlas_load"]["counts_source"] == "raw"
    assert_same_counts(loaded, kang)
    assert check_counts(adata.X, name="X").kind == "normalised"


def test_10x_h5_round_trip(kang, tmp_path):
    write_10x_h5(kang, tmp_path / "filtered_feature_bc_matrix.h5")
    adata = read_counts(tmp_path / "filtered_feature_bc_matrix.h5")
    assert_same_counts(adata, kang)
    assert adata.uns["atlas_load"]["format"] == "10x_h5"
    assert list(adata.var["display_name"]) == list(pd.Index(kang.var["gene_symbol"].astype(str)))


@pytest.mark.parametrize("gz", [True, False])
def test_mtx_folder_round_trip(kang, tmp_path, gz):
    folder = write_10x_folder(kang, tmp_path / "filtered_feature_bc_matrix", gz=gz)
    adata = read_counts(folder)
    assert_same_counts(adata, kang)
    assert adata.uns["atlas_load"]["format"] == "mtx_dir"
    assert adata.uns["atlas_load"]["symbol_column"] == "gene_symbols"
    assert "CD79A" in set(adata.var["display_name"])


def test_zip_of_nested_mtx_folder(kang, tmp_path):
    folder = write_10x_folder(kang, tmp_path / "src" / "filtered_feature_bc_matrix")
    archive = tmp_path / "sample.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in folder.iterdir():
            z.write(f, f"filtered_feature_bc_matrix/{f.name}")
        z.writestr("filtered_feature_bc_matrix/README.txt", "ignored")
    adata = read_counts(archive)
    assert_same_counts(adata, kang)
    assert adata.uns["atlas_load"]["format"] == "archive"


def test_tar_gz_of_mtx_folder_ignores_traversal_members(kang, tmp_path):
    folder = write_10x_folder(kang, tmp_path / "src" / "sample1")
    archive = tmp_path / "sample.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        for f in folder.iterdir():
            t.add(f, f"sample1/{f.name}")
        t.add(folder / "barcodes.tsv.gz", "../../evil.tsv.gz")
    adata = read_counts(archive)
    assert_same_counts(adata, kang)
    assert not (tmp_path / "evil.tsv.gz").exists() and not Path("/tmp/evil.tsv.gz").exists()


def write_10x_files(
    adata: anndata.AnnData, folder: Path, *, matrix: str, features: str, barcodes: str,
    columns: int = 3, symbols: list[str] | None = None, types: list[str] | None = None,
) -> Path:
    """A 10x folder under the given file names (gzipped when they end in .gz), features with 1-3 columns."""
    folder.mkdir(parents=True, exist_ok=True)

    def opener(name: str):
        return gzip.open(folder / name, "wb") if name.endswith(".gz") else open(folder / name, "wb")

    with opener(matrix) as f:
        mmwrite(f, sparse.csr_matrix(adata.X).T.tocoo().astype(np.int64))
    symbols = list(adata.var["gene_symbol"].astype(str)) if symbols is None else symbols
    types = ["Gene Expression"] * adata.n_vars if types is None else types
    rows = [
        "\t".join([gene_id, symbol, kind][:columns])
        for gene_id, symbol, kind in zip(adata.var_names, symbols, types, strict=True)
    ]
    with opener(features) as f:
        f.write(("\n".join(rows) + "\n").encode())
    with opener(barcodes) as f:
        f.write(("\n".join(adata.obs_names) + "\n").encode())
    return folder


@pytest.mark.parametrize(
    ("matrix", "features", "barcodes", "columns"),
    [
        ("matrix.mtx", "genes.tsv", "barcodes.tsv", 2),  # Cell Ranger 2
        ("matrix.mtx.gz", "genes.tsv.gz", "barcodes.tsv.gz", 2),  # Cell Ranger 2, gzipped as on GEO
        ("matrix.mtx.gz", "features.tsv", "barcodes.tsv", 3),  # some files unzipped
        ("matrix.mtx", "features.tsv.gz", "barcodes.tsv.gz", 3),
        ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv", 1),  # ids only
        ("matrix.mtx", "genes.tsv", "barcodes.tsv.gz", 1),
    ],
    ids=["v2", "v2 gzipped", "v3 matrix gzipped only", "v3 matrix plain", "ids only gzipped", "ids only plain"],
)
def test_mtx_folder_layouts(small, tmp_path, matrix, features, barcodes, columns):
    folder = write_10x_files(small, tmp_path / "tenx", matrix=matrix, features=features, barcodes=barcodes,
                             columns=columns)
    parsed = read_mtx_dir(folder)
    assert (parsed.orientation, parsed.transposed, parsed.messages) == ("genes x cells", True, [])
    assert list(parsed.adata.var_names) == list(small.var_names)  # the ids
    if columns >= 2:
        assert list(parsed.adata.var.columns) == ["gene_symbols"]
        assert list(parsed.adata.var["gene_symbols"]) == list(small.var["gene_symbol"].astype(str))
    else:
        assert list(parsed.adata.var.columns) == []
    adata = read_counts(folder)
    assert_same_counts(adata, small)
    assert adata.uns["atlas_load"]["symbol_column"] == ("gene_symbols" if columns >= 2 else None)


def test_mtx_folder_feature_types_and_empty_symbols(small, tmp_path):
    symbols = list(small.var["gene_symbol"].astype(str))
    symbols[0] = ""  # shown by its id
    types = ["Gene Expression"] * (small.n_vars - 3) + ["Antibody Capture"] * 3
    folder = write_10x_files(small, tmp_path / "mixed", matrix="matrix.mtx.gz", features="features.tsv.gz",
                             barcodes="barcodes.tsv.gz", symbols=symbols, types=types)
    parsed = read_mtx_dir(folder)
    assert parsed.messages == ["3 non-gene-expression features (antibody capture, CRISPR ...) were left out."]
    assert list(parsed.adata.var_names) == list(small.var_names[:-3])
    assert list(parsed.adata.var.columns) == ["gene_symbols"] and parsed.adata.var["gene_symbols"].iloc[0] == ""
    adata = read_counts(folder)
    assert_same_counts(adata, small[:, :-3])
    assert adata.var["display_name"].iloc[0] == small.var_names[0]
    # a folder where no feature says "Gene Expression" keeps them all
    folder = write_10x_files(small, tmp_path / "peaks", matrix="matrix.mtx", features="features.tsv",
                             barcodes="barcodes.tsv", types=["Peaks"] * small.n_vars)
    parsed = read_mtx_dir(folder)
    assert parsed.messages == [] and parsed.adata.n_vars == small.n_vars


@pytest.mark.parametrize(
    ("name", "sep", "genes_by_cells"),
    [("c.csv", ",", False), ("c.csv", ",", True), ("t.tsv.gz", "\t", False), ("t.tsv.gz", "\t", True)],
)
def test_text_tables_both_orientations(small, tmp_path, name, sep, genes_by_cells):
    frame = pd.DataFrame(small.X.toarray().astype(int), index=small.obs_names, columns=small.var_names)
    if genes_by_cells:
        frame = frame.T
    frame.to_csv(tmp_path / name, sep=sep)
    adata = read_counts(tmp_path / name)
    assert_same_counts(adata, small)
    report = adata.uns["atlas_load"]
    assert report["transposed"] is genes_by_cells
    assert report["orientation"] == ("genes x cells" if genes_by_cells else "cells x genes")


def test_loom_round_trip(kang, tmp_path):
    adata = kang.copy()
    adata.write_loom(tmp_path / "k.loom")
    loaded = read_counts(tmp_path / "k.loom")
    assert_same_counts(loaded, kang)
    assert loaded.uns["atlas_load"]["format"] == "loom"
    assert "CD79A" in set(loaded.var["display_name"])


def test_set_display_names_switches_and_restores(kang_small_path):
    adata = read_counts(kang_small_path)
    set_display_names(adata, column=None)
    assert list(adata.var["display_name"]) == list(adata.var_names)
    assert adata.uns["atlas_load"]["symbol_column"] is None
    set_display_names(adata, column="gene_symbol")
    assert "CD79A" in set(adata.var["display_name"])
    with pytest.raises(ValueError, match="not in var.*gene_symbol"):
        set_display_names(adata, column="nope")


def test_symbol_column_argument_overrides_auto_pick(kang_small_path):
    adata = read_counts(kang_small_path, symbol_column="gene_id")
    assert list(adata.var["display_name"]) == list(adata.var_names)


def test_summarize_counts_zeros_and_columns(kang_small_path, kang):
    adata = read_counts(kang_small_path)
    summary = summarize(adata)
    assert (summary.n_cells, summary.n_genes) == kang.shape
    expected_sparsity = 1 - kang.X.count_nonzero() / (kang.n_obs * kang.n_vars)
    assert summary.sparsity == pytest.approx(expected_sparsity)
    columns = {name: (n, dtype) for name, n, dtype in summary.obs_columns}
    assert columns["cell_type"] == (kang.obs["cell_type"].nunique(), "category")
    assert summary.counts_source == "X"


def test_check_counts_kinds(kang):
    assert check_counts(kang.X).kind == "counts"
    logged = kang.X.copy()
    logged.data = np.log1p(logged.data)
    result = check_counts(logged, name="X")
    assert result.kind == "log-transformed"
    assert "0.693" in result.message and "raw counts" in result.message


def test_dropping_empty_cells_and_genes_in_place_equals_slicing():
    from engine.reading.load import _without_empty

    rng = np.random.default_rng(0)
    dense = rng.poisson(0.3, size=(60, 40)).astype(np.float32)
    dense[[3, 17, 59]] = 0  # empty cells
    dense[:, [0, 5, 6, 39]] = 0  # empty genes
    counts = sparse.csr_matrix(dense)
    keep_cells = np.diff(counts.indptr) > 0
    keep_genes = np.bincount(counts.indices, minlength=40) > 0
    expected = counts[keep_cells][:, keep_genes].toarray()
    data = counts.data
    result = _without_empty(counts, keep_cells, keep_genes)
    assert result.shape == (57, 36) and np.shares_memory(result.data, data)  # the values are not copied
    np.testing.assert_array_equal(result.toarray(), expected)
