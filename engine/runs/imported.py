"""Runs imported from an ``.h5ad`` that already holds a representation of its cells: no training.

An atlas analysed elsewhere already carries what the Explore page shows: scvi-tools and this
engine's ``python -m engine train/embed`` write the latent mean to ``obsm["X_scVI"]``, scanpy's
pipeline writes ``obsm["X_pca"]``; both add ``obsm["X_umap"]`` (maybe ``obsm["X_tsne"]``) and
``obs["leiden"]``. :func:`import_run` turns these into a run of the run cache without a model:

``cache_dir/<run_id>/`` holds ``run.json`` (``"model": false``, ``"params": null``, where the
representation came from under ``metrics["imported"]``), ``latent.npy`` (the representation),
``X_umap.npy``/``X_tsne.npy`` (the file's own embeddings, when present) and ``leiden.npy`` (the
file's clusters, as text). Written like a trained run (a temporary folder renamed into place).

The run id is a hash of the cells (names and counts), the genes and the arrays imported, so
importing the same file twice gives the same run. What needs a model (denoised expression, scVI's
Bayesian DE, posterior checks) is not available on such a run (``run.has_model`` is False); the
kNN graph, Leiden at other resolutions, Wilcoxon DE and the export work from the representation.

No torch here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from engine.runs.records import (
    MODEL_FORMAT_VERSION,
    TMP_PREFIX,
    CorruptRunError,
    Run,
    cells_hash,
    data_hash,
    read_info,
)

logger = logging.getLogger(__name__)

__all__ = ["REPRESENTATIONS", "SavedAnalysis", "import_run", "imported_run_id", "load_imported", "saved_analysis"]

#: Representations a run can be imported from, in order of preference.
REPRESENTATIONS = ("X_scVI", "X_pca")
EMBEDDINGS = ("X_umap", "X_tsne")
CLUSTER_KEY = "leiden"
DEFAULT_RESOLUTION = 1.0  # scanpy's default, assumed when the file does not say
ORIGINS = MappingProxyType({"X_scVI": "scVI (scvi-tools or this engine)", "X_pca": "PCA (scanpy)"})


@dataclass(frozen=True)
class SavedAnalysis:
    """What a loaded file holds that can be opened without training (see :func:`saved_analysis`)."""

    representation: str  # obsm key: "X_scVI" or "X_pca"
    n_dims: int
    embeddings: tuple[str, ...]  # obsm keys among X_umap, X_tsne
    clusters: str | None  # "leiden" when obs holds it
    resolution: float | None  # of the clusters, when the file says

    def describe(self) -> str:
        """One sentence for the page: what was found in the file."""
        parts = [f"a {ORIGINS[self.representation]} representation (`obsm['{self.representation}']`, "
                 f"{self.n_dims} dimensions)"]
        if self.embeddings:
            parts.append(" and ".join(f"`obsm['{e}']`" for e in self.embeddings))
        if self.clusters:
            parts.append(f"clusters in `obs['{self.clusters}']`")
        return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]


def _representation(adata: AnnData, representation: str | None) -> str:
    if representation is not None:
        if representation not in adata.obsm:
            raise ValueError(
                f"The file has no obsm['{representation}'] (it has {_listing(adata.obsm)}): pick one of "
                f"{', '.join(REPRESENTATIONS)} that it holds, or train a model on the Train page.")
        return representation
    for key in REPRESENTATIONS:
        if key in adata.obsm:
            return key
    raise ValueError(
        f"The file holds no representation of its cells to open without training: expected "
        f"obsm['X_scVI'] (scvi-tools, or `python -m engine train`) or obsm['X_pca'] (scanpy), found "
        f"{_listing(adata.obsm)}. Train a model on the Train page instead.")


def _listing(mapping) -> str:
    keys = list(mapping.keys())
    return ", ".join(f"obsm['{k}']" for k in keys) if keys else "no obsm entries"


def _resolution(adata: AnnData) -> float | None:
    params = adata.uns.get(CLUSTER_KEY, {}).get("params", {}) if isinstance(adata.uns.get(CLUSTER_KEY), dict) else {}
    try:
        value = float(params["resolution"])
    except (KeyError, TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def saved_analysis(adata: AnnData) -> SavedAnalysis | None:
    """What ``adata`` holds that :func:`import_run` can open, or None when it holds no representation."""
    try:
        key = _representation(adata, None)
    except ValueError:
        return None
    rep = adata.obsm[key]
    return SavedAnalysis(
        representation=key, n_dims=int(rep.shape[1]) if getattr(rep, "ndim", 0) == 2 else 0,
        embeddings=tuple(e for e in EMBEDDINGS if e in adata.obsm),
        clusters=CLUSTER_KEY if CLUSTER_KEY in adata.obs else None, resolution=_resolution(adata))


def _array(adata: AnnData, key: str, *, what: str, n_cols: int | None = None) -> np.ndarray:
    value = adata.obsm[key]
    if isinstance(value, pd.DataFrame):
        value = value.to_numpy()
    try:
        array = np.asarray(value.toarray() if hasattr(value, "toarray") else value, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"obsm['{key}'] ({what}) is not numeric: {err}. Store it as a float array.") from err
    if array.ndim != 2 or array.shape[0] != adata.n_obs:
        raise ValueError(f"obsm['{key}'] ({what}) has shape {array.shape}: expected one row per cell "
                         f"({adata.n_obs:,} rows) and the dimensions as columns.")
    if n_cols is not None and array.shape[1] != n_cols:
        raise ValueError(f"obsm['{key}'] ({what}) has {array.shape[1]} columns: expected {n_cols} "
                         f"(x and y). Recompute it with scanpy, or leave it out.")
    if array.shape[1] < 2:
        raise ValueError(f"obsm['{key}'] ({what}) has {array.shape[1]} column(s): at least 2 are needed.")
    if not np.isfinite(array).all():
        raise ValueError(f"obsm['{key}'] ({what}) holds NaN or infinite values in "
                         f"{int((~np.isfinite(array).all(axis=1)).sum()):,} cells: fix or remove them first.")
    return np.ascontiguousarray(array)


def _clusters(adata: AnnData) -> np.ndarray | None:
    if CLUSTER_KEY not in adata.obs:
        return None
    column = adata.obs[CLUSTER_KEY]
    if column.isna().any():
        raise ValueError(f"obs['{CLUSTER_KEY}'] has no cluster for {int(column.isna().sum()):,} cells: "
                         "give every cell a cluster, or delete the column to cluster again here.")
    return column.astype(str).to_numpy().astype(str)


def imported_run_id(adata: AnnData, latent: np.ndarray, embeddings: dict[str, np.ndarray],
                    clusters: np.ndarray | None, *, representation: str, data_hash_: str | None = None) -> str:
    """The id of the run :func:`import_run` makes: a hash of the cells, genes and imported arrays."""
    h = hashlib.blake2b(digest_size=10)
    h.update(f"imported;format={MODEL_FORMAT_VERSION};data={data_hash_ or data_hash(adata)};"
             f"cells={cells_hash(adata)};rep={representation};".encode())
    for name, array in [("latent", latent), *sorted(embeddings.items())]:
        h.update(f"{name}{array.shape}".encode())
        h.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    if clusters is not None:
        h.update(json.dumps(clusters.tolist()).encode())
    return h.hexdigest()


def import_run(adata: AnnData, cache_dir: str | os.PathLike[str], *, representation: str | None = None,
               source: str = "") -> Run:
    """Make a run without a model from the representation, embeddings and clusters ``adata`` holds.

    ``representation``: the obsm key of the cells' representation (default: ``X_scVI``, else
    ``X_pca``). ``obsm["X_umap"]``, ``obsm["X_tsne"]`` and ``obs["leiden"]`` are kept when present;
    the Leiden resolution is read from ``uns["leiden"]["params"]`` (else taken as 1). ``source``
    names the file for the run's record. The run refers to ``adata``'s cells and genes as they are:
    import before filtering cells. Importing the same data again loads the same run (its id is a
    hash of the content). Raises ValueError, saying what to do, when a key is missing or an array
    has the wrong shape.
    """
    key = _representation(adata, representation)
    if adata.n_obs < 3:
        raise ValueError(f"Only {adata.n_obs} cell(s): a representation needs at least 3 cells to explore.")
    latent = _array(adata, key, what="the representation")
    embeddings = {e: _array(adata, e, what="an embedding", n_cols=2) for e in EMBEDDINGS if e in adata.obsm}
    clusters = _clusters(adata)
    resolution = _resolution(adata) if clusters is not None else None
    digest = data_hash(adata)
    rid = imported_run_id(adata, latent, embeddings, clusters, representation=key, data_hash_=digest)
    found = load_imported(cache_dir, rid)
    if found is not None:
        return found
    metrics: dict[str, Any] = {
        "imported": {"representation": key, "origin": ORIGINS[key], "source": str(source),
                     "embeddings": sorted(embeddings), "clusters": CLUSTER_KEY if clusters is not None else None,
                     "resolution": resolution if resolution is not None else (
                         DEFAULT_RESOLUTION if clusters is not None else None),
                     "resolution_known": resolution is not None},
        "n_cells": int(adata.n_obs), "n_genes": int(adata.n_vars), "n_latent": int(latent.shape[1]),
        "data_hash": digest, "cells_hash": cells_hash(adata),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    run = Run(run_id=rid, params=None, batch_key=None, batch_categories=None,
              var_names=list(map(str, adata.var_names)), metrics=metrics, history=pd.DataFrame(),
              latent=latent, module=None, path=None, embeddings=embeddings, clusters=clusters)
    _save(run, Path(cache_dir), data_hash_=digest)
    logger.info("imported %s of %s cells as run %s", key, f"{adata.n_obs:,}", rid)
    return run


def _save(run: Run, cache_dir: Path, *, data_hash_: str) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / run.run_id
    tmp = cache_dir / f"{TMP_PREFIX}{run.run_id}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        np.save(tmp / "latent.npy", run.latent)
        for name, array in run.embeddings.items():
            np.save(tmp / f"{name}.npy", array)
        if run.clusters is not None:
            np.save(tmp / f"{CLUSTER_KEY}.npy", run.clusters.astype(str))  # unicode, never pickled
        info = {"format_version": MODEL_FORMAT_VERSION, "run_id": run.run_id, "model": False,
                "data_hash": data_hash_, "params": None, "metrics": run.metrics, "batch_key": None,
                "batch_categories": None, "var_names": run.var_names}
        (tmp / "run.json").write_text(json.dumps(info, indent=1))  # last: it makes the run
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    run.path = final


def load_imported(cache_dir: str | os.PathLike[str], run_id: str, info: dict | None = None) -> Run | None:
    """An imported run from the cache, or None when there is none (or ``run_id`` is a trained run).

    Raises :class:`~engine.runs.records.CorruptRunError` when its folder cannot be read.
    """
    path = Path(cache_dir) / run_id
    if not path.is_dir():
        return None
    info = info if info is not None else read_info(path)
    if info.get("model", True) is not False:
        return None
    try:
        latent = np.load(path / "latent.npy", allow_pickle=False)
        metrics = info["metrics"]
        embeddings = {name: np.load(path / f"{name}.npy", allow_pickle=False)
                      for name in metrics["imported"]["embeddings"]}
        clusters = (np.load(path / f"{CLUSTER_KEY}.npy", allow_pickle=False)
                    if metrics["imported"]["clusters"] else None)
    except Exception as err:  # noqa: BLE001 - any failure to read means the folder is unusable
        raise CorruptRunError(
            f"imported run {run_id} in {path} is corrupt ({type(err).__name__}: {err}); delete it with "
            "engine.runs.records.delete_run and import the file again") from err
    return Run(run_id=run_id, params=None, batch_key=None, batch_categories=None, var_names=info["var_names"],
               metrics=metrics, history=pd.DataFrame(), latent=latent, module=None, path=path,
               embeddings=embeddings, clusters=clusters)
