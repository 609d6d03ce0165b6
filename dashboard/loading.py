"""Loading datasets into a session: cached reads of the sample, uploads and server-side files.

A failed load raises ``ValueError`` with the engine's message and leaves the session untouched, so a
bad upload never replaces the dataset already loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import streamlit as st

from dashboard.state import AppState, Dataset
from engine.preprocessing import qc as eqc
from engine.preprocessing.hvg import highly_variable_genes
from engine.reading import load as eio

REPO = Path(__file__).resolve().parents[1]
SAMPLE_PATH = REPO / "sample_data" / "kang_pbmc_ctrl.h5ad"
SAMPLE_NAME = "Sample: Kang et al. 2018 PBMC, control (12,261 cells)"
# Loading files from the server's disk is off unless an administrator names a folder.
DATA_DIR_ENV = "ATLAS_DATA_DIR"

# Uploads are kept under <run cache>/uploads/<content hash><suffix> so that links to their runs can
# read them again, for this many days after their last use.
UPLOAD_DAYS_ENV = "ATLAS_UPLOAD_DAYS"
UPLOAD_DAYS = 30.0

# Multi-part suffixes first so "x.tar.gz" keeps ".tar.gz"; the engine decides what is supported.
_COMPOUND_SUFFIXES = (".tar.gz", ".csv.gz", ".tsv.gz", ".txt.gz", ".mtx.gz")


def upload_limit_text(megabytes: int | None = None) -> str:
    """The server's upload cap (``server.maxUploadSize`` in ``.streamlit/config.toml``, in MB)."""
    if megabytes is None:
        megabytes = int(st.get_option("server.maxUploadSize"))
    return f"{megabytes / 1024:g} GB ({megabytes:,} MB)" if megabytes >= 1024 else f"{megabytes:,} MB"


def too_large_text(cap: str) -> str:
    """What the upload box says about files above the cap ``cap`` (from :func:`upload_limit_text`)."""
    # Streamlit refuses a larger file in the browser ("File must be ... or smaller") before any of
    # it reaches the server, so the page cannot react to it: the remedy is said here, up front.
    return (f"This server accepts uploads up to {cap}; a larger file is refused by the upload box. "
            f"Put larger files in the server folder instead ({DATA_DIR_ENV}, set by the "
            f"administrator) and open them from the Server folder tab.")


def upload_suffix(file_name: str) -> str:
    """The suffix of an uploaded file's name, checked against the supported formats.

    Only the suffix of a user's file name is ever used (to name a temporary file), never the name.
    """
    lower = file_name.lower()
    suffix = next((s for s in _COMPOUND_SUFFIXES if lower.endswith(s)), Path(lower).suffix)
    eio.format_of("upload" + suffix)  # raises ValueError naming the supported formats
    return suffix


def _prepare(adata: ad.AnnData) -> ad.AnnData:
    eqc.calculate_qc_metrics(adata)  # default prefixes; the page can recompute with others
    return adata


# Datasets are cached with st.cache_resource, not st.cache_data: cache_data keeps a pickled copy and
# hands each caller a new unpickled one, which for a 1M-cell atlas is 2+ GB per copy and seconds of
# pickling. Every change to a loaded dataset copies it first (use_display_names, use_mito_prefixes,
# apply_filters), so sharing one object between sessions is safe; tests/test_loading_shared.py checks it.
@st.cache_resource(show_spinner=False, max_entries=4)
def _read_bytes(digest: str, suffix: str, transpose: bool | None, _data: bytes, _file_name: str) -> ad.AnnData:
    # `digest` identifies `_data` (not hashed by Streamlit: hashing gigabytes twice is slow).
    with tempfile.TemporaryDirectory(prefix="atlas-upload-") as tmp:
        path = Path(tmp) / ("upload" + suffix)
        path.write_bytes(_data)
        try:
            return _prepare(eio.read_counts(path, transpose=transpose))
        except ValueError as err:
            # The engine names the temporary copy; the user knows the file by its own name.
            message = str(err).replace(path.name, _file_name).replace(Path(tmp).name, _file_name)
            raise ValueError(message) from err


@st.cache_resource(show_spinner=False, max_entries=4)
def _read_path(path: str, mtime: float, transpose: bool | None) -> ad.AnnData:
    return _prepare(eio.read_counts(path, transpose=transpose))


def read_upload(file_name: str, data: bytes, *, transpose: bool | None = None) -> Dataset:
    """Read an uploaded file's bytes; raises ValueError with a message for the page."""
    suffix = upload_suffix(file_name)
    if suffix in (".mtx", ".mtx.gz"):
        raise ValueError(
            f"'{file_name}' alone cannot be read: a 10x matrix.mtx has no gene or cell names, they are "
            "in features.tsv and barcodes.tsv beside it. Upload the whole folder as a .zip or .tar.gz, "
            "or the .h5 file Cell Ranger wrote."
        )
    if not data:
        raise ValueError(f"'{file_name}' is empty (0 bytes): upload the file again or pick another.")
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    adata = _read_bytes(digest, suffix, transpose, data, file_name)
    kept = keep_upload(digest, suffix, data)
    return Dataset(name=file_name, key=f"upload:{digest}:{transpose}", adata=adata, source="upload",
                   transpose=transpose, kept_upload=kept)


def uploads_dir() -> Path:
    """Where uploads are kept: ``uploads/`` in the run cache."""
    from dashboard.training import cache_dir  # here: loading a file needs no job board

    return cache_dir() / "uploads"


def upload_days() -> float:
    """How many days an upload is kept after its last use ($ATLAS_UPLOAD_DAYS, default 30)."""
    try:
        return float(os.environ.get(UPLOAD_DAYS_ENV) or UPLOAD_DAYS)
    except ValueError:
        return UPLOAD_DAYS


def keep_upload(digest: str, suffix: str, data: bytes) -> str | None:
    """Keep an upload's bytes as ``uploads/<digest><suffix>`` (atomic write); returns that file name.

    Kept files unused for :func:`upload_days` days are removed. None when the cache is not writable
    (the upload is still used; only links to its runs cannot re-open it).
    """
    folder = uploads_dir()
    name = f"{digest}{suffix}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        if target.exists():
            os.utime(target)  # in use again: keep it longer
        else:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".tmp-", delete=False) as tmp:
                tmp.write(data)
            os.replace(tmp.name, target)
        remove_old_uploads(folder)
    except OSError:
        return None
    return name


def remove_old_uploads(folder: Path | None = None, *, now: float | None = None) -> list[str]:
    """Remove kept uploads not used for :func:`upload_days` days; returns their names."""
    folder = folder or uploads_dir()
    limit = (now or time.time()) - upload_days() * 86400
    removed = []
    for path in folder.glob("*") if folder.is_dir() else []:
        try:
            if path.is_file() and path.stat().st_mtime < limit:
                path.unlink()
                removed.append(path.name)
        except OSError:
            continue
    return removed


def read_kept_upload(name: str, *, display_name: str, transpose: bool | None = None) -> Dataset:
    """An upload kept on the server (see :func:`keep_upload`), read again; ValueError when it is gone."""
    folder = uploads_dir()
    path = (folder / name).resolve()
    if path.parent != folder.resolve() or not path.is_file():
        raise ValueError(f"The uploaded file '{display_name}' is no longer kept on the server (uploads "
                         f"are kept {upload_days():g} days after their last use): upload it again.")
    os.utime(path)
    return read_server_file(path, name=display_name, transpose=transpose)


def read_sample() -> Dataset:
    """The bundled sample (Kang et al. 2018, see sample_data/README.md)."""
    return read_server_file(SAMPLE_PATH, name=SAMPLE_NAME)


def read_server_file(path: Path, *, name: str | None = None, transpose: bool | None = None) -> Dataset:
    """The dataset read (and cached) from a file on the server, named ``name`` or the file's name."""
    path = Path(path)
    adata = _read_path(str(path), path.stat().st_mtime, transpose)
    kept = path.name if path.parent.resolve() == uploads_dir().resolve() else None
    return Dataset(name=name or path.name, key=f"path:{path}:{transpose}", adata=adata,
                   source="path", path=str(path), transpose=transpose, kept_upload=kept)


def server_data_dir() -> Path | None:
    """The folder users may load from on the server, or None when that is switched off."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value).resolve() if value else None


def server_files() -> list[Path]:
    """Readable data files in the configured server folder (one level, plus 10x folders)."""
    root = server_data_dir()
    if root is None or not root.is_dir():
        return []
    files = []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        try:
            eio.format_of(str(p))
        except ValueError:
            continue
        files.append(p)
    return files


def resolve_server_file(name: str) -> Path:
    """A file inside the configured folder; refuses anything outside it (``..``, absolute paths)."""
    root = server_data_dir()
    if root is None:
        raise ValueError(
            f"Loading files from the server is switched off. An administrator can set "
            f"{DATA_DIR_ENV} to a folder to allow it."
        )
    path = (root / name).resolve()
    if root not in path.parents:
        raise ValueError(f"'{name}' is outside the server data folder {root}: pick a file listed there.")
    if not path.exists():
        raise ValueError(f"'{name}' does not exist in {root}.")
    return path


def use_dataset(state: AppState, dataset: Dataset) -> None:
    """Make ``dataset`` the session's dataset and rebuild the filtered data with current settings.

    Thresholds go back to keeping everything (they belonged to the previous data); runs and groups of
    the previous dataset no longer apply.
    """
    state.thresholds = eqc.QCThresholds()
    state.mito_prefixes = ("MT-", "mt-")
    state.hvg_batch_key = None
    state.filtered = filtered_dataset(dataset, state.thresholds, state.n_top_genes, None)
    state.filtered_key = filtered_key(dataset, state.thresholds, state.n_top_genes, None)
    state.dataset = dataset
    state.active_run_id = None
    state.cell_groups = {}
    state.cluster_names = {}
    state.cluster_names_for = None
    state.workspace = None
    state.load_error = None


def try_load(state: AppState, read: Callable[..., Dataset], *args, **kwargs) -> bool:
    """Load with ``read(*args, **kwargs)`` and make it the session's dataset, showing progress.

    On bad input the engine's message is kept in ``state.load_error`` for the page to show, and the
    dataset already loaded stays in use.
    """
    try:
        with st.status("Loading...", expanded=False) as status:
            status.update(label="Reading the file and checking the counts...")
            dataset = read(*args, **kwargs)
            status.update(label="Computing QC metrics and highly variable genes...")
            use_dataset(state, dataset)
            status.update(label=f"Loaded {dataset.name}", state="complete")
        return True
    except ValueError as err:
        state.load_error = str(err)
        return False


def use_display_names(state: AppState, column: str | None) -> None:
    """Show gene names from another ``var`` column (or the ids when None)."""
    assert state.dataset is not None
    adata = state.dataset.adata.copy()
    eio.set_display_names(adata, column=column)
    eqc.calculate_qc_metrics(adata, mito_prefixes=state.mito_prefixes)  # mito genes go by name
    _replace_dataset(state, adata, f"names={column}")


def use_mito_prefixes(state: AppState, prefixes: tuple[str, ...]) -> None:
    """Recompute QC metrics with other mitochondrial gene prefixes."""
    assert state.dataset is not None
    adata = state.dataset.adata.copy()
    eqc.calculate_qc_metrics(adata, mito_prefixes=prefixes)
    state.mito_prefixes = prefixes
    _replace_dataset(state, adata, f"mito={','.join(prefixes)}")


def _replace_dataset(state: AppState, adata: ad.AnnData, change: str) -> None:
    """The same dataset with derived annotations changed (names, QC metrics); filters re-applied."""
    dataset = dataclasses.replace(state.dataset, key=f"{state.dataset.key}:{change}", adata=adata)
    state.filtered = filtered_dataset(dataset, state.thresholds, state.n_top_genes, state.hvg_batch_key)
    state.filtered_key = filtered_key(dataset, state.thresholds, state.n_top_genes, state.hvg_batch_key)
    state.dataset = dataset


def apply_settings(state: AppState, thresholds: eqc.QCThresholds, n_top_genes: int,
                   hvg_batch_key: str | None) -> None:
    """Apply QC thresholds and the HVG choice; raises ValueError (state unchanged) if nothing remains."""
    assert state.dataset is not None
    filtered = filtered_dataset(state.dataset, thresholds, n_top_genes, hvg_batch_key)
    state.thresholds, state.n_top_genes, state.hvg_batch_key = thresholds, n_top_genes, hvg_batch_key
    state.filtered = filtered
    state.filtered_key = filtered_key(state.dataset, thresholds, n_top_genes, hvg_batch_key)
    state.active_run_id = None


@st.cache_resource(show_spinner=False, max_entries=8)  # shared, never mutated: see _read_bytes
def _filtered(key: str, thresholds: eqc.QCThresholds, n_top_genes: int, hvg_batch_key: str | None,
              _adata: ad.AnnData) -> ad.AnnData:
    filtered = eqc.apply_filters(_adata, thresholds)
    highly_variable_genes(filtered, n_top_genes=n_top_genes, batch_key=hvg_batch_key)
    return filtered


def filtered_key(dataset: Dataset, thresholds: eqc.QCThresholds, n_top_genes: int,
                 hvg_batch_key: str | None) -> str:
    """The key that identifies the filtered data of ``dataset`` with these QC and gene choices."""
    return f"{dataset.key}|{thresholds}|{n_top_genes}|{hvg_batch_key}"


def filtered_dataset(dataset: Dataset, thresholds: eqc.QCThresholds, n_top_genes: int,
                     hvg_batch_key: str | None) -> ad.AnnData:
    """``dataset`` with the QC thresholds applied and highly variable genes flagged (cached)."""
    return _filtered(dataset.key, thresholds, n_top_genes, hvg_batch_key, dataset.adata)
