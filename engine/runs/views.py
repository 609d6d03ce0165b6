"""Views of a run computed once and kept in its folder: UMAP, t-SNE, Leiden labels.

At atlas scale a UMAP of 1M cells takes minutes; a server restart must not redo it. The first
time a view is computed it is written to ``<run folder>/views/<name>.npy`` (a temporary file
renamed into place, so a reader never sees half an array), and later sessions and servers read it
in milliseconds. A run's latent space never changes (a retrained run replaces the whole folder,
views included), so a saved view never goes stale.

Names are plain: ``"X_umap"``, ``"X_tsne"``, ``"leiden-<resolution>"`` (``leiden_view``). The kNN
graph (:func:`save_graph`) is kept beside them, so that clustering at another resolution after a
restart loads it instead of searching the neighbours again (35 s at 1M cells).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
from pathlib import Path

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)

__all__ = ["leiden_view", "load_graph", "load_view", "save_graph", "save_view"]

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def leiden_view(resolution: float) -> str:
    """The view name of Leiden labels at ``resolution`` (e.g. ``"leiden-1"``, ``"leiden-0.8"``)."""
    return f"leiden-{float(resolution):g}"


def _path(run_path: str | os.PathLike[str], name: str) -> Path:
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a view name (letters, digits, '_', '.', '-')")
    return Path(run_path) / "views" / f"{name}.npy"


def save_view(run_path: str | os.PathLike[str], name: str, array: np.ndarray) -> None:
    """Keep ``array`` as the run's view ``name``, atomically.

    Failures are logged, never raised: a view can always be computed again.
    """
    path = _path(run_path, name)
    tmp = path.with_name(f".{path.stem}-{secrets.token_hex(4)}.npy")
    try:
        path.parent.mkdir(exist_ok=True)
        array = np.asarray(array)
        if array.dtype == object:  # labels from pandas: kept as fixed-width text (no pickles)
            array = array.astype(str)
        np.save(tmp, array, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as err:  # a read-only or full cache only costs a recomputation later
        logger.warning("could not keep view %s of %s: %s", name, run_path, err)
        with contextlib.suppress(OSError):
            tmp.unlink()


def view_stamp(run_path: str | os.PathLike[str] | None, name: str) -> float | None:
    """When the run's view ``name`` was written (its file's mtime), or None.

    Part of a cache key, so a cache that once found no view looks again after it is written.
    """
    if run_path is None:
        return None
    try:
        return _path(run_path, name).stat().st_mtime
    except OSError:
        return None


def load_view(run_path: str | os.PathLike[str] | None, name: str, *, n_cells: int) -> np.ndarray | None:
    """The run's view ``name``, or None when it was never kept (or does not fit ``n_cells`` cells)."""
    if run_path is None:
        return None
    path = _path(run_path, name)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if array.shape[0] != n_cells:
        logger.warning("view %s of %s has %d rows, not %d: ignored", name, run_path, array.shape[0], n_cells)
        return None
    return array


def save_graph(run_path: str | os.PathLike[str], distances: sp.spmatrix, connectivities: sp.spmatrix,
               params: dict) -> None:
    """Keep the kNN graph of the run's latent: ``obsp`` distances and connectivities, ``uns["neighbors"]["params"]``."""
    folder = Path(run_path) / "views"
    tmp = folder / f".graph-{secrets.token_hex(4)}"
    try:
        tmp.mkdir(parents=True)
        sp.save_npz(tmp / "distances.npz", sp.csr_matrix(distances), compressed=False)
        sp.save_npz(tmp / "connectivities.npz", sp.csr_matrix(connectivities), compressed=False)
        (tmp / "params.json").write_text(json.dumps(params))
        final = folder / "graph"
        if final.exists():  # another session kept the same graph first
            return
        os.replace(tmp, final)
    except OSError as err:
        logger.warning("could not keep the graph of %s: %s", run_path, err)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_graph(
    run_path: str | os.PathLike[str] | None, *, n_cells: int
) -> tuple[sp.csr_matrix, sp.csr_matrix, dict] | None:
    """The kept graph as ``(distances, connectivities, params)``, or None."""
    if run_path is None:
        return None
    folder = Path(run_path) / "views" / "graph"
    try:
        distances = sp.load_npz(folder / "distances.npz").tocsr()
        connectivities = sp.load_npz(folder / "connectivities.npz").tocsr()
        params = json.loads((folder / "params.json").read_text())
    except (OSError, ValueError):
        return None
    if connectivities.shape != (n_cells, n_cells):
        return None
    return distances, connectivities, params
