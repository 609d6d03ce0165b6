"""Where training jobs run: a Dask cluster, a local one by default or an existing one named in the environment.

Environment variables (all optional; read when the server's job board starts):

``ATLAS_DASK_SCHEDULER``
    Address of a running Dask scheduler, e.g. ``tcp://10.0.0.5:8786`` (Slurm through dask-jobqueue,
    Kubernetes, ``dask scheduler`` + ``dask worker`` by hand). The run cache (``ATLAS_CACHE_DIR``) must
    then be on a filesystem that the server and every worker see at the same path.
``ATLAS_DASK_WORKERS``
    Worker processes of the local cluster. Default: one per 4 cores, at most one per 4 GiB of the
    memory the workers get, at least one.
``ATLAS_DASK_THREADS``
    Jobs each local worker runs at once (Dask's threads per worker). Default 1: one training per
    process, with the worker's share of the cores for torch.
``ATLAS_DASK_MEMORY``
    Memory limit per local worker, e.g. ``8GiB`` or ``16GB``. A worker above 95 % of it is killed
    and its job fails with advice; the server and other jobs go on. Default: three quarters of the
    machine's memory, shared equally by the workers.

The local cluster runs in a helper process (``python -m dashboard.compute``) that holds the
scheduler and the workers' nannies; the workers are its child processes (a crash or out-of-memory
kill in one ends only its job). Not in the server itself: Streamlit makes the running script the
process's ``__main__``, and every worker process that multiprocessing spawns from there would run
the whole dashboard script first. Everything listens on 127.0.0.1 only. The helper reads its stdin,
a pipe from the server: when the pipe closes (:meth:`Compute.close`, at the latest at interpreter
exit, or the server killed outright) it exits at once, and its workers with it (Dask's worker
processes exit when their parent's pipe closes).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import dask
import psutil
from dask.utils import format_bytes, parse_bytes
from distributed import Client, LocalCluster

logger = logging.getLogger(__name__)

SCHEDULER_ENV = "ATLAS_DASK_SCHEDULER"
WORKERS_ENV = "ATLAS_DASK_WORKERS"
THREADS_ENV = "ATLAS_DASK_THREADS"
MEMORY_ENV = "ATLAS_DASK_MEMORY"
GIB = 2**30
CORES_PER_WORKER = 4  # default sizing: one worker per this many cores ...
MIN_MEMORY_PER_WORKER = 4 * GIB  # ... and per this much memory
MEMORY_SHARE = 0.75  # of the machine's memory, for all local workers together (the server needs some too)
CONNECT_TIMEOUT = "20s"
HOST_START_SECONDS = 180  # for the local cluster to be up (its workers import torch)
CAPACITY_TTL = 1.0  # seconds a count of the cluster's job slots is reused


# Dask's defaults watch an idle cluster closely: a 20 ms event-loop tick in every process, a
# statistical profiler sampling every 10 ms, a GIL monitor, memory checks ten times a second. On
# 2 cores that alone cost 8-11 % of a core with nothing running (BENCHMARKS.md, "Compute layer").
# A job here lasts seconds to hours, so these settle for a look every second or so.
QUIET_CONFIG: Mapping[str, object] = MappingProxyType({
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.admin.system-monitor.gil.enabled": False,
    "distributed.worker.profile.enabled": False,
    "distributed.worker.memory.monitor-interval": "500ms",
    "distributed.scheduler.work-stealing-interval": "1s",
})


def worker_environ(torch_threads: int) -> dict[str, str]:
    """Environment of a new local worker process: its share of the cores for every thread pool.

    Replaces Dask's pre-spawn default, which pins OpenMP, MKL and OpenBLAS to one thread (right for
    many small tasks, wrong for one training that should use the worker's cores) and sets glibc's
    ``MALLOC_TRIM_THRESHOLD_`` so low that torch's short-lived tensors go back to the kernel and are
    paged in again at every minibatch. With Dask's defaults (these, and the profiler) an epoch of the
    12k sample took 1.0 s in a worker against 0.8 s in the server; with ours 0.77 s. A variable the
    server itself was started with wins, as in Dask.
    """
    threads = str(max(1, torch_threads))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}


@dataclass(frozen=True)
class LocalSizing:
    """How big the local cluster is: workers, jobs per worker, memory per worker, torch threads per job."""

    n_workers: int
    threads_per_worker: int
    memory_limit: int  # bytes per worker
    torch_threads: int

    def describe(self) -> str:
        """One line for the server log."""
        return (f"{self.n_workers} worker process{'es' if self.n_workers != 1 else ''} x "
                f"{self.threads_per_worker} job{'s' if self.threads_per_worker != 1 else ''}, "
                f"{format_bytes(self.memory_limit)} each, {self.torch_threads} torch thread(s) per job")


def _positive_int(environ: Mapping[str, str], name: str) -> int | None:
    text = environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}={text!r} is not a positive whole number")
    return value


def local_sizing(environ: Mapping[str, str] | None = None, *, cores: int | None = None,
                 memory: int | None = None) -> LocalSizing:
    """The local cluster's size: from the machine (``cores``, ``memory`` in bytes), overridden by the environment."""
    environ = os.environ if environ is None else environ
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if memory is None:
        memory = psutil.virtual_memory().total
    limit_text = environ.get(MEMORY_ENV, "").strip()
    limit = None
    if limit_text:
        try:
            limit = int(parse_bytes(limit_text))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{MEMORY_ENV}={limit_text!r} is not an amount of memory (write e.g. 8GiB)") from err
    workers = _positive_int(environ, WORKERS_ENV)
    if workers is None:
        budget = memory * MEMORY_SHARE
        workers = max(1, min(cores // CORES_PER_WORKER, int(budget // (limit or MIN_MEMORY_PER_WORKER))))
    threads = _positive_int(environ, THREADS_ENV) or 1
    if limit is None:
        limit = int(memory * MEMORY_SHARE / workers)
    return LocalSizing(n_workers=workers, threads_per_worker=threads, memory_limit=limit,
                       torch_threads=max(1, cores // (workers * threads)))


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA: no GPU resource
        return 0


@dataclass
class Compute:
    """A connection to the cluster that runs jobs; ``host``: the process of the local cluster this server started."""

    client: Client
    host: subprocess.Popen | None
    description: str
    sizing: LocalSizing | None = None
    _capacity: tuple[float, dict[str, int]] = field(default=(0.0, {}), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def torch_threads(self) -> int | None:
        """Torch threads per job on the local cluster; None on another cluster (the worker decides)."""
        return self.sizing.torch_threads if self.sizing else None

    @property
    def memory_limit(self) -> str | None:
        """The memory limit per worker, for messages ("4.00 GiB"), when known."""
        if self.sizing is not None:
            return format_bytes(self.sizing.memory_limit)
        try:
            workers = self.client.scheduler_info(n_workers=-1)["workers"].values()
            limits = {w.get("memory_limit") for w in workers if w.get("memory_limit")}
        except Exception:  # noqa: BLE001 - a message without the number is still a message
            return None
        return format_bytes(min(limits)) if limits else None

    def capacity(self) -> dict[str, int]:
        """Job slots of the cluster now: ``{"all": threads of every worker, "GPU": GPU units}``."""
        with self._lock:
            when, slots = self._capacity
            if time.monotonic() - when < CAPACITY_TTL:
                return slots
        try:
            workers = self.client.scheduler_info(n_workers=-1)["workers"].values()
            slots = {"all": sum(int(w.get("nthreads", 0)) for w in workers),
                     "GPU": sum(int((w.get("resources") or {}).get("GPU", 0)) for w in workers)}
        except Exception:  # noqa: BLE001 - scheduler unreachable: report no free slot rather than fail a page
            slots = {"all": 0, "GPU": 0}
        with self._lock:
            self._capacity = (time.monotonic(), slots)
        return slots

    def worker_pids(self) -> dict[str, int]:
        """Process id of every worker by address (for tests and the log)."""
        return self.client.run(os.getpid)

    def close(self) -> None:
        """Disconnect; stop the local cluster's process (its workers exit with it)."""
        try:
            self.client.close(timeout=10)
        except Exception:  # noqa: BLE001 - closing at exit: nothing to tell anyone
            logger.debug("closing the Dask client failed", exc_info=True)
        if self.host is not None:
            _stop_host(self.host)


def _stop_host(host: subprocess.Popen) -> None:
    if host.stdin is not None:
        host.stdin.close()  # the helper's signal to exit
    try:
        host.wait(timeout=10)
    except subprocess.TimeoutExpired:
        logger.warning("the local Dask cluster's process did not exit: killing it")
        host.kill()
        host.wait(timeout=10)


def start_local(sizing: LocalSizing | None = None) -> Compute:
    """Start a local cluster of worker processes (see the module's docstring) and connect to it."""
    sizing = sizing or local_sizing()
    gpus = _gpu_count()
    spec = json.dumps({**dataclasses.asdict(sizing), "gpus": gpus})
    # The helper ends with os._exit: multiprocessing's resource tracker then frees the nannies'
    # semaphores itself, and needs not warn about it in the server's log.
    quiet = "ignore::UserWarning:multiprocessing.resource_tracker"
    env = {**os.environ, "PYTHONWARNINGS": ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet]))}
    host = subprocess.Popen([sys.executable, "-m", "dashboard.compute", spec], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        address = _read_address(host)
        client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except BaseException:
        _stop_host(host)
        raise
    description = f"local Dask cluster at {address}: {sizing.describe()}"
    if gpus:
        description += f", GPU resource on each worker ({gpus} CUDA device(s))"
    logger.info("jobs run on a %s", description)
    return Compute(client=client, host=host, description=description, sizing=sizing)


def _read_address(host: subprocess.Popen) -> str:
    """The scheduler address the helper prints once its cluster is up."""
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(host.stdout.readline().strip()), daemon=True)
    reader.start()
    reader.join(HOST_START_SECONDS)
    if not found or not found[0]:
        raise RuntimeError(f"the local Dask cluster did not start within {HOST_START_SECONDS} s "
                           f"(exit status {host.poll()}); see the server log above")
    host.stdout.close()
    return found[0]


def _host(spec: str) -> None:
    """``python -m dashboard.compute SPEC``: run the local cluster until stdin closes (see the module's docstring)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = json.loads(spec)
    gpus = options.pop("gpus", 0)
    sizing = LocalSizing(**options)
    dask.config.set({**QUIET_CONFIG, "distributed.nanny.pre-spawn-environ": worker_environ(sizing.torch_threads)})
    # stdout carries the address only: the workers (and any print) write to stderr instead
    address_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    cluster = LocalCluster(
        n_workers=sizing.n_workers, threads_per_worker=sizing.threads_per_worker, processes=True,
        memory_limit=sizing.memory_limit, host="127.0.0.1", scheduler_port=0,
        dashboard_address=None,  # Bokeh's dashboard refreshes even when nobody looks: off here
        # a task whose worker dies fails at once with KilledWorker, instead of killing three more workers
        scheduler_kwargs={"allowed_failures": 0},
        resources={"GPU": 1} if gpus else None,
        # torch and the engine are imported, and their numba kernels loaded, before the first job
        preload=["engine.runs.remote"],
    )
    # The scheduler (in this process) unpickles each new task's function, which imports its module:
    # once now (about 1 s), not at the first press of Train.
    importlib.import_module("engine.runs.remote")
    address_out.write(f"{cluster.scheduler_address}\n")
    address_out.close()
    sys.stdin.read()  # until the server closes the pipe, or dies
    # No slow goodbyes: the workers exit as soon as this process is gone, whatever they were doing.
    os._exit(0)


def connect(environ: Mapping[str, str] | None = None) -> Compute:
    """The cluster this server's jobs run on: ``ATLAS_DASK_SCHEDULER``'s, else a new local one."""
    environ = os.environ if environ is None else environ
    address = environ.get(SCHEDULER_ENV, "").strip()
    if not address:
        return start_local(local_sizing(environ))
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError) as err:
        raise ConnectionError(f"cannot reach the Dask scheduler {address} ({SCHEDULER_ENV}): {err}. Is it "
                              "running, and reachable from this server?") from err
    logger.info("jobs run on the Dask scheduler at %s", address)
    return Compute(client=client, host=None, description=f"Dask scheduler at {address}")


if __name__ == "__main__":
    _host(sys.argv[1])
