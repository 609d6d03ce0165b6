"""A run's workspace on the server, and links that restore it (issue 17 parts 1 and 2).

Cluster names, cell groups and how to re-open a run's data live in the annotation store beside the
run cache (:mod:`engine.runs.annotations`), not only in the session:

- :func:`sync` runs on every page that needs the active run (and after every edit of names or
  groups): it writes what this session changed since it last read the store (compared with a
  :class:`Snapshot`), then reads the store back. Two sessions on one run therefore see each other's
  changes on their next rerun; the last writer wins per item (one group, one cluster's name).
- The first sync of a run records how its data was opened (``dataset`` item: the sample, a server
  file or a kept upload, plus the QC settings that produced its cells).
- :func:`open_link` does the reverse for a URL ``?run=<id>`` opened in a new session: it reads the
  data again, applies the QC settings and makes the run active, and puts the view the URL names
  (embedding, colouring, resolution) into the Explore page's widgets.
- :func:`workspaces`, :func:`rename` and :func:`delete` serve the Data page's list of workspaces
  (part 3): every run with what was made on it, opened like a link.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import loading, training
from dashboard.state import AppState, Dataset
from dashboard.training import cache_dir, load_run
from engine.preprocessing.qc import QCThresholds
from engine.runs import records as ecache
from engine.runs import workspaces as ews
from engine.runs.annotations import AnnotationStore

__all__ = ["Snapshot", "clustering", "dataset_record", "delete", "is_run_id", "job_in_progress", "keep_result",
           "kept_results", "link_choice", "open_link", "rename", "store", "sync", "view_params", "workspaces"]

EMBEDDINGS = ("UMAP", "t-SNE")
DE_PARAMS = ("groupby", "group1", "group2")
_LINK_VIEW = "atlas_link_view"
# The Explore page's colour sources, and the widget that names the column or gene of each.
COLOUR_SOURCES = MappingProxyType({"Cluster": None, "Annotation": "explore_annotation",
                                   "QC metric": "explore_qc", "Gene": "explore_gene"})


@dataclass
class Snapshot:
    """What a session last read from the store for its active run."""

    run_id: str
    clustering: tuple  # (run id, filtered key, resolution) the names were read for
    names: dict[str, str] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # The arrays handed to the session (an edit replaces them, so `is` tells what is unchanged), and
    # the store's stamp of the groups when read (unchanged: nothing to read again).
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    groups_stamp: tuple = ()


def store() -> AnnotationStore:
    """The annotation store of the run cache (its tables checked once per server)."""
    return _store(str(cache_dir()))


@st.cache_resource(show_spinner=False, max_entries=4)
def _store(path: str) -> AnnotationStore:
    return AnnotationStore(path)


def clustering(state: AppState) -> tuple:
    """The clustering that cluster names belong to: run, filtered data and Leiden resolution."""
    return (state.active_run_id, state.filtered_key, float(state.leiden_resolution))


def _res(resolution: float) -> str:
    return f"{float(resolution):g}|"


# ---- Reading and writing a run's names and groups ----------------------------------------------
def _push_groups(db: AnnotationStore, rid: str, old: Mapping[str, tuple], new: Mapping[str, np.ndarray],
                 same: Mapping[str, np.ndarray] | None = None) -> bool:
    """Write the groups that differ from ``old`` and delete those gone; True when anything was written."""
    same = same or {}
    changed = {}
    for position, (name, cells) in enumerate(new.items()):
        if same.get(name) is cells:
            continue  # the very array read from the store: unchanged
        cells = tuple(map(str, cells))
        if old.get(name) != cells:
            changed[name] = {"cells": list(cells), "order": position}
    deleted = tuple(name for name in old if name not in new)
    if changed or deleted:
        db.put_many(rid, "group", changed, delete=deleted)
    return bool(changed or deleted)


def _push_names(db: AnnotationStore, rid: str, resolution: float, old: Mapping[str, str],
                new: Mapping[str, str]) -> None:
    prefix = _res(resolution)
    changed = {prefix + c: n for c, n in new.items() if old.get(c) != n}
    deleted = tuple(prefix + c for c in old if c not in new)
    if changed or deleted:
        db.put_many(rid, "cluster_names", changed, delete=deleted)


def sync(state: AppState) -> None:
    """Write this session's changes to its active run's names and groups, then read them back.

    Does nothing without an active run (the names and groups then live in the session only).
    """
    rid = state.active_run_id
    if rid is None or state.filtered is None:
        return
    db = store()
    snap = state.workspace if isinstance(state.workspace, Snapshot) else None
    current = clustering(state)
    pushed = True
    if snap is not None and snap.run_id == rid:
        pushed = _push_groups(db, rid, snap.groups, state.cell_groups, snap.arrays)
        if state.cluster_names_for == snap.clustering:
            _push_names(db, rid, snap.clustering[2], snap.names, state.cluster_names)
    else:
        # The first look at this run in this session: keep what the session made before (groups
        # drawn on another run of these cells, names given before the store was read) where the
        # store has nothing under that name, and record how to open the run's data again.
        kept = db.items(rid, "group")
        _push_groups(db, rid, {}, {k: v for k, v in state.cell_groups.items() if k not in kept})
        if state.cluster_names_for == current and state.cluster_names:
            named = db.items(rid, "cluster_names", prefix=_res(current[2]))
            _push_names(db, rid, current[2], {}, {c: n for c, n in state.cluster_names.items()
                                                  if _res(current[2]) + c not in named})
        record = dataset_record(state)
        if record is not None:
            db.put(rid, "dataset", "", record)
        db.touch(rid)  # the workspace's "last used"
    stamp = db.stamp(rid, "group")
    if not pushed and snap is not None and stamp == snap.groups_stamp:
        arrays, read = snap.arrays, snap.groups  # nobody changed the groups: nothing to parse
    else:
        groups = sorted(db.items(rid, "group").items(), key=lambda kv: kv[1].get("order", 0))
        arrays = {k: np.asarray(v["cells"], dtype=object) for k, v in groups}
        read = {k: tuple(map(str, v["cells"])) for k, v in groups}
    prefix = _res(current[2])
    names = {k[len(prefix):]: str(v) for k, v in db.items(rid, "cluster_names", prefix=prefix).items()}
    state.cell_groups = dict(arrays)
    state.cluster_names = dict(names)
    state.cluster_names_for = current
    state.workspace = Snapshot(rid, current, dict(names), read, dict(arrays), stamp)


# ---- How to open a run's data again ------------------------------------------------------------
def _display_column(key: str) -> tuple[bool, str | None]:
    """Whether the gene names were changed on the Data page, and to which column (from the key)."""
    changes = [part[len("names="):] for part in key.split(":") if part.startswith("names=")]
    if not changes:
        return False, None
    column = changes[-1]
    return True, (None if column == "None" else column)


def dataset_record(state: AppState) -> dict | None:
    """How the session's dataset can be read again, and its QC settings; None when it cannot."""
    dataset = state.dataset
    if dataset is None:
        return None
    if dataset.kept_upload:
        source = {"source": "upload", "file": dataset.kept_upload}
    elif dataset.path and dataset.path == str(loading.SAMPLE_PATH):
        source = {"source": "sample"}
    elif dataset.path:
        root = loading.server_data_dir()
        path = loading.Path(dataset.path).resolve()
        if root is None or root not in path.parents:
            return None
        source = {"source": "server", "file": str(path.relative_to(root))}
    else:
        return None
    changed, column = _display_column(dataset.key)
    return {**source, "name": dataset.name, "transpose": dataset.transpose,
            "names_changed": changed, "names_column": column,
            "thresholds": dataclasses.asdict(state.thresholds),
            "mito_prefixes": list(state.mito_prefixes), "n_top_genes": int(state.n_top_genes),
            "hvg_batch_key": state.hvg_batch_key}


def _read(record: Mapping) -> Dataset:
    source, transpose = record.get("source"), record.get("transpose")
    if source == "sample":
        return loading.read_server_file(loading.SAMPLE_PATH, name=loading.SAMPLE_NAME, transpose=transpose)
    if source == "server":
        return loading.read_server_file(loading.resolve_server_file(str(record["file"])),
                                        name=record.get("name"), transpose=transpose)
    if source == "upload":
        return loading.read_kept_upload(str(record["file"]), display_name=str(record.get("name", "upload")),
                                        transpose=transpose)
    raise ValueError(f"unknown data source {source!r}")


def open_link(state: AppState, rid: str, params: Mapping[str, str]) -> None:
    """Open run ``rid`` from a link: read its data, apply its QC settings, make it active, restore the view.

    Raises ValueError with a message for the page when the data cannot be opened again.
    """
    record = store().get(rid, "dataset", "")
    if record is None:
        raise ValueError(f"Run {rid[:10]} exists, but how its data was opened is not known (it was "
                         "never shown on the Explore page). Load its data on the Data page, then pick "
                         "the run on the Train page.")
    dataset = _read(record)
    loading.use_dataset(state, dataset)
    if record.get("names_changed"):
        loading.use_display_names(state, record.get("names_column"))
    prefixes = tuple(record.get("mito_prefixes") or state.mito_prefixes)
    if prefixes != tuple(state.mito_prefixes):
        loading.use_mito_prefixes(state, prefixes)
    loading.apply_settings(state, QCThresholds(**record.get("thresholds", {})),
                           int(record.get("n_top_genes", state.n_top_genes)), record.get("hvg_batch_key"))
    run = load_run(rid)
    if run is None or run.metrics.get("cells_hash") not in (None, ecache.cells_hash(state.filtered)):
        raise ValueError(f"The data of run {rid[:10]} was opened again, but its cells no longer match "
                         "the run (the file changed?). Pick a run on the Train page.")
    state.active_run_id = rid
    state.workspace = None
    store().touch(rid)
    restore_view(state, params)


def workspaces() -> list[ews.Workspace]:
    """Every run in the cache with what was made on it, most recently used first."""
    return ews.list_workspaces(cache_dir(), store())


def rename(rid: str, name: str) -> str:
    """Name run ``rid``'s workspace; ValueError with a message for the page on a bad name."""
    return ews.rename_workspace(cache_dir(), rid, name, store())


def delete(state: AppState, rid: str) -> None:
    """Delete run ``rid`` and its names, groups and results (the session's active run if it was it)."""
    training.delete_run(state, rid)
    store().delete_run(rid)
    if isinstance(state.workspace, Snapshot) and state.workspace.run_id == rid:
        state.workspace = None


def restore_view(state: AppState, params: Mapping[str, str]) -> None:
    """Put the view a URL names into the Explore page's widgets (before they are drawn).

    The groups a DE link compares wait in the session until the DE page knows its options
    (:func:`link_choice`).
    """
    st.session_state[_LINK_VIEW] = {k: params[k] for k in DE_PARAMS if params.get(k)}
    embedding = params.get("embedding")
    if embedding in EMBEDDINGS:
        st.session_state["explore_embedding"] = embedding
    source = params.get("colour")
    if source in COLOUR_SOURCES:
        st.session_state["explore_source"] = source
        widget = COLOUR_SOURCES[source]
        if widget and params.get("by"):
            st.session_state[widget] = params["by"]
    try:
        resolution = float(params.get("res", ""))
    except ValueError:
        resolution = None
    if resolution is not None and 0.1 <= resolution <= 3.0:
        state.leiden_resolution = round(resolution, 1)
        st.session_state["explore_resolution"] = state.leiden_resolution


def view_params(state: AppState, *, embedding: str, source: str, name: str = "") -> dict[str, str]:
    """The URL parameters that restore the Explore page's view of the active run."""
    params = {"run": str(state.active_run_id), "embedding": embedding, "colour": source,
              "res": f"{state.leiden_resolution:g}"}
    if name:
        params["by"] = name
    return params


def link_choice(key: str, param: str, options: list[str]) -> None:
    """Before a choice widget is drawn: take its value from the link the session opened, once."""
    pending = st.session_state.get(_LINK_VIEW)
    if isinstance(pending, dict) and pending.get(param) in options:
        st.session_state[key] = pending.pop(param)


def set_url(params: Mapping[str, str]) -> None:
    """Make the browser's URL carry ``params`` (only when they changed: each change is a message)."""
    if any(st.query_params.get(k) != v for k, v in params.items()):
        st.query_params.update(params)


def _jsonable(value: Any) -> Any:
    if isinstance(value, pd.DataFrame):
        return json.loads(value.to_json(orient="records"))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray, pd.Index)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def keep_result(state: AppState, kind: str, key: str, table: pd.DataFrame, params: Mapping) -> None:
    """Keep a DE or marker result (its parameters and its table) with the active run on the server."""
    if state.active_run_id is None:
        return
    store().put(state.active_run_id, kind, key, {"params": _jsonable(params), "table": _jsonable(table)})


def kept_results(rid: str, kind: str) -> dict[str, dict]:
    """The DE (``kind="de"``) or marker results kept with run ``rid``, oldest first."""
    return store().items(rid, kind)


def is_run_id(text: str) -> bool:
    """Whether ``text`` looks like a run id (hex digits only), before it is used as a folder name."""
    return bool(re.fullmatch(r"[0-9a-f]{8,64}", text or ""))


def job_in_progress(rid: str) -> bool:
    """Whether run ``rid`` is being trained (its marker in the cache) or is a job of this server."""
    if (cache_dir() / f"{ecache.MARKER_PREFIX}{rid}.json").exists():
        return True
    from dashboard.training import job_board

    return job_board().get(rid) is not None


def missing_run_notice(rid: str) -> None:
    """Say that the link's run is gone and list the runs there are, as links."""
    runs = ecache.list_runs(cache_dir())
    lines = [f"The run in this link ({rid[:10]}) is not in the run cache any more: it was deleted, "
             "or the cache was cleared."]
    if runs:
        lines.append("Runs there are:")
        for info in runs[:20]:
            p = info.params
            what = (f"{p.likelihood.upper()}, {p.n_latent} latent" if p is not None
                    else f"opened from a file ({info.metrics.get('imported', {}).get('representation')})")
            lines.append(f"- [{info.run_id[:10]}](?run={info.run_id}): {what}, "
                         f"{info.metrics.get('n_cells', '?')} cells, "
                         f"{'trained' if p is not None else 'opened'} {info.created[:16].replace('T', ' ')}")
    else:
        lines.append("There are no runs in the cache: load data and train one.")
    st.warning("\n".join(lines), icon=":material/link_off:")
