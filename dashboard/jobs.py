"""Training jobs of this server, run on a Dask cluster and followed through the run cache folder.

A job is keyed by its run id (a hash of the data and every parameter), so two sessions that press
Train on the same data and settings share one job (one Dask task, keyed ``train-<run id>``), and a
session that comes back after a browser refresh finds its job again by the run id. Training runs in
a worker process of the cluster (:mod:`dashboard.compute`: a local cluster by default), never in the
Streamlit server, so a crash or an out-of-memory kill ends only that job. The worker runs
:func:`engine.runs.remote.train_job` and reports through small files in the run cache (history,
preview, status) and reads a cancel marker, so progress and cancel work with any scheduler on any
shared filesystem. Here one thread per job (``TrainingJob._worker``) writes the input, submits the
task, copies the progress into the :class:`TrainingJob` pages read, and records the end. The board
itself is held by ``st.cache_resource``: one per server.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import numpy as np
import psutil
from distributed import Future
from distributed.scheduler import KilledWorker

from dashboard.compute import Compute, connect
from engine.analysis.preview import preview_cells
from engine.model.params import RunParams
from engine.model.training import EpochReport
from engine.runs import remote
from engine.runs.records import (
    InterruptedRun,
    clean_stale,
    data_hash,
    interrupted_runs,
    lock_is_free,
    run_id,
)

JobStatus = Literal["running", "finished", "failed", "cancelled"]

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.2  # how often a job's thread reads its progress file and looks at its task
ORPHAN_GRACE_SECONDS = 5.0  # how long a new board waits for workers of a killed server to exit


@dataclass
class TrainingJob:
    """One training run waiting, in progress or just ended. Read by pages, written by its thread.

    ``status`` is "running" from the press of Train until the end, also while the job waits for a
    free worker; then ``queue_position`` says how many jobs must end before it gets one (1: the next
    to end frees a worker for it), and it is None while training and after the end.
    """

    run_id: str
    data_hash: str
    dataset_name: str
    params: RunParams
    batch_key: str | None
    n_cells: int
    device: str = "auto"
    started: float = field(default_factory=time.time)  # when Train was pressed
    running_since: float | None = None  # when a worker began training it
    status: JobStatus = "running"
    queue_position: int | None = None
    error: str | None = None  # one line for the page
    traceback: str | None = None  # the whole traceback of a failure, for the log and for bug reports
    finished: float | None = None
    history: list[EpochReport] = field(default_factory=list)
    # live preview: (epoch, UMAP of the preview cells' current latent), the newest only
    preview: tuple[int, np.ndarray] | None = None
    preview_labels: np.ndarray | None = None  # what the preview is coloured by, per preview cell
    preview_label_name: str = ""
    _token: str = field(default_factory=lambda: uuid.uuid4().hex, repr=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _worker: threading.Thread | None = field(default=None, repr=False)  # the thread that follows the job
    _future: Future | None = field(default=None, repr=False)
    _seen: tuple[int, int] | None = field(default=None, repr=False)  # (mtime_ns, size) of the progress file read

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
        """Seconds of training so far (not the wait for a worker), up to its end when it has ended."""
        if self.running_since is None:
            return 0.0
        return max(0.0, (self.finished or time.time()) - self.running_since)

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the pace so far (an upper bound: early stopping may end sooner)."""
        if not self.history:
            return None
        per_epoch = self.elapsed / self.epochs_done
        return per_epoch * (self.n_epochs - self.epochs_done)

    def cancel(self) -> None:
        """Stop the job: a waiting one leaves the queue, a training one stops at its next minibatch. Saves nothing."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has ended; True if it did within ``timeout``."""
        return self._done.wait(timeout)


class _Connection:
    """The board's :class:`Compute`, made in a background thread so that a new board answers at once."""

    def __init__(self, factory: Callable[[], Compute]) -> None:
        self.compute: Compute | None = None
        self.error: BaseException | None = None
        self.closed = False
        self._ready = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._connect, args=(factory,), name="atlas-dask-connect", daemon=True).start()

    def _connect(self, factory: Callable[[], Compute]) -> None:
        try:
            compute = factory()
        except BaseException as err:  # noqa: BLE001 - kept and raised to whoever needs the cluster
            if not self.closed:  # (closing the board while the cluster starts makes it fail: no news)
                logger.exception("could not start or reach the Dask cluster for training jobs")
            self.error = err
        else:
            with self._lock:
                self.compute = compute
                late = self.closed
            if late:  # the board was closed while the cluster was starting
                compute.close()
        finally:
            self._ready.set()

    def get(self, timeout: float | None = 180) -> Compute:
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the Dask cluster was not ready within {timeout} s")
        if self.error is not None:
            raise RuntimeError(f"no cluster to train on: {self.error}") from self.error
        if self.compute is None or self.closed:
            raise RuntimeError("the job board was closed")
        return self.compute

    def close(self) -> None:
        with self._lock:
            self.closed, compute = True, self.compute
        if compute is not None:
            compute.close()


class JobBoard:
    """Every training job of this server process, by run id. Thread-safe.

    ``compute`` makes the connection to the cluster (default :func:`dashboard.compute.connect`, which
    reads the environment); it runs in the background from construction on. :meth:`close` stops a
    local cluster; so does garbage collection of the board and the end of the interpreter.
    """

    def __init__(self, cache_dir: str | Path, *, compute: Callable[[], Compute] | None = None) -> None:
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._queue_lock = threading.Lock()  # one recount of the queue at a time
        self._jobs: dict[str, TrainingJob] = {}
        # Workers of a server that was killed exit when they notice; then its debris is free to remove.
        _settle_orphans(self.cache_dir)
        # A server killed mid-training left half-written folders: remove them before anyone looks.
        clean_stale(self.cache_dir)
        self._connection = _Connection(compute or connect)
        self._finalizer = weakref.finalize(self, self._connection.close)

    # ---- the cluster ---------------------------------------------------------------------------
    def compute(self, timeout: float | None = 180) -> Compute:
        """The cluster connection (waits for it to be made); raises when it could not be made."""
        return self._connection.get(timeout)

    def close(self) -> None:
        """Disconnect from the cluster and stop the local one; running jobs end as failed."""
        self._finalizer()

    def __enter__(self) -> JobBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def gpu_slots(self) -> int:
        """GPU units of the cluster's workers now (0 while the cluster is starting, or without GPU workers)."""
        try:
            return self._connection.get(timeout=0).capacity()["GPU"]
        except (RuntimeError, TimeoutError):
            return 0

    # ---- jobs ----------------------------------------------------------------------------------
    def start(self, adata: ad.AnnData, *, params: RunParams, batch_key: str | None,
              dataset_name: str = "", device: str = "auto") -> TrainingJob:
        """Queue training of ``adata`` on the cluster, or return the job already queued or running it.

        ``device="cuda"`` asks for a worker with a ``GPU`` resource (``dask worker --resources GPU=1``).
        """
        rid = run_id(adata, params=params, batch_key=batch_key)
        with self._lock:
            job = self._jobs.get(rid)
            if job is not None and job.status == "running":
                return job
            job = TrainingJob(run_id=rid, data_hash=data_hash(adata), dataset_name=dataset_name,
                              params=params, batch_key=batch_key, n_cells=adata.n_obs, device=device)
            job.preview_label_name, job.preview_labels = _preview_colours(adata, batch_key)
            self._jobs[rid] = job
        logger.info("training run %s started: %s cells x %s genes, %s, batch key %s", rid, f"{adata.n_obs:,}",
                    f"{adata.n_vars:,}", params.likelihood, batch_key)
        self._requeue()
        follower = threading.Thread(target=_follow, args=(job, adata, self.cache_dir, self._connection,
                                                           weakref.WeakMethod(self._requeue)),
                                    name=f"train-{rid[:12]}", daemon=True)
        job._worker = follower
        follower.start()
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
        """Runs whose training was cut off by a crash or restart (not by a user's cancel).

        Optionally only those on one dataset; runs this board has a job for are left out (a job whose
        worker was killed says so itself). The page offers to train them again.
        """
        with self._lock:
            known = set(self._jobs)
        return [r for r in interrupted_runs(self.cache_dir)
                if r.run_id not in known and (data_hash is None or r.data_hash == data_hash)]

    def _requeue(self) -> None:
        """Recompute the queue positions of the jobs waiting for a worker (first come, first served)."""
        with self._queue_lock:
            self._count_queue()

    def _count_queue(self) -> None:
        with self._lock:
            live = sorted((j for j in self._jobs.values() if j.status == "running"), key=lambda j: j.started)
        if not live:
            return
        try:
            slots = self._connection.get(timeout=0).capacity()
        except (RuntimeError, TimeoutError):  # the cluster is still starting (or failed): no queue to tell
            for job in live:
                job.queue_position = None
            return
        for pool in ("all", "GPU"):
            jobs = [j for j in live if (pool == "GPU") == (j.device == "cuda")]
            # a cuda job holds a GPU unit and its worker's thread: it counts against both pools
            running = sum(j.running_since is not None for j in (live if pool == "all" else jobs))
            free = slots[pool] - running
            waiting = 0
            for job in jobs:
                if job.running_since is not None:
                    job.queue_position = None
                    continue
                waiting += 1
                # jobs that must end before this one gets a slot; 0: a free slot is there for it
                ahead = waiting - max(free, 0)
                job.queue_position = ahead if ahead > 0 else None


def _follow(job: TrainingJob, adata: ad.AnnData, cache_dir: Path, connection: _Connection,
            requeue: weakref.WeakMethod) -> None:
    """The thread of one job: submit it, copy its progress into ``job`` until it ends, record the end."""
    rid = job.run_id
    future = None
    memory_limit = None
    status: JobStatus = "failed"
    try:
        compute = connection.get()
        memory_limit = compute.memory_limit
        remote.remove_job_files(cache_dir, rid)  # a stale cancel marker would cancel this job at once
        remote.write_input(adata, cache_dir, rid, batch_key=job.batch_key)
        remote.write_progress(cache_dir, rid, {"run_id": rid, "token": job._token, "status": "queued",
                                               "server": remote.here(), "history": []})
        future = compute.client.submit(
            remote.train_job, str(cache_dir), rid, params=job.params, batch_key=job.batch_key, token=job._token,
            device=job.device, threads=compute.torch_threads,
            preview_every=max(1, min(5, job.n_epochs // 8)),  # a few pictures even in a short run
            key=f"train-{rid}", pure=False, retries=0, resources={"GPU": 1} if job.device == "cuda" else None)
        job._future = future
        asked_to_stop = False
        while not future.done():
            if job._cancel.is_set() and not asked_to_stop:
                asked_to_stop = True
                remote.request_cancel(cache_dir, rid)
                if job.running_since is None:  # still waiting for a worker: leave the queue now
                    future.cancel(reason="cancelled on the Train page")
            if _read_progress(job, cache_dir) or job.running_since is None:
                _call(requeue)  # it started, or workers may have come or gone
            if asked_to_stop:
                time.sleep(POLL_SECONDS / 4)  # the end comes within a minibatch or two: notice it soon
            else:
                job._cancel.wait(POLL_SECONDS)
        _read_progress(job, cache_dir)
        if future.cancelled():
            if not job._cancel.is_set():
                raise RuntimeError("the cluster dropped the job (was the scheduler restarted, or the board closed?)")
            status = "cancelled"
        else:
            status = "cancelled" if future.result().get("status") == "cancelled" else "finished"
    except (KilledWorker, remote.WorkerDied) as err:
        job.error = remote.killed_message(job.epochs_done, memory_limit)
        job.traceback = "".join(traceback.format_exception(err))
        logger.error("training run %s failed: its worker process was killed (%s)", rid, err)
    except Exception as err:  # noqa: BLE001 - any failure is shown on the page, never raised
        job.error = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
        job.traceback = traceback.format_exc()
        logger.exception("training run %s failed", rid)
    finally:
        if future is not None:
            with contextlib.suppress(Exception):  # the client may be closed already
                future.release()
        # A job cancelled while it waited keeps its marker, in case its task was starting just then.
        # The files go before the status changes: a new job of the same run may start right after.
        remote.remove_job_files(cache_dir, rid, keep_cancel=status == "cancelled")
        job.queue_position = None
        if job.running_since is None and status == "finished":
            job.running_since = job.started  # loaded from the cache before a progress report was seen
        job.finished = time.time()
        job.status = status
        job._done.set()
        _call(requeue)
    logger.info("training run %s %s after %.1f s, %d epochs", rid, job.status, job.elapsed, job.epochs_done)


def _call(method: weakref.WeakMethod) -> None:
    function = method()
    if function is not None:
        function()


def _read_progress(job: TrainingJob, cache_dir: Path) -> bool:
    """Copy what the worker reported into ``job``; True when it started training since the last look."""
    path = remote.JobFiles(cache_dir, job.run_id).progress
    try:
        stat = path.stat()
    except OSError:
        return False
    if (stat.st_mtime_ns, stat.st_size) == job._seen:
        return False
    info = remote.read_progress(cache_dir, job.run_id)
    if info is None or info.get("token") != job._token:
        return False
    job._seen = (stat.st_mtime_ns, stat.st_size)
    began = False
    if info.get("status") != "queued" and job.running_since is None:
        job.running_since, began = time.time(), True
    rows = info.get("history") or []
    if len(rows) != len(job.history):
        job.history = [EpochReport(**row) for row in rows]
    epoch = info.get("preview_epoch")
    if epoch and (job.preview is None or job.preview[0] != epoch):
        layout = remote.read_preview(cache_dir, job.run_id)
        if layout is not None:
            job.preview = (int(epoch), layout)
    return began


def _settle_orphans(cache_dir: Path) -> None:
    """Remove the job files a dead server of this host left, after waiting for its workers to exit.

    A local cluster's workers exit when their server dies, a moment after it (a few seconds at most
    are waited for). Until then they hold their run's lock, and the debris of their run would not
    look stale yet.
    """
    host = remote.here()["host"]
    orphans: list[str] = []  # run ids of jobs whose server is dead
    for path in cache_dir.glob(f"{remote.JOB_PREFIX}*.json"):
        info = remote.read_progress(cache_dir, path.name[len(remote.JOB_PREFIX):-len(".json")]) or {}
        server = info.get("server") or {}
        if info.get("run_id") and server.get("host") == host and not _alive(server.get("pid")):
            orphans.append(str(info["run_id"]))
    # An exiting worker may show as a zombie while its other threads still hold the run's lock: wait for the lock.
    deadline = time.monotonic() + ORPHAN_GRACE_SECONDS
    while any(not lock_is_free(cache_dir, rid) for rid in orphans) and time.monotonic() < deadline:
        time.sleep(0.02)
    for rid in orphans:
        remote.remove_job_files(cache_dir, rid)


def _alive(pid: Any) -> bool:
    """Whether process ``pid`` of this host runs (a zombie does not)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _preview_colours(adata: ad.AnnData, batch_key: str | None) -> tuple[str, np.ndarray | None]:
    """What to colour the live preview by: a cell-type-like annotation if there is one, else the batch."""
    from dashboard.summary import grouping_columns

    columns = grouping_columns(adata)
    typed = [c for c in columns if any(word in c.lower() for word in ("type", "cluster", "label", "annotation"))]
    name = typed[0] if typed else (batch_key if batch_key in columns else "")
    if not name:
        return "", None
    return name, adata.obs[name].astype(str).to_numpy()[preview_cells(adata.n_obs)]
