"""Background training jobs, shared by every session of this server process.

A job is keyed by its run id (a hash of the data and every parameter), so two sessions that press
Train on the same data and settings share one job, and a session that comes back after a browser
refresh finds its job again by the run id. Training happens in a worker thread, never in the
Streamlit script, so pages stay responsive; the job board itself is held by ``st.cache_resource``.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np

from engine.analysis.preview import preview_cells
from engine.model.params import RunParams
from engine.model.training import EpochReport, TrainingCancelled
from engine.runs.fit import fit
from engine.runs.records import (
    InterruptedRun,
    clean_stale,
    data_hash,
    interrupted_runs,
    run_id,
)

JobStatus = Literal["running", "finished", "failed", "cancelled"]

logger = logging.getLogger(__name__)


@dataclass
class TrainingJob:
    """One training run in progress (or just ended). Read by pages, written by its worker thread."""

    run_id: str
    data_hash: str
    dataset_name: str
    params: RunParams
    batch_key: str | None
    n_cells: int
    started: float = field(default_factory=time.time)
    status: JobStatus = "running"
    error: str | None = None  # one line for the page
    traceback: str | None = None  # the whole traceback of a failure, for the log and for bug reports
    finished: float | None = None
    history: list[EpochReport] = field(default_factory=list)
    # live preview: (epoch, UMAP of the preview cells' current latent), the newest only
    preview: tuple[int, np.ndarray] | None = None
    preview_labels: np.ndarray | None = None  # what the preview is coloured by, per preview cell
    preview_label_name: str = ""
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _worker: threading.Thread | None = field(default=None, repr=False)

    @property
    def n_epochs(self) -> int:
        """Epochs the run trains for: the latest report's count, else the planned maximum."""
        return self.history[-1].n_epochs if self.history else self.params.resolved_max_epochs(self.n_cells)

    @property
    def epochs_done(self) -> int:
        """Epochs finished so far."""
        return self.history[-1].epoch if self.history else 0

    @property
    def elapsed(self) -> float:
        """Seconds since the job started, up to its end when it has ended."""
        return (self.finished or time.time()) - self.started

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the pace so far (an upper bound: early stopping may end sooner)."""
        if not self.history:
            return None
        per_epoch = self.elapsed / self.epochs_done
        return per_epoch * (self.n_epochs - self.epochs_done)

    def cancel(self) -> None:
        """Ask the worker to stop; it checks between minibatches and saves nothing."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has ended; True if it did within ``timeout``."""
        return self._done.wait(timeout)


class JobBoard:
    """Every training job of this server process, by run id. Thread-safe."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir)
        self._lock = threading.Lock()
        self._jobs: dict[str, TrainingJob] = {}
        # A server killed mid-training left half-written folders: remove them before anyone looks.
        clean_stale(self.cache_dir)

    def start(self, adata: ad.AnnData, *, params: RunParams, batch_key: str | None,
              dataset_name: str = "") -> TrainingJob:
        """Start training ``adata`` in the background, or return the job already running it."""
        rid = run_id(adata, params=params, batch_key=batch_key)
        with self._lock:
            job = self._jobs.get(rid)
            if job is not None and job.status == "running":
                return job
            job = TrainingJob(run_id=rid, data_hash=data_hash(adata), dataset_name=dataset_name,
                              params=params, batch_key=batch_key, n_cells=adata.n_obs)
            job.preview_label_name, job.preview_labels = _preview_colours(adata, batch_key)
            self._jobs[rid] = job
        # fit writes obsm/uns into the AnnData it gets: give it its own copy.
        worker = threading.Thread(target=self._train, args=(job, adata.copy()),
                                  name=f"train-{rid[:12]}", daemon=True)
        job._worker = worker
        worker.start()
        return job

    def get(self, rid: str) -> TrainingJob | None:
        """The job of run ``rid``, or None when this server has none."""
        with self._lock:
            return self._jobs.get(rid)

    def jobs(self, *, data_hash: str | None = None) -> list[TrainingJob]:
        """Jobs known to this server, newest first, optionally only those on one dataset."""
        with self._lock:
            jobs = list(self._jobs.values())
        if data_hash is not None:
            jobs = [j for j in jobs if j.data_hash == data_hash]
        return sorted(jobs, key=lambda j: j.started, reverse=True)

    def interrupted(self, *, data_hash: str | None = None) -> list[InterruptedRun]:
        """Runs whose training was cut off by a crash or restart of the server (not by a user's cancel).

        Optionally only those on one dataset. The page offers to train them again.
        """
        return [r for r in interrupted_runs(self.cache_dir) if data_hash is None or r.data_hash == data_hash]

    def _train(self, job: TrainingJob, adata: ad.AnnData) -> None:
        logger.info("training run %s started: %s cells x %s genes, %s, batch key %s", job.run_id,
                    f"{adata.n_obs:,}", f"{adata.n_vars:,}", job.params.likelihood, job.batch_key)
        try:
            fit(adata, params=job.params, batch_key=job.batch_key, cache_dir=self.cache_dir,
                on_epoch=job.history.append, should_stop=job._cancel.is_set,
                on_preview=lambda epoch, layout: setattr(job, "preview", (epoch, layout)),
                preview_every=max(1, min(5, job.n_epochs // 8)))  # a few pictures even in a short run
            job.status = "finished"
        except TrainingCancelled:
            job.status = "cancelled"
        except Exception as err:  # noqa: BLE001 - any failure is shown on the page, never raised
            job.error = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
            job.traceback = traceback.format_exc()
            job.status = "failed"
            logger.exception("training run %s failed", job.run_id)
        finally:
            job.finished = time.time()
            job._done.set()
        logger.info("training run %s %s after %.1f s, %d epochs", job.run_id, job.status, job.elapsed,
                    job.epochs_done)


def _preview_colours(adata: ad.AnnData, batch_key: str | None) -> tuple[str, np.ndarray | None]:
    """What to colour the live preview by: a cell-type-like annotation if there is one, else the batch."""
    from dashboard.summary import grouping_columns

    columns = grouping_columns(adata)
    typed = [c for c in columns if any(word in c.lower() for word in ("type", "cluster", "label", "annotation"))]
    name = typed[0] if typed else (batch_key if batch_key in columns else "")
    if not name:
        return "", None
    return name, adata.obs[name].astype(str).to_numpy()[preview_cells(adata.n_obs)]
