"""The run cache's records: run ids, hashes, ``run.json``, listings, locks and crash notes. No torch.

The weights themselves are written and read by :mod:`engine.runs.storage`; this module is what the
dashboard and the CLI need to find, list, lock and delete runs without loading torch.

The cache: one folder per trained model, named by a hash of everything that determines it.

``cache_dir/<run_id>/`` holds ``model.pt`` (the ``state_dict``, loaded with ``weights_only=True``),
``run.json`` (parameters, metrics, batch categories, genes, data hash), ``history.csv`` (one row per
epoch) and ``latent.npy`` (posterior means). A run is written into ``cache_dir/.tmp-<run_id>-<random>/``
and renamed into place in one ``os.replace``, so a crash never leaves a folder that looks finished.
:func:`run_lock` serialises training of one run id across processes (``fcntl`` advisory lock).

While a run trains, ``cache_dir/.training-<run_id>.json`` says so (:func:`training_marker`). A
process killed mid-run (SIGKILL, out of memory, power cut) leaves that marker and perhaps a
``.tmp-`` folder behind, but its lock dies with it: :func:`interrupted_runs` lists such runs and
:func:`clean_stale` removes the half-written folders.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from engine.checks import obs_column
from engine.model.params import RunParams

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from engine.model.vae import VAE

__all__ = [
    "MODEL_FORMAT_VERSION",
    "CorruptRunError",
    "InterruptedRun",
    "Run",
    "RunInfo",
    "cells_hash",
    "clean_stale",
    "counts_matrix",
    "data_hash",
    "has_run",
    "delete_run",
    "read_info",
    "interrupted_runs",
    "list_runs",
    "lock_is_free",
    "run_id",
    "run_lock",
    "training_marker",
]

#: Bump when the module layout or the meaning of a parameter changes: old runs then miss the cache.
MODEL_FORMAT_VERSION = 1
TMP_PREFIX = ".tmp-"
MARKER_PREFIX = ".training-"
FILES = ("model.pt", "run.json", "history.csv", "latent.npy")
#: The files of an imported run (:mod:`engine.runs.imported`): no weights, no history.
IMPORTED_FILES = ("run.json", "latent.npy")


class CorruptRunError(ValueError):
    """A run folder exists but cannot be read (truncated weights, broken JSON, missing file)."""


@dataclass
class Run:
    """A trained model with its provenance, or a representation imported from a file without a model.

    ``metrics`` holds: seed, versions (torch, numpy, engine), train_seconds, seconds_per_epoch,
    n_epochs_trained, best_epoch, lr, device, elbo_validation, reconstruction_validation,
    kl_validation (None without a validation set), n_cells, n_genes, data_hash, created (ISO date).
    ``history`` has one row per epoch with the :class:`~engine.model.training.EpochReport` fields;
    ``latent`` is the posterior mean of every training cell (n_cells, n_latent); ``module`` is
    in eval mode on the CPU; ``path`` is the cache folder (None when not cached).

    An imported run (:func:`engine.runs.imported.import_run`: an ``.h5ad`` that already holds
    ``obsm["X_scVI"]`` or ``obsm["X_pca"]``) has no model: ``module`` and ``params`` are None,
    ``history`` is empty, ``latent`` is the file's representation, ``embeddings`` holds the file's
    own ``X_umap``/``X_tsne`` and ``clusters`` its ``obs["leiden"]`` (as text), and
    ``metrics["imported"]`` says where they came from. :attr:`has_model` tells the two apart.
    """

    run_id: str
    params: RunParams | None
    batch_key: str | None
    batch_categories: list[str] | None
    var_names: list[str]
    metrics: dict[str, Any]
    history: pd.DataFrame
    latent: np.ndarray
    module: VAE | None
    path: Path | None
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    clusters: np.ndarray | None = None

    @property
    def has_model(self) -> bool:
        """Whether a trained model comes with the run (False for a run imported from a file)."""
        return self.module is not None

    @property
    def imported(self) -> dict[str, Any] | None:
        """Where an imported run's representation came from (``metrics["imported"]``), else None."""
        return self.metrics.get("imported")

    @property
    def n_batch(self) -> int:
        """Number of batches the run was trained with (1 without a batch key)."""
        return len(self.batch_categories) if self.batch_categories else 1


@dataclass(frozen=True)
class InterruptedRun:
    """A run whose training process died before saving it (see :func:`interrupted_runs`)."""

    run_id: str
    data_hash: str
    batch_key: str | None
    params: dict[str, Any]
    n_cells: int
    started: str  # ISO date


@dataclass(frozen=True)
class RunInfo:
    """One row of the run history table (read from ``run.json`` only: no weights loaded)."""

    run_id: str
    params: RunParams | None  # None for an imported run (no model)
    metrics: dict[str, Any]
    batch_key: str | None
    data_hash: str
    created: str
    path: Path

    @property
    def has_model(self) -> bool:
        """Whether the run has a trained model (False for a run imported from a file)."""
        return self.params is not None


# ------------------------------------------------------------------------------------------ hashing
def counts_matrix(adata: AnnData) -> sp.csr_matrix:
    """The raw counts used for training: ``layers["counts"]``, else ``X``, as canonical CSR float32."""
    matrix = adata.layers["counts"] if "counts" in adata.layers else adata.X
    if matrix is None:
        raise ValueError("adata has neither layers['counts'] nor X: load a count matrix first")
    csr = sp.csr_matrix(matrix, dtype=np.float32)
    if not csr.has_canonical_format:
        csr = csr.copy()
        csr.sum_duplicates()  # also sorts the indices
    return csr


def _hash_counts(h: Any, counts: sp.csr_matrix, var_names: list[str]) -> None:
    # the arrays' buffers are hashed in place: ``.tobytes()`` copied each one (1 GB for the values
    # of a 1M-cell atlas); the bytes hashed, and so the hash, are the same
    h.update(np.asarray(counts.shape, dtype=np.int64))
    h.update(np.ascontiguousarray(counts.indptr, dtype=np.int64))
    h.update(np.ascontiguousarray(counts.indices, dtype=np.int32))
    h.update(np.ascontiguousarray(counts.data, dtype=np.float32))
    h.update(json.dumps(list(map(str, var_names))).encode())


def data_hash(adata: AnnData) -> str:
    """Hash of the counts (content of the CSR arrays) and the gene names; 32 hex characters."""
    h = hashlib.blake2b(digest_size=16)
    _hash_counts(h, counts_matrix(adata), list(adata.var_names))
    return h.hexdigest()


def cells_hash(adata: AnnData) -> str:
    """Hash of the cell names in order.

    It tells which runs were trained on exactly these cells (whatever genes they used), so their
    latent lines up with ``adata``'s rows.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(list(map(str, adata.obs_names))).encode())
    return h.hexdigest()


def run_id(adata: AnnData, *, params: RunParams, batch_key: str | None) -> str:
    """Identifier of the run ``fit(adata, params=params, batch_key=batch_key)`` would produce."""
    return run_id_from_hash(data_hash(adata), params=params, batch_labels=_batch_labels(adata, batch_key))


def run_id_from_hash(data_hash_: str, *, params: RunParams, batch_labels: list[str] | None) -> str:
    """:func:`run_id` from an already computed :func:`data_hash` and the per-cell batch labels."""
    h = hashlib.blake2b(digest_size=10)
    h.update(f"format={MODEL_FORMAT_VERSION};data={data_hash_};".encode())
    h.update(json.dumps(params.relevant(has_batch=batch_labels is not None), sort_keys=True).encode())
    h.update(json.dumps(batch_labels).encode())
    return h.hexdigest()


def _batch_labels(adata: AnnData, batch_key: str | None) -> list[str] | None:
    if batch_key is None:
        return None
    return obs_column(adata, batch_key, role="batch_key").astype(str).tolist()


# ------------------------------------------------------------------------------------------ reading
def has_run(cache_dir: str | os.PathLike[str], run_id: str) -> bool:
    """Whether a finished run folder exists (cheap: reads nothing)."""
    return (Path(cache_dir) / run_id / "run.json").is_file()


def read_info(path: Path) -> dict[str, Any]:
    """``run.json`` of a finished run folder, checked; :class:`CorruptRunError` when incomplete."""
    try:
        info = json.loads((path / "run.json").read_text())
        has_model = info.get("model", True) is not False
        missing = [f for f in (FILES if has_model else IMPORTED_FILES) if not (path / f).is_file()]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        # torch.save writes a zip: its directory sits at the end, so a cut file fails this cheap test
        if has_model and not zipfile.is_zipfile(path / "model.pt"):
            raise ValueError("model.pt is truncated or not a saved state_dict")
        for key in ("params", "metrics", "batch_key", "batch_categories", "var_names", "data_hash"):
            info[key]  # noqa: B018 - KeyError when absent
    except Exception as err:  # noqa: BLE001
        raise CorruptRunError(
            f"run folder {path} is corrupt ({type(err).__name__}: {err}); delete it with "
            "engine.runs.records.delete_run or train again (fit replaces it)"
        ) from err
    return info


def list_runs(cache_dir: str | os.PathLike[str], *, data_hash: str | None = None) -> list[RunInfo]:
    """Finished runs in ``cache_dir``, newest first; only those of ``data_hash`` when given.

    Unfinished (``.tmp-``) and corrupt folders are left out.
    """
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    runs = []
    for path in cache_dir.iterdir():
        if path.name.startswith(".") or not path.is_dir():
            continue
        try:
            info = read_info(path)
            params = None if info["params"] is None else RunParams.from_dict(info["params"])
        except (CorruptRunError, ValueError, TypeError):
            continue
        if data_hash is not None and info["data_hash"] != data_hash:
            continue
        runs.append(
            RunInfo(
                run_id=info["run_id"],
                params=params,
                metrics=info["metrics"],
                batch_key=info["batch_key"],
                data_hash=info["data_hash"],
                created=info["metrics"].get("created", ""),
                path=path,
            )
        )
    return sorted(runs, key=lambda r: r.created, reverse=True)


def delete_run(cache_dir: str | os.PathLike[str], run_id: str) -> None:
    """Remove a run folder and any note that its training was interrupted (no error when absent)."""
    path = Path(cache_dir) / run_id
    if path.name != run_id or run_id.startswith("."):
        raise ValueError(f"{run_id!r} is not a run id")
    shutil.rmtree(path, ignore_errors=True)
    _marker(Path(cache_dir), run_id).unlink(missing_ok=True)


def _marker(cache_dir: Path, run_id: str) -> Path:
    return cache_dir / f"{MARKER_PREFIX}{run_id}.json"


@contextlib.contextmanager
def training_marker(
    cache_dir: str | os.PathLike[str], run_id: str, *, data_hash_: str, params: RunParams,
    batch_key: str | None, n_cells: int,
) -> Iterator[None]:
    """Note in ``cache_dir`` that ``run_id`` is training; the note goes when the block ends, however it ends.

    If the process is killed, the note stays: then :func:`interrupted_runs` finds it. Hold
    :func:`run_lock` around it (``fit`` does), so a live trainer is told from a dead one.
    """
    path = _marker(Path(cache_dir), run_id)
    note = {"run_id": run_id, "data_hash": data_hash_, "batch_key": batch_key,
            "params": params.to_dict(), "n_cells": int(n_cells), "pid": os.getpid(),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    path.write_text(json.dumps(note))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def lock_is_free(cache_dir: str | os.PathLike[str], run_id: str) -> bool:
    """Whether nobody (no thread, no process) holds :func:`run_lock` for ``run_id`` right now."""
    path = Path(cache_dir) / f"{run_id}.lock"
    if not path.exists():
        return True
    with open(path, "a+") as handle:
        try:
            # flock locks belong to open files, so this conflicts with a lock held by another
            # thread of this process too; a killed process's locks are released by the kernel.
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return True


def interrupted_runs(cache_dir: str | os.PathLike[str]) -> list[InterruptedRun]:
    """Runs whose training started but whose process died before saving them, newest first.

    Training them again (``fit`` with the same data and parameters) clears the note, as does
    :func:`delete_run`.
    """
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    found = []
    for path in cache_dir.glob(f"{MARKER_PREFIX}*.json"):
        rid = path.name[len(MARKER_PREFIX):-len(".json")]
        if has_run(cache_dir, rid) or not lock_is_free(cache_dir, rid):
            continue  # finished after all, or still training
        try:
            note = json.loads(path.read_text())
            found.append(InterruptedRun(run_id=rid, data_hash=str(note["data_hash"]),
                                        batch_key=note["batch_key"], params=dict(note["params"]),
                                        n_cells=int(note["n_cells"]), started=str(note["started"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a note cut short by the crash itself: the run is simply not listed
    return sorted(found, key=lambda r: r.started, reverse=True)


def clean_stale(cache_dir: str | os.PathLike[str]) -> list[str]:
    """Remove what killed writers left behind; return the names removed.

    That is ``.tmp-<run_id>-*`` folders of runs nobody is training now (their :func:`run_lock` is
    free), and notes of interrupted runs that have since been saved. Safe to call at any time, from
    any process: folders being written under a held lock are left alone.
    """
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    removed = []
    for path in cache_dir.iterdir():
        if path.name.startswith(TMP_PREFIX) and path.is_dir():
            rid = path.name[len(TMP_PREFIX):].rsplit("-", 1)[0]
            if lock_is_free(cache_dir, rid):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
                logger.warning("removed %s, left half-written by a training process that died", path)
        elif path.name.startswith(MARKER_PREFIX) and path.name.endswith(".json"):
            rid = path.name[len(MARKER_PREFIX):-len(".json")]
            if has_run(cache_dir, rid) and lock_is_free(cache_dir, rid):
                path.unlink(missing_ok=True)
                removed.append(path.name)
    return sorted(removed)


@contextlib.contextmanager
def run_lock(cache_dir: str | os.PathLike[str], run_id: str) -> Iterator[None]:
    """Exclusive advisory lock on ``cache_dir/<run_id>.lock`` (blocks until free; also across threads)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{run_id}.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
