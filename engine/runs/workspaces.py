"""Workspaces: a trained run with what people made on it (issue 17 part 3). No torch, no Streamlit.

A workspace is one run of the run cache (:mod:`engine.runs.records`) together with its items in the
annotation store (:mod:`engine.runs.annotations`): cluster names, cell groups, DE and marker results
and how to open its data again. :func:`list_workspaces` lists them all, across datasets, most
recently used first; :func:`rename_workspace` gives one a name; :func:`delete_workspace` removes the
run and everything kept with it.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from engine.runs import records
from engine.runs.annotations import AnnotationStore

__all__ = ["MAX_NAME_LENGTH", "Workspace", "default_name", "delete_workspace", "list_workspaces",
           "rename_workspace"]

MAX_NAME_LENGTH = 80


@dataclass(frozen=True)
class Workspace:
    """One row of the workspace list."""

    run_id: str
    name: str  # the name the user gave it, else :func:`default_name`
    named: bool  # whether the user gave the name
    dataset: str  # the dataset's name ("" when the store never recorded how the data was opened)
    description: str  # cells and genes the run was trained on, and its batch column
    created: str  # when the run was trained (ISO time)
    last_used: float  # latest change or opening (seconds since the epoch); the training time if none
    n_names: int  # cluster names, all resolutions together
    n_groups: int
    n_de: int  # differential expression results kept
    n_markers: int  # marker tables kept
    can_reopen: bool  # the store knows how to open the run's data again


def default_name(dataset: str, run_id: str) -> str:
    """The name of a workspace nobody named: its dataset and the run's short id."""
    return f"{dataset or 'Unknown data'} · {run_id[:10]}"


def _epoch(created: str) -> float:
    try:
        when = dt.datetime.fromisoformat(created)
    except (TypeError, ValueError):
        return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def _describe(info: records.RunInfo) -> str:
    metrics = info.metrics
    parts = []
    if metrics.get("n_cells") is not None and metrics.get("n_genes") is not None:
        parts.append(f"{int(metrics['n_cells']):,} cells x {int(metrics['n_genes']):,} genes")
    if info.batch_key:
        parts.append(f"batches from {info.batch_key}")
    if not info.has_model:
        parts.append(f"{info.metrics.get('imported', {}).get('representation')} opened from the file, no model")
    return ", ".join(parts)


def list_workspaces(cache_dir: str | os.PathLike[str], store: AnnotationStore | None = None) -> list[Workspace]:
    """Every finished run in ``cache_dir`` as a workspace, most recently used first.

    Reads each ``run.json`` and three queries of the store, whatever the number of items.
    """
    store = store or AnnotationStore(cache_dir)
    runs = records.list_runs(cache_dir)
    if not runs:
        return []
    summary = store.summary()
    datasets = store.values("dataset", "")
    names = store.values("workspace", "name")
    found = []
    for info in runs:
        kinds = summary.get(info.run_id, {})
        dataset = datasets.get(info.run_id)
        dataset_name = str(dataset.get("name") or "") if isinstance(dataset, dict) else ""
        name = names.get(info.run_id)
        latest = max((latest for _, latest in kinds.values()), default=0.0)
        found.append(Workspace(
            run_id=info.run_id,
            name=str(name) if name else default_name(dataset_name, info.run_id),
            named=bool(name),
            dataset=dataset_name,
            description=_describe(info),
            created=info.created,
            last_used=max(latest, _epoch(info.created)),
            n_names=kinds.get("cluster_names", (0, 0.0))[0],
            n_groups=kinds.get("group", (0, 0.0))[0],
            n_de=kinds.get("de", (0, 0.0))[0],
            n_markers=kinds.get("markers", (0, 0.0))[0],
            can_reopen=isinstance(dataset, dict),
        ))
    return sorted(found, key=lambda w: (w.last_used, w.created, w.run_id), reverse=True)


def rename_workspace(cache_dir: str | os.PathLike[str], run_id: str, name: str,
                     store: AnnotationStore | None = None) -> str:
    """Give run ``run_id``'s workspace the name ``name`` (spaces around it dropped); returns the name kept.

    Raises ValueError, saying why, for an empty or overlong name, a name another workspace has, or a
    run that is not in the cache (deleted meanwhile); nothing is changed then.
    """
    store = store or AnnotationStore(cache_dir)
    name = " ".join(str(name).split())
    if not name:
        raise ValueError("Give the workspace a name: it is empty. The old name is kept.")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"That name has {len(name)} characters; keep it to {MAX_NAME_LENGTH}. "
                         "The old name is kept.")
    if not records.has_run(cache_dir, run_id):
        raise ValueError(f"Run {run_id[:10]} is not in the run cache any more (deleted?): nothing to rename.")
    for other in list_workspaces(cache_dir, store):
        if other.run_id != run_id and other.name.casefold() == name.casefold():
            raise ValueError(f"Another workspace is already called {name!r} (run {other.run_id[:10]}): "
                             "choose another name. The old name is kept.")
    store.put(run_id, "workspace", "name", name)
    return name


def delete_workspace(cache_dir: str | os.PathLike[str], run_id: str, store: AnnotationStore | None = None) -> None:
    """Delete run ``run_id`` from the cache, then every annotation kept with it (no error when absent).

    The run goes first: a session that still shows it then finds no run to write its names to.
    """
    records.delete_run(Path(cache_dir), run_id)
    (store or AnnotationStore(cache_dir)).delete_run(run_id)
