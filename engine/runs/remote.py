"""Training as a job in another process: the function a Dask worker runs, and the files it reports through.

The server and the worker share nothing but the run cache folder (on one machine, or on a
filesystem both see), so this works with any scheduler and needs no Streamlit and no Dask here.
For run ``<rid>`` the job's files in ``cache_dir`` are:

``.job-<rid>.h5ad``
    the input, written by the server: counts in ``X``, the cell and gene names, the batch column.
``.job-<rid>.json``
    progress, rewritten atomically: ``status`` ("queued" by the server, then "running",
    "finished", "cancelled" or "failed" by the worker), the submission's ``token``, who wrote it
    (``server`` and ``worker``: host and pid), ``history`` (one row per epoch, the fields of
    :class:`~engine.model.training.EpochReport`), ``preview_epoch``, ``error`` and ``traceback``.
``.job-<rid>.preview.npy``
    the newest live-preview layout (cells x 2), rewritten atomically.
``.job-<rid>.cancel``
    present: stop at the next minibatch and save nothing (``fit``'s ``should_stop``).

Names start with a dot, so :func:`engine.runs.records.list_runs` never lists them. The server removes
them when it has seen the job end (:func:`remove_job_files`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from engine.model.params import RunParams
from engine.runs.records import counts_matrix

if TYPE_CHECKING:
    from engine.model.training import EpochReport

logger = logging.getLogger(__name__)

__all__ = [
    "ENDED",
    "JobFiles",
    "WorkerDied",
    "killed_message",
    "read_progress",
    "remove_job_files",
    "request_cancel",
    "train_job",
    "write_input",
    "write_progress",
]

JOB_PREFIX = ".job-"
ENDED = ("finished", "cancelled", "failed")
# How often the worker looks for the cancel marker at most (a stat per minibatch is cheap on a local
# disk but not on every network filesystem).
CANCEL_CHECK_SECONDS = 0.1
MEMORY_ENV = "ATLAS_DASK_MEMORY"  # named in the advice after a killed worker (see dashboard.compute)


class WorkerDied(RuntimeError):
    """The process that ran a job died (SIGKILL, out of memory) and the scheduler started it again."""


@dataclass(frozen=True)
class JobFiles:
    """The paths of one job's files in the run cache (see the module's docstring)."""

    cache_dir: Path
    run_id: str

    def _path(self, suffix: str) -> Path:
        return Path(self.cache_dir) / f"{JOB_PREFIX}{self.run_id}{suffix}"

    @property
    def input(self) -> Path:
        """The job's input AnnData."""
        return self._path(".h5ad")

    @property
    def progress(self) -> Path:
        """The progress JSON."""
        return self._path(".json")

    @property
    def preview(self) -> Path:
        """The newest live-preview layout."""
        return self._path(".preview.npy")

    @property
    def cancel(self) -> Path:
        """The cancel marker."""
        return self._path(".cancel")

    def all(self) -> tuple[Path, ...]:
        """Every file of the job."""
        return self.input, self.progress, self.preview, self.cancel


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` through ``write(handle)`` into a temporary name beside it, then rename it into place."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with open(tmp, mode) as handle:
            write(handle)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_input(adata: ad.AnnData, cache_dir: str | os.PathLike[str], run_id: str, *, batch_key: str | None) -> Path:
    """Write what training ``adata`` needs (counts, names, the batch column) as the job's input file."""
    obs = pd.DataFrame(index=pd.Index(adata.obs_names.astype(str), name=None))
    if batch_key is not None:
        obs[batch_key] = adata.obs[batch_key].values  # a categorical keeps its order of categories
    slim = ad.AnnData(X=counts_matrix(adata), obs=obs, var=pd.DataFrame(index=adata.var_names.astype(str)))
    path = JobFiles(Path(cache_dir), run_id).input
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        slim.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_progress(cache_dir: str | os.PathLike[str], run_id: str, state: dict[str, Any]) -> None:
    """Replace the job's progress JSON with ``state`` (atomically)."""
    text = json.dumps({**state, "updated": time.time()})
    _atomic_write(JobFiles(Path(cache_dir), run_id).progress, lambda h: h.write(text), mode="w")


def read_progress(cache_dir: str | os.PathLike[str], run_id: str) -> dict[str, Any] | None:
    """The job's progress JSON, or None when there is none (or it cannot be read)."""
    try:
        return json.loads(JobFiles(Path(cache_dir), run_id).progress.read_text())
    except (OSError, ValueError):
        return None


def read_preview(cache_dir: str | os.PathLike[str], run_id: str) -> np.ndarray | None:
    """The newest live-preview layout, or None."""
    try:
        return np.load(JobFiles(Path(cache_dir), run_id).preview, allow_pickle=False)
    except (OSError, ValueError):
        return None


def request_cancel(cache_dir: str | os.PathLike[str], run_id: str) -> None:
    """Ask the job of ``run_id`` to stop: the worker sees the marker between minibatches."""
    JobFiles(Path(cache_dir), run_id).cancel.touch()


def remove_job_files(cache_dir: str | os.PathLike[str], run_id: str, *, keep_cancel: bool = False) -> None:
    """Remove the job's files (no error when absent); ``keep_cancel`` leaves the cancel marker."""
    files = JobFiles(Path(cache_dir), run_id)
    for path in files.all():
        if not (keep_cancel and path == files.cancel):
            path.unlink(missing_ok=True)


def here() -> dict[str, Any]:
    """Host name and process id of this process, as the progress JSON records them."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def killed_message(epochs_done: int, memory_limit: str | None) -> str:
    """What to tell the user when the process training their run was killed."""
    limit = f" (the limit is {memory_limit} per worker)" if memory_limit else ""
    where = f"after {epochs_done} epoch{'s' if epochs_done != 1 else ''}" if epochs_done else "before the first epoch"
    return (f"The worker process training this run was killed {where}, most likely because it ran out of "
            f"memory{limit}. Nothing of this run was saved; the server and other sessions are not affected. "
            f"Try fewer cells (filter on the Data page), a smaller batch size (Advanced), or more memory per "
            f"worker: set {MEMORY_ENV} (for example {MEMORY_ENV}=16GiB) and restart the server.")


def dask_setup(worker: Any) -> None:
    """Dask's preload hook (``dask worker --preload engine.runs.remote``): import the model, warm up in the background.

    Loads the numba kernels of training and the live preview (see :mod:`engine.warmup`) while the
    worker waits for its first job, which then starts at full speed (its first epoch took 1 s more
    without).
    """
    import engine.runs.fit  # noqa: F401 - torch and the model, imported before the worker takes jobs
    from engine.warmup import warm_up

    def run() -> None:
        try:
            logger.info("worker %s warmed up in %.1f s", getattr(worker, "address", "?"), warm_up())
        except Exception:  # noqa: BLE001 - a failed warm-up only makes the first job slower
            logger.warning("warm-up of the worker failed", exc_info=True)

    threading.Thread(target=run, name="atlas-warm-up", daemon=True).start()


def _torch_threads(threads: int | None) -> int:
    """CPU threads for torch in this job: ``threads``, else the cores this process may use per task slot."""
    if threads:
        return max(1, int(threads))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    slots = 1
    try:  # on a Dask worker, share the cores between the jobs it runs at once
        from distributed import get_worker

        slots = max(1, get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        pass
    return max(1, cores // slots)


def train_job(
    cache_dir: str,
    run_id: str,
    *,
    params: RunParams,
    batch_key: str | None,
    token: str,
    device: str = "auto",
    threads: int | None = None,
    preview_every: int = 5,
) -> dict[str, Any]:
    """Train (or load) run ``run_id`` from its input file, reporting progress through the job's files.

    What a Dask worker runs for the job board (module level, so workers import it by name). Returns
    ``{"status": "finished" | "cancelled", "epochs": n}``; a failure is written to the progress file
    and raised. ``token`` names one submission: when the progress file already says "running" under
    the same token, an earlier attempt of this submission died with its process (the scheduler
    retries tasks whose worker died), so this attempt fails with :class:`WorkerDied` instead of
    training again into the same death. ``threads``: torch's CPU threads (default: this process's
    cores shared by the jobs its worker runs at once).
    """
    files = JobFiles(Path(cache_dir), run_id)
    previous = read_progress(cache_dir, run_id) or {}
    state: dict[str, Any] = {
        "run_id": run_id, "token": token, "server": previous.get("server"), "status": "running",
        "worker": here(), "history": [], "preview_epoch": None, "error": None, "traceback": None,
    }
    if previous.get("token") == token:
        if previous.get("status") == "running":
            epochs = len(previous.get("history") or [])
            error = killed_message(epochs, None)
            write_progress(cache_dir, run_id, {**previous, "status": "failed", "error": error})
            raise WorkerDied(error)
        if previous.get("status") in ENDED:  # this submission already ended: report it again
            if previous["status"] == "failed":
                raise RuntimeError(previous.get("error") or "training failed")
            return {"status": previous["status"], "epochs": len(previous.get("history") or [])}
    if files.cancel.exists():  # cancelled while it waited for a worker
        write_progress(cache_dir, run_id, {**state, "status": "cancelled"})
        return {"status": "cancelled", "epochs": 0}
    write_progress(cache_dir, run_id, state)

    # Here, not at the top: a Dask scheduler unpickles this function's reference (so imports this
    # module) at every first submission, and needs no torch for that.
    import torch

    from engine.model.training import TrainingCancelled
    from engine.runs.fit import fit

    torch.set_num_threads(_torch_threads(threads))
    last_check = [0.0, False]  # time of the last look for the cancel marker, and what it found

    def should_stop() -> bool:
        now = time.monotonic()
        if now - last_check[0] >= CANCEL_CHECK_SECONDS:
            last_check[0], last_check[1] = now, files.cancel.exists()
        return bool(last_check[1])

    def on_epoch(report: EpochReport) -> None:
        state["history"].append(vars(report))
        write_progress(cache_dir, run_id, state)

    def on_preview(epoch: int, layout: np.ndarray) -> None:
        _atomic_write(files.preview, lambda h: np.save(h, np.asarray(layout, dtype=np.float32)))
        state["preview_epoch"] = int(epoch)
        write_progress(cache_dir, run_id, state)

    try:
        adata = ad.read_h5ad(files.input)
        if not sp.issparse(adata.X):
            adata.X = sp.csr_matrix(adata.X)
        run = fit(adata, params=params, batch_key=batch_key, cache_dir=cache_dir, on_epoch=on_epoch,
                  should_stop=should_stop, device=device, on_preview=on_preview, preview_every=preview_every)
        if run.run_id != run_id:
            raise RuntimeError(f"the job's input gives run {run.run_id}, not {run_id}: the input file was replaced")
    except TrainingCancelled:
        state["status"] = "cancelled"
        write_progress(cache_dir, run_id, state)
        logger.info("run %s cancelled after %d epochs", run_id, len(state["history"]))
        return {"status": "cancelled", "epochs": len(state["history"])}
    except BaseException as err:
        state.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        write_progress(cache_dir, run_id, state)
        raise
    state["status"] = "finished"
    write_progress(cache_dir, run_id, state)
    return {"status": "finished", "epochs": len(state["history"])}
