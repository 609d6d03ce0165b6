"""One reader per file format, each turning a file into an AnnData with cells as rows.

Readers only parse; deciding which matrix holds counts, cleaning names and dropping empty cells is
:func:`engine.reading.load.read_counts`'s job. Every reader turns a parse failure into a ``ValueError`` that
says the file looks truncated or corrupt, never a raw h5py/zlib traceback.
"""

from __future__ import annotations

import csv
import gzip
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

import anndata
import h5py
import numpy as np
import pandas as pd
from scipy import sparse
from scipy.io import mmread

from engine import memory
from engine.reading import genes

Format = Literal["h5ad", "10x_h5", "loom", "csv", "mtx_dir", "archive"]
Orientation = Literal["cells x genes", "genes x cells"]

SUPPORTED_FORMATS: tuple[str, ...] = (
    "AnnData (.h5ad)",
    "10x Genomics HDF5 (.h5, Cell Ranger filtered_feature_bc_matrix.h5)",
    "10x Genomics MTX folder (matrix.mtx, features.tsv or genes.tsv, barcodes.tsv; gzipped or not)",
    "a .zip, .tar.gz or .tgz of a 10x MTX folder",
    "a text table (.csv, .tsv, .txt, optionally .gz), cells x genes or genes x cells",
    "Loom (.loom)",
)

# File-name endings -> format, longest first so ".tar.gz" wins over ".gz".
_SUFFIXES: tuple[tuple[str, Format], ...] = (
    (".mtx.gz", "mtx_dir"),
    (".csv.gz", "csv"),
    (".tsv.gz", "csv"),
    (".txt.gz", "csv"),
    (".tar.gz", "archive"),
    (".h5ad", "h5ad"),
    (".hdf5", "10x_h5"),
    (".loom", "loom"),
    (".csv", "csv"),
    (".tsv", "csv"),
    (".txt", "csv"),
    (".mtx", "mtx_dir"),
    (".zip", "archive"),
    (".tgz", "archive"),
    (".tar", "archive"),
    (".h5", "10x_h5"),
)

#: File-name endings accepted by uploads (for ``st.file_uploader(type=...)``).
UPLOAD_EXTENSIONS: tuple[str, ...] = ("h5ad", "h5", "hdf5", "loom", "csv", "tsv", "txt", "gz", "tgz", "zip", "tar")


@dataclass
class ParsedFile:
    """What a reader found: the AnnData (cells as rows) and how the file was laid out."""

    adata: anndata.AnnData
    orientation: Orientation = "cells x genes"
    transposed: bool = False
    messages: list[str] = field(default_factory=list)


def format_of(name: str) -> Format:
    """The format of a file, from its name.

    Raises
    ------
    ValueError
        The ending is not a supported format; the message lists the supported ones.
    """
    lowered = name.lower().rstrip("/")
    for suffix, fmt in _SUFFIXES:
        if lowered.endswith(suffix):
            return fmt
    suffix = "".join(PurePosixPath(lowered).suffixes[-2:]) or "(no extension)"
    raise ValueError(
        f"Unsupported file type '{suffix}'. Supported: {'; '.join(SUPPORTED_FORMATS)}."
    )


def corrupt(path: Path, kind: str, err: BaseException) -> ValueError:
    """The error raised when a file cannot be parsed as the format its name promises."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ValueError(
        f"'{path.name}' could not be read as {kind}: the file looks truncated or corrupt "
        f"({reason[:200]}). Export or download it again and re-upload."
    )


# ---------------------------------------------------------------------------------------- h5ad


def read_h5ad(path: Path) -> ParsedFile:
    """An AnnData .h5ad file, as stored."""
    _check_dense_x(path)
    try:
        adata = anndata.read_h5ad(path)
    except Exception as err:  # anndata raises OSError/KeyError/ValueError from deep inside h5py
        raise _diagnose_h5ad(path, err) from err
    return ParsedFile(adata)


def _check_dense_x(path: Path) -> None:
    """Refuse a dense X too large for memory before anndata reads it (the OOM killer would not ask)."""
    try:
        with h5py.File(path, "r") as f:
            x = f.get("X")
            if not isinstance(x, h5py.Dataset) or x.ndim != 2:
                return  # sparse (a group) or absent: nothing dense to read
            shape, itemsize = x.shape, x.dtype.itemsize
    except Exception:  # noqa: BLE001 - unreadable files get their message from read_h5ad
        return
    # the matrix as stored, plus its float32 copy while it becomes sparse
    memory.check_dense_size(shape[0], shape[1], what=f"'{path.name}' stores X dense, which",
                     itemsize=itemsize, n_matrices=2,
                     advice="save X as a sparse matrix before uploading "
                            "(adata.X = scipy.sparse.csr_matrix(adata.X); adata.write_h5ad(...))")


def _diagnose_h5ad(path: Path, err: BaseException) -> ValueError:
    """Tell an inconsistent h5ad (obs and X disagree) from a damaged one."""
    try:
        with h5py.File(path, "r") as f:
            n_x = _h5ad_n_rows(f["X"]) if "X" in f else None
            n_obs = _h5_index_length(f["obs"]) if "obs" in f else None
    except Exception:  # noqa: BLE001 - any failure to look inside means the file is damaged
        return corrupt(path, "an AnnData .h5ad file", err)
    if n_x is not None and n_obs is not None and n_x != n_obs:
        return ValueError(
            f"'{path.name}' is inconsistent: obs describes {n_obs:,} cells but X has {n_x:,} rows. "
            "Rebuild the AnnData so that obs has one row per cell of X, then save it with "
            "adata.write_h5ad()."
        )
    return corrupt(path, "an AnnData .h5ad file", err)


def _h5ad_n_rows(node) -> int:
    if isinstance(node, h5py.Dataset):
        return int(node.shape[0])
    return int(node.attrs["shape"][0])


def _h5_index_length(group) -> int:
    index_key = group.attrs.get("_index", "_index")
    return int(group[index_key].shape[0])


# ------------------------------------------------------------------------------------- 10x h5


def read_10x_h5(path: Path) -> ParsedFile:
    """A 10x Genomics HDF5 file (gene expression only), gene ids as var_names and symbols in a column."""
    import scanpy as sc

    try:
        adata = sc.read_10x_h5(path, gex_only=True)
    except Exception as err:
        raise corrupt(path, "a 10x Genomics HDF5 file", err) from err
    return ParsedFile(_ids_as_var_names(adata, id_column="gene_ids", symbol_column="gene_symbols"))


def _ids_as_var_names(adata: anndata.AnnData, *, id_column: str, symbol_column: str) -> anndata.AnnData:
    """Use the stable gene ids as var_names and keep symbols as a column (shown as display names)."""
    if id_column not in adata.var.columns:
        return adata
    adata.var[symbol_column] = adata.var_names.astype(str)
    adata.var_names = adata.var[id_column].astype(str).to_numpy()
    adata.var = adata.var.drop(columns=id_column)
    return adata


# ---------------------------------------------------------------------------------------- loom


def read_loom(path: Path) -> ParsedFile:
    """A Loom file, sparse, named by its usual gene and cell attributes."""
    try:
        with h5py.File(path, "r") as f:
            row_attrs = set(f["row_attrs"].keys()) if "row_attrs" in f else set()
            col_attrs = set(f["col_attrs"].keys()) if "col_attrs" in f else set()
    except Exception as err:
        raise corrupt(path, "a Loom file", err) from err
    var_key = next((k for k in ("Gene", "var_names", "gene_ids", "Accession") if k in row_attrs), None)
    obs_key = next((k for k in ("CellID", "obs_names", "cell_names") if k in col_attrs), None)
    try:
        adata = anndata.io.read_loom(
            path, sparse=True, cleanup=False, obs_names=obs_key or "CellID", var_names=var_key or "Gene"
        )
    except Exception as err:
        raise corrupt(path, "a Loom file", err) from err
    return ParsedFile(adata)


# ---------------------------------------------------------------------------------- text table


def read_table(path: Path, *, transpose: bool | None) -> ParsedFile:
    """A CSV/TSV/TXT table (optionally gzipped) with names in the first row and first column."""
    try:
        with _open_text(path) as handle:
            first_line = handle.readline()
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as err:
        raise corrupt(path, "a text table", err) from err
    sep = _separator(path.name, first_line)
    # The header is parsed apart: pandas would rename a repeated column "TBCE" to "TBCE.1", while
    # duplicates must reach read_counts intact to be made unique (and reported) like any other.
    if sep == r"\s+":
        header = first_line.split()
    else:
        header = next(csv.reader([first_line.rstrip("\r\n")], delimiter=sep))
    try:
        frame = pd.read_csv(
            path, sep=sep, header=None, skiprows=1, index_col=0, compression="infer", low_memory=False
        )
    except (OSError, EOFError, UnicodeDecodeError, zlib.error, pd.errors.ParserError) as err:
        raise corrupt(path, "a text table", err) from err
    except pd.errors.EmptyDataError as err:
        raise ValueError(f"'{path.name}' holds no table: the file has no rows. Upload a non-empty table.") from err
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(
            f"'{path.name}' holds an empty table ({frame.shape[0]} rows x {frame.shape[1]} columns): "
            "expected gene names and cell names with a count in every cell."
        )
    # R's write.table leaves out the header cell above the row names: then the header is one short.
    labels = header[1:] if len(header) == frame.shape[1] + 1 else header
    if len(labels) != frame.shape[1]:
        raise ValueError(
            f"'{path.name}' has {len(header)} names in its first row but {frame.shape[1] + 1} fields "
            "in the rows below: the table is ragged. Re-export it with one name per column."
        )
    frame.columns = pd.Index([str(label) for label in labels], dtype=object)
    _check_numeric(frame, path)
    row_labels = frame.index.astype(str).tolist()
    col_labels = frame.columns.astype(str).tolist()
    messages: list[str] = []
    if transpose is None:
        transposed, reason = _rows_are_genes(row_labels, col_labels)
        orientation: Orientation = "genes x cells" if transposed else "cells x genes"
        messages.append(f"The table was read as {orientation} ({reason}).")
    else:
        transposed = transpose
        orientation = "genes x cells" if transposed else "cells x genes"
        messages.append(f"The table was read as {orientation}, as requested.")
    matrix = sparse.csr_matrix(frame.to_numpy(dtype=np.float32))
    if transposed:
        matrix = matrix.T.tocsr()
        obs_names, var_names = col_labels, row_labels
    else:
        obs_names, var_names = row_labels, col_labels
    adata = anndata.AnnData(
        X=matrix, obs=pd.DataFrame(index=pd.Index(obs_names, dtype=object)),
        var=pd.DataFrame(index=pd.Index(var_names, dtype=object)),
    )
    return ParsedFile(adata, orientation=orientation, transposed=transposed, messages=messages)


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _separator(name: str, first_line: str) -> str:
    lowered = name.lower().removesuffix(".gz")
    if lowered.endswith(".csv"):
        return ","
    if lowered.endswith(".tsv") or "\t" in first_line:
        return "\t"
    if "," in first_line:
        return ","
    return r"\s+"


def _check_numeric(frame: pd.DataFrame, path: Path) -> None:
    """Every cell of a count table must be a number; point at the first one that is not."""
    bad = [i for i, dtype in enumerate(frame.dtypes) if not pd.api.types.is_numeric_dtype(dtype)]
    if not bad:
        return
    column = frame.iloc[:, bad[0]]
    converted = pd.to_numeric(column, errors="coerce")
    bad_rows = np.flatnonzero(converted.isna().to_numpy() & column.notna().to_numpy())
    if bad_rows.size:
        where = f"row {frame.index[bad_rows[0]]!r}, column {frame.columns[bad[0]]!r} holds {column.iloc[bad_rows[0]]!r}"
    else:
        where = f"column {frame.columns[bad[0]]!r} holds an empty cell"
    raise ValueError(
        f"'{path.name}' has text where a count should be ({where}; {len(bad)} column(s) "
        "affected). A count table must hold only numbers apart from the first row and column of "
        "names: move annotations into a separate file."
    )


def _rows_are_genes(rows: list[str], cols: list[str]) -> tuple[bool, str]:
    """Guess whether the table's rows are genes. Returns the guess and the evidence, in words."""
    ens_rows, ens_cols = genes.fraction_ensembl(rows), genes.fraction_ensembl(cols)
    if max(ens_rows, ens_cols) > 0.5:
        rows_are_genes = ens_rows > ens_cols
        return rows_are_genes, f"the {'first column' if rows_are_genes else 'header'} holds Ensembl gene ids"
    bc_rows, bc_cols = genes.fraction_barcode_like(rows), genes.fraction_barcode_like(cols)
    if abs(bc_rows - bc_cols) > 0.5:
        rows_are_genes = bc_cols > bc_rows
        return rows_are_genes, f"the {'header' if rows_are_genes else 'first column'} holds cell barcodes"
    sym_rows, sym_cols = genes.fraction_symbol_like(rows), genes.fraction_symbol_like(cols)
    if abs(sym_rows - sym_cols) > 0.3:
        rows_are_genes = sym_rows > sym_cols
        return rows_are_genes, f"the {'first column' if rows_are_genes else 'header'} holds gene symbols"
    rows_are_genes = len(rows) > len(cols)
    return rows_are_genes, (
        "a guess from the shape: the longer side was taken as genes; set transpose if this is wrong"
    )


# ------------------------------------------------------------------------------- 10x mtx folder

_MTX_NAMES = ("matrix.mtx", "matrix.mtx.gz")
_FEATURE_NAMES = ("features.tsv", "features.tsv.gz", "genes.tsv", "genes.tsv.gz")
_BARCODE_NAMES = ("barcodes.tsv", "barcodes.tsv.gz")


def read_mtx_dir(folder: Path, *, shown_name: str | None = None) -> ParsedFile:
    """A 10x MTX folder, or the folder one level down if the files sit in a single sub-folder.

    Parsed here rather than with ``scanpy.read_10x_mtx``: that was measured 1.6-2.5x slower on the
    12k sample (it re-sorts every entry when converting to float32) and reads odd names differently
    (a symbol "NA" becomes empty, a barcode is cut at a comma); BENCHMARKS.md, "Kept libraries".
    """
    shown = shown_name or folder.name
    files = _find_10x_files(folder)
    if files is None:
        subfolders = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
        found = [f for sub in subfolders if (f := _find_10x_files(sub)) is not None]
        files = found[0] if len(found) == 1 else None
    if files is None:
        present = sorted(p.name for p in folder.rglob("*") if p.is_file())[:10] if folder.is_dir() else []
        raise ValueError(
            f"'{shown}' is not a 10x MTX folder: it has no matrix.mtx[.gz] "
            f"(found: {', '.join(present) or 'nothing'}). Upload the folder Cell Ranger wrote "
            "(filtered_feature_bc_matrix) with matrix.mtx, features.tsv and barcodes.tsv."
        )
    matrix_path, features_path, barcodes_path = files
    missing = [
        label for label, p in (("features.tsv (or genes.tsv)", features_path), ("barcodes.tsv", barcodes_path))
        if p is None
    ]
    if missing:
        raise ValueError(
            f"The 10x folder '{shown}' has matrix.mtx but no {' and no '.join(missing)}[.gz]. "
            "A 10x folder needs all three files: matrix.mtx, features.tsv (genes.tsv) and barcodes.tsv."
        )
    try:
        with _open_binary(matrix_path) as handle:
            matrix = sparse.csr_matrix(mmread(handle), dtype=np.float32)
        features = _read_tsv(features_path)
        barcodes = _read_tsv(barcodes_path)
    except (OSError, EOFError, ValueError, IndexError, zlib.error, pd.errors.ParserError) as err:
        raise corrupt(matrix_path, "part of a 10x MTX folder", err) from err
    n_genes, n_cells = matrix.shape  # 10x stores genes x cells
    if len(features) != n_genes or len(barcodes) != n_cells:
        raise ValueError(
            f"The 10x folder '{shown}' is inconsistent: matrix.mtx is {n_genes:,} genes x "
            f"{n_cells:,} cells but {features_path.name} lists {len(features):,} genes and "
            f"{barcodes_path.name} lists {len(barcodes):,} barcodes. The files come from different "
            "runs or one was cut short: export the folder again."
        )
    var = pd.DataFrame(index=pd.Index(features[0].astype(str).to_numpy(), dtype=object))
    if features.shape[1] > 1:
        var["gene_symbols"] = features[1].astype(str).to_numpy()
    messages: list[str] = []
    adata = anndata.AnnData(
        X=matrix.T.tocsr(),
        obs=pd.DataFrame(index=pd.Index(barcodes[0].astype(str).to_numpy(), dtype=object)),
        var=var,
    )
    if features.shape[1] > 2:
        is_gex = (features[2].astype(str) == "Gene Expression").to_numpy()
        if not is_gex.all() and is_gex.any():
            messages.append(
                f"{int((~is_gex).sum()):,} non-gene-expression features (antibody capture, CRISPR ...) "
                "were left out."
            )
            adata = adata[:, is_gex].copy()
    return ParsedFile(adata, orientation="genes x cells", transposed=True, messages=messages)


def _find_10x_files(folder: Path) -> tuple[Path, Path | None, Path | None] | None:
    if not folder.is_dir():
        return None

    def first(names: tuple[str, ...]) -> Path | None:
        return next((folder / n for n in names if (folder / n).is_file()), None)

    matrix = first(_MTX_NAMES)
    if matrix is None:
        return None
    return matrix, first(_FEATURE_NAMES), first(_BARCODE_NAMES)


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", header=None, compression="infer", dtype=str, keep_default_na=False)


# -------------------------------------------------------------------------------------- archive

_WANTED = frozenset(_MTX_NAMES + _FEATURE_NAMES + _BARCODE_NAMES)


def read_archive(path: Path) -> ParsedFile:
    """A .zip / .tar.gz / .tgz of a 10x MTX folder, extracted safely into a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="atlas_upload_") as tmp:
        _extract_10x_members(path, Path(tmp))
        return read_mtx_dir(Path(tmp), shown_name=path.name)


def _extract_10x_members(path: Path, dest: Path) -> None:
    """Copy only the 10x files of the shallowest folder that has a matrix.mtx, under fixed names.

    Member names are never used as paths on disk (each file is written as ``dest/<basename>``), so
    ``../`` or absolute member names cannot escape ``dest``; links and devices are skipped.
    """
    with _open_archive(path) as (sizes, read_member):
        safe = [n for n in sizes if _is_safe_member(n)]
        folders = {str(PurePosixPath(n).parent) for n in safe if PurePosixPath(n).name in _MTX_NAMES}
        if not folders:
            listed = ", ".join(sorted(safe)[:8]) or "nothing"
            raise ValueError(
                f"'{path.name}' holds no 10x matrix.mtx[.gz] (found: {listed}). Archives must "
                "contain a 10x MTX folder (matrix.mtx, features.tsv, barcodes.tsv)."
            )
        folder = min(folders, key=lambda f: (len(PurePosixPath(f).parts), f))
        chosen = [n for n in safe if str(PurePosixPath(n).parent) == folder and PurePosixPath(n).name in _WANTED]
        # Each member is read whole: refuse an archive that unpacks to more than memory allows
        # (a "zip bomb" of a few MB can declare gigabytes; reads stop at the declared size).
        unpacked, spare = sum(sizes[n] for n in chosen), memory.MEMORY_FRACTION * memory.available_memory()
        if unpacked > spare:
            raise ValueError(
                f"'{path.name}' unpacks to {memory.format_bytes(unpacked)}, more than the "
                f"{memory.format_bytes(spare)} this machine can spare: upload the 10x .h5 file Cell Ranger "
                "wrote (filtered_feature_bc_matrix.h5) instead, or a smaller dataset."
            )
        for name in chosen:
            (dest / PurePosixPath(name).name).write_bytes(read_member(name))


def _is_safe_member(name: str) -> bool:
    member = PurePosixPath(name.replace("\\", "/"))
    return not member.is_absolute() and ".." not in member.parts and not name.startswith("/")


@contextmanager
def _open_archive(path: Path) -> Iterator[tuple[dict[str, int], Callable[[str], bytes]]]:
    """The archive's files with their unpacked sizes in bytes, and a function reading one."""
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                yield {i.filename: i.file_size for i in archive.infolist() if not i.is_dir()}, archive.read
        else:
            with tarfile.open(path, "r:*") as archive:
                members = {m.name: m for m in archive.getmembers() if m.isfile()}

                def read_member(name: str) -> bytes:
                    handle = archive.extractfile(members[name])
                    return handle.read() if handle is not None else b""

                yield {name: m.size for name, m in members.items()}, read_member
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise corrupt(path, "a .zip/.tar.gz archive", err) from err


__all__ = [
    "Format",
    "Orientation",
    "ParsedFile",
    "SUPPORTED_FORMATS",
    "UPLOAD_EXTENSIONS",
    "format_of",
    "read_archive",
    "read_h5ad",
    "read_10x_h5",
    "read_loom",
    "read_mtx_dir",
    "read_table",
]
