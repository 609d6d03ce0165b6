"""Bad input gives a clear ValueError (what is wrong, what to do) or a reported repair."""

from __future__ import annotations

import gzip
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.io import mmwrite

from engine.reading.load import read_counts


def counts_frame(n_cells: int = 6, n_genes: int = 5, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    values = rng.poisson(3.0, size=(n_cells, n_genes)) + 1  # no all-zero rows or columns
    cells = [f"AAACCTGAGAAGGCCT-{i}" for i in range(n_cells)]
    genes = ["CD3E", "MS4A1", "LYZ", "NKG7", "GNLY", "CD14", "FCGR3A", "PPBP"][:n_genes]
    return pd.DataFrame(values, index=cells, columns=genes)


def write_h5ad(path: Path, x, obs_names=None, var_names=None) -> Path:
    n_cells, n_genes = x.shape
    adata = anndata.AnnData(
        X=x,
        obs=pd.DataFrame(index=obs_names if obs_names is not None else [f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=var_names if var_names is not None else [f"G{i}" for i in range(n_genes)]),
    )
    adata.write_h5ad(path)
    return path


def test_unsupported_extension(tmp_path):
    path = tmp_path / "counts.xlsx"
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match=r"Unsupported file type '\.xlsx'\. Supported: .*h5ad"):
        read_counts(path)


def test_truncated_h5ad(kang_small_path, tmp_path):
    data = kang_small_path.read_bytes()
    path = tmp_path / "cut.h5ad"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="could not be read as an AnnData .h5ad file: "
                                         "the file looks truncated or corrupt.*again"):
        read_counts(path)


def test_corrupt_h5ad_garbage(tmp_path):
    path = tmp_path / "garbage.h5ad"
    path.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_counts(path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.h5ad"
    path.touch()
    with pytest.raises(ValueError, match=r"is empty \(0 bytes\).*Upload the file again"):
        read_counts(path)


def test_empty_matrix(tmp_path):
    path = write_h5ad(tmp_path / "e.h5ad", sparse.csr_matrix((0, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"X is empty \(0 cells x 5 genes\).*at least 2 cells"):
        read_counts(path)


def test_negative_values(tmp_path):
    x = counts_frame().to_numpy(dtype=np.float32)
    x[0, 0] = -1.5
    with pytest.raises(ValueError, match=r"negative values \(min -1\.5\).*scaled or centred.*raw UMI"):
        read_counts(write_h5ad(tmp_path / "n.h5ad", x))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf(tmp_path, bad):
    x = counts_frame().to_numpy(dtype=np.float32)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="1 NaN or infinite values.*missing values should be 0"):
        read_counts(write_h5ad(tmp_path / "nan.h5ad", x))


def test_log_transformed_values(tmp_path):
    x = np.log1p(counts_frame().to_numpy(dtype=np.float32))
    with pytest.raises(ValueError, match=r"X holds non-integer values \(e\.g\. .*\): "
                                         r"it looks log-transformed.*\.raw or layers\['counts'\]"):
        read_counts(write_h5ad(tmp_path / "log.h5ad", x))


def test_normalised_values(tmp_path):
    x = counts_frame(seed=3).to_numpy(dtype=np.float64)
    x = x / x.sum(axis=1, keepdims=True) * 1e4
    with pytest.raises(ValueError, match="every cell sums to 10,000: it looks normalised"):
        read_counts(write_h5ad(tmp_path / "norm.h5ad", x.astype(np.float32)))


def test_duplicated_barcodes_made_unique(tmp_path):
    frame = counts_frame()
    frame.index = ["AAACCTGAGAAGGCCT-1"] * 3 + ["GGGTCTGAGAAGGCCT-1", "TTTACTGAGAAGGCCT-1", "CCCACTGAGAAGGCCT-1"]
    frame.to_csv(tmp_path / "dup.csv")
    adata = read_counts(tmp_path / "dup.csv")
    assert list(adata.obs_names[:3]) == ["AAACCTGAGAAGGCCT-1", "AAACCTGAGAAGGCCT-1-1", "AAACCTGAGAAGGCCT-1-2"]
    report = adata.uns["atlas_load"]
    assert report["n_duplicate_barcodes"] == 2
    assert ("2 duplicated cell barcodes were made unique (e.g. 'AAACCTGAGAAGGCCT-1' -> 'AAACCTGAGAAGGCCT-1-1')."
            in report["messages"])


def test_duplicated_gene_names_made_unique(tmp_path):
    frame = counts_frame()
    frame.columns = ["TBCE", "TBCE", "LYZ", "NKG7", "GNLY"]
    frame.to_csv(tmp_path / "dupg.csv")
    adata = read_counts(tmp_path / "dupg.csv")
    assert list(adata.var["display_name"][:2]) == ["TBCE", "TBCE-1"]
    assert adata.var_names.is_unique
    assert adata.uns["atlas_load"]["n_duplicate_genes"] == 1
    assert "1 duplicated gene names were made unique (e.g. 'TBCE' -> 'TBCE-1')." in adata.uns["atlas_load"]["messages"]


def test_genes_by_cells_csv_detected_and_override(tmp_path):
    frame = counts_frame(n_cells=6, n_genes=8)
    frame.T.to_csv(tmp_path / "gxc.csv")
    adata = read_counts(tmp_path / "gxc.csv")
    assert adata.shape == (6, 8)
    assert list(adata.var_names) == list(frame.columns)
    report = adata.uns["atlas_load"]
    assert report["orientation"] == "genes x cells" and report["transposed"] is True
    assert "cell barcodes" in report["messages"][0]
    kept = read_counts(tmp_path / "gxc.csv", transpose=False)
    assert kept.shape == (8, 6) and kept.uns["atlas_load"]["transposed"] is False


def test_all_zero_cells_and_genes_dropped(tmp_path):
    x = counts_frame().to_numpy(dtype=np.float32)
    x = np.hstack([x, np.zeros((6, 2), dtype=np.float32)])
    x = np.vstack([x, np.zeros((3, 7), dtype=np.float32)])
    adata = read_counts(write_h5ad(tmp_path / "z.h5ad", sparse.csr_matrix(x)))
    assert adata.shape == (6, 5)
    report = adata.uns["atlas_load"]
    assert (report["n_cells_dropped"], report["n_genes_dropped"]) == (3, 2)
    assert "3 cells with no counts at all were dropped." in report["messages"]


def test_single_cell(tmp_path):
    x = counts_frame(n_cells=1).to_numpy(dtype=np.float32)
    with pytest.raises(ValueError, match=r"only 1 cell\(s\) with any counts.*at least 2 cells"):
        read_counts(write_h5ad(tmp_path / "one.h5ad", x))


def test_text_in_numeric_cells(tmp_path):
    frame = counts_frame().astype(object)
    frame.iloc[2, 3] = "n/a?"
    frame.to_csv(tmp_path / "text.csv")
    with pytest.raises(ValueError, match=r"text where a count should be "
                                         r"\(row 'AAACCTGAGAAGGCCT-2', column 'NKG7' holds 'n/a\?'.*only numbers"):
        read_counts(tmp_path / "text.csv")


def _mtx_folder(folder: Path, n_barcodes: int | None = None, barcodes: bool = True) -> Path:
    frame = counts_frame()
    folder.mkdir()
    mmwrite(folder / "matrix.mtx", sparse.coo_matrix(frame.to_numpy().T))
    pd.DataFrame({"id": frame.columns, "name": frame.columns}).to_csv(
        folder / "genes.tsv", sep="\t", header=False, index=False
    )
    if barcodes:
        names = list(frame.index)[: n_barcodes or len(frame)]
        pd.Series(names).to_csv(folder / "barcodes.tsv", sep="\t", header=False, index=False)
    return folder


def test_10x_folder_missing_barcodes(tmp_path):
    folder = _mtx_folder(tmp_path / "tenx", barcodes=False)
    with pytest.raises(ValueError, match=r"has matrix.mtx but no barcodes.tsv.*needs all three files"):
        read_counts(folder)


def test_10x_folder_mismatched_lengths(tmp_path):
    folder = _mtx_folder(tmp_path / "tenx", n_barcodes=4)
    with pytest.raises(ValueError, match=r"inconsistent: matrix.mtx is 5 genes x 6 cells but .* lists 4 barcodes"
                                         r".*export the folder again"):
        read_counts(folder)


def test_h5ad_obs_and_x_disagree(tmp_path):
    path = write_h5ad(tmp_path / "bad.h5ad", counts_frame().to_numpy(dtype=np.float32))
    with h5py.File(path, "r+") as f:  # cut obs to 4 rows while X keeps 6
        index = f["obs"]["_index"][:4]
        del f["obs"]["_index"]
        dataset = f["obs"].create_dataset("_index", data=index)
        dataset.attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
    with pytest.raises(ValueError, match=r"obs describes 4 cells but X has 6 rows.*write_h5ad"):
        read_counts(path)


def test_unicode_and_very_long_gene_names(tmp_path):
    frame = counts_frame()
    long_name = "GENE_" + "X" * 500
    frame.columns = ["Ifnγ", "αβTCR", long_name, "NKG7", "GNLY"]
    with gzip.open(tmp_path / "u.csv.gz", "wt", encoding="utf-8") as f:
        frame.to_csv(f)
    adata = read_counts(tmp_path / "u.csv.gz")
    assert list(adata.var["display_name"]) == ["Ifnγ", "αβTCR", long_name, "NKG7", "GNLY"]
    path = tmp_path / "u.h5ad"
    adata.write_h5ad(path)
    assert list(anndata.read_h5ad(path).var_names) == list(frame.columns)


def test_one_gene(tmp_path):
    x = counts_frame(n_genes=1).to_numpy(dtype=np.float32)
    with pytest.raises(ValueError, match=r"only 1 gene\(s\) with any counts: at least 2 genes are needed"):
        read_counts(write_h5ad(tmp_path / "g1.h5ad", x, var_names=["CD3E"]))


def test_100k_all_zero_columns_dropped_and_sparse(tmp_path):
    n_cells, n_genes = 50, 100_000
    rng = np.random.default_rng(1)
    rows = np.repeat(np.arange(n_cells), 20)
    cols = rng.integers(0, 30, size=rows.size)  # only the first 30 genes are ever detected
    x = sparse.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=(n_cells, n_genes))
    path = write_h5ad(tmp_path / "wide.h5ad", x)
    adata = read_counts(path)
    n_detected = np.unique(cols).size
    assert adata.shape == (n_cells, n_detected)
    assert adata.uns["atlas_load"]["n_genes_dropped"] == n_genes - n_detected
    assert sparse.issparse(adata.X)
