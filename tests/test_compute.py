"""Training jobs on Dask: queue, one job per run, cancel and worker deaths across processes, no orphans.

Most tests share one local cluster of one worker process with one thread (``LocalCluster(n_workers=1,
threads_per_worker=1, processes=True)``, in its helper process), as a busy lab server would look; the
external-scheduler test starts ``dask scheduler`` and ``dask worker`` as processes on localhost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import training
from dashboard.compute import (
    GIB,
    MEMORY_ENV,
    SCHEDULER_ENV,
    THREADS_ENV,
    WORKERS_ENV,
    LocalSizing,
    local_sizing,
    start_local,
)
from dashboard.jobs import JobBoard, TrainingJob
from engine.model.params import RunParams
from engine.reading.load import read_counts
from engine.runs import remote
from engine.runs.records import has_run, interrupted_runs, list_runs

from .conftest import REPO, _free_port

ONE_WORKER = LocalSizing(n_workers=1, threads_per_worker=1, memory_limit=4 * GIB, torch_threads=1)


def one_worker_cluster():
    return start_local(ONE_WORKER)


def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def long_params(seed: int, epochs: int = 400) -> RunParams:
    return RunParams(max_epochs=epochs, early_stopping=False, seed=seed)


@pytest.fixture(scope="module")
def adata(kang_small_path):
    return read_counts(kang_small_path)


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    with JobBoard(tmp_path_factory.mktemp("runs"), compute=one_worker_cluster) as board:
        board.compute()  # started before the first test's clock runs
        yield board


def idle(board: JobBoard) -> bool:
    return not any(board.compute().client.processing().values())


# ---- sizing (no cluster) --------------------------------------------------------------------------
def test_local_sizing_from_the_machine_and_the_environment():
    sizing = local_sizing({}, cores=16, memory=64 * GIB)
    assert (sizing.n_workers, sizing.threads_per_worker, sizing.torch_threads) == (4, 1, 4)
    assert sizing.memory_limit == int(64 * GIB * 0.75 / 4)
    small = local_sizing({}, cores=2, memory=8 * GIB)
    assert (small.n_workers, small.torch_threads) == (1, 2)
    assert local_sizing({}, cores=64, memory=16 * GIB).n_workers == 3  # memory-bound: 12 GiB / 4 GiB
    env = {WORKERS_ENV: "3", THREADS_ENV: "2", MEMORY_ENV: "6GiB"}
    chosen = local_sizing(env, cores=12, memory=64 * GIB)
    assert chosen == LocalSizing(n_workers=3, threads_per_worker=2, memory_limit=6 * GIB, torch_threads=2)
    with pytest.raises(ValueError, match=WORKERS_ENV):
        local_sizing({WORKERS_ENV: "zero"}, cores=4, memory=GIB)
    with pytest.raises(ValueError, match=MEMORY_ENV):
        local_sizing({MEMORY_ENV: "lots"}, cores=4, memory=GIB)


def _worker_view() -> dict:
    import dask

    return {"tick": dask.config.get("distributed.admin.tick.interval"),
            "profile": dask.config.get("distributed.worker.profile.enabled"),
            "omp": os.environ.get("OMP_NUM_THREADS"), "trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            "model": "engine.runs.fit" in sys.modules}


def test_the_local_cluster_is_quiet_when_idle_and_ready_for_the_first_job(board):
    """The local cluster's settings: quiet when idle, the worker's cores for its job, imports done at start.

    Dask's fine-grained monitors are off (they cost 8-11 % of a core idle), the worker's thread pools
    get its cores (not Dask's one), the worker has the model imported and the scheduler the job module.
    """
    compute = board.compute()
    (view,) = compute.client.run(_worker_view).values()
    omp = os.environ.get("OMP_NUM_THREADS", str(ONE_WORKER.torch_threads))  # a setting of the server's wins
    assert view == {"tick": "1s", "profile": False, "omp": omp, "trim": None, "model": True}
    assert compute.client.run_on_scheduler(lambda: "engine.runs.remote" in sys.modules)


def test_long_jobs_run_on_a_worker_with_their_progress_here(board, kang_small_path):
    """The first view, t-SNE, the batch panel's uncorrected view and a DE run as tasks of the cluster."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    from dashboard.long_jobs import de_job, first_view_job, run_long, tsne_job, uncorrected_job
    from engine.runs.fit import fit

    compute = board.compute()
    rng = np.random.default_rng(0)
    latent = np.concatenate([rng.normal(c, 1.0, size=(150, 5)) for c in (0.0, 8.0)]).astype(np.float32)
    seen: list[tuple[float, str]] = []
    coords = run_long(tsne_job, latent, seed=0, show=lambda f, step: seen.append((f, step)), compute=compute)
    assert coords.shape == (300, 2) and np.isfinite(coords).all()
    # the two blobs stay apart: every cell's nearest neighbour on the t-SNE is from its own blob
    nearest = np.argsort(((coords[:, None] - coords[None]) ** 2).sum(-1), axis=1)[:, 1]
    assert ((nearest < 150) == (np.arange(300) < 150)).all()
    assert seen and all(0.0 <= f <= 1.0 for f, _ in seen)

    counts = sp.csr_matrix(rng.poisson(np.where(np.arange(300)[:, None] < 150, 1.0, 3.0), size=(300, 80)))
    adata = ad.AnnData(obs={"i": np.arange(300).astype(str)}, var={"g": np.arange(80).astype(str)})
    adata.layers["counts"] = counts.astype(np.float32)
    pca, umap = run_long(uncorrected_job, adata, seed=0, show=lambda f, step: None, compute=compute)
    assert pca.shape[0] == 300 and umap.shape == (300, 2)
    distances, connectivities, params, umap = run_long(first_view_job, latent, seed=0, show=lambda f, s: None,
                                                      compute=compute)
    assert distances.shape == connectivities.shape == (300, 300) and umap.shape == (300, 2)
    assert params["n_neighbors"] == 15

    # a DE with a run the worker loads from the shared run cache by its id
    cells = read_counts(kang_small_path)
    run = fit(cells, params=RunParams(max_epochs=2, seed=0), cache_dir=board.cache_dir)
    b_cells = (cells.obs["cell_type"] == "B cells").to_numpy()
    result = run_long(de_job, str(board.cache_dir), run.run_id, cells[:, list(run.var_names)],  # a view
                      group1=b_cells, group2=~b_cells, mode="change", batch_correction=False,
                      show=lambda f, s: None, compute=compute)
    table = result.table()
    assert len(table) == len(run.var_names) and table.loc[table["gene"] == "CD79A", "lfc_mean"].item() > 0
    with pytest.raises(ValueError, match="not in the run cache"):
        run_long(de_job, str(board.cache_dir), "0" * 20, cells, group1=b_cells, group2=~b_cells, mode="change",
                 batch_correction=False, show=lambda f, s: None, compute=compute)

    prefixes = compute.client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert {"first_view_job", "tsne_job", "uncorrected_job", "de_job"} <= set(prefixes)


def test_large_inputs_are_computed_where_they_already_are(monkeypatch):
    """Above SHIP_LIMIT_BYTES a long job runs in the server instead of pickling its input to a worker."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    from dashboard import long_jobs

    x = sp.random(1000, 50, density=0.1, format="csr", dtype=np.float32, random_state=0)
    adata = ad.AnnData(X=x)
    adata.layers["counts"] = x  # the same matrix counts once
    full = x.data.nbytes + x.indices.nbytes + x.indptr.nbytes
    assert long_jobs.payload_bytes(adata) == full
    view = adata[:500, :25]
    assert long_jobs.payload_bytes(view) == int(full / 4)  # its share, without materialising it
    assert long_jobs.payload_bytes(np.zeros(10), "text", None) == 80

    class Unreachable:
        @property
        def client(self):
            raise AssertionError("a large input was sent to the cluster")

    monkeypatch.setattr(long_jobs, "SHIP_LIMIT_BYTES", 100)
    seen = []
    job = lambda data, *, on_progress: (on_progress(1.0, "done"), data.n_obs)[1]  # noqa: E731
    assert long_jobs.run_long(job, view, show=lambda f, step: seen.append(step), compute=Unreachable()) == 500
    assert seen == ["done"]


def test_a_second_attempt_of_a_killed_submission_fails_with_advice(tmp_path):
    # What a scheduler that retries tasks of dead workers (allowed-failures > 0) gets on its retry.
    remote.write_progress(tmp_path, "r1", {"run_id": "r1", "token": "t", "status": "running",
                                          "history": [{"epoch": 1}, {"epoch": 2}]})
    with pytest.raises(remote.WorkerDied, match=f"killed after 2 epochs.*{MEMORY_ENV}"):
        remote.train_job(str(tmp_path), "r1", params=RunParams(), batch_key=None, token="t")
    assert remote.read_progress(tmp_path, "r1")["status"] == "failed"


# ---- the shared one-worker cluster ----------------------------------------------------------------
def train_page(kang_small_path: Path, board: JobBoard, monkeypatch) -> AppTest:
    """The Train page of a session that uploaded the small Kang fixture, on ``board``."""
    monkeypatch.setattr(training, "job_board", lambda: board)
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=180)
    at.run()
    at.file_uploader[0].set_value(("kang_small.h5ad", kang_small_path.read_bytes(), "application/octet-stream")).run()
    at.switch_page("../pages/train.py").run()
    assert not at.exception, at.exception
    return at


@pytest.mark.slow
def test_one_job_per_run_and_a_queue_behind_a_busy_worker(board, adata, kang_small_path, monkeypatch):
    at = train_page(kang_small_path, board, monkeypatch)
    params = RunParams(max_epochs=8, early_stopping=False, seed=11)
    first = board.start(adata, params=params, batch_key="donor")
    again = board.start(adata.copy(), params=params, batch_key="donor")  # another session, same run
    assert again is first
    second = board.start(adata, params=RunParams(max_epochs=2, seed=12), batch_key=None)
    until(lambda: first.running_since is not None, 60, "the first job starts")
    assert first.queue_position is None
    until(lambda: second.queue_position == 1, 10, "the second job waits, one job ahead")
    at.session_state["atlas_state"].watched_job = second.run_id  # a session following the waiting job
    at.run()
    assert not at.exception, at.exception
    texts = [e.proto.text for e in at.get("progress")]
    assert "Waiting for a free worker: 1 job ahead" in texts, texts
    keys = board.compute().client.run_on_scheduler(
        lambda dask_scheduler: sorted(k for k in dask_scheduler.tasks if str(k).startswith("train-")))
    assert keys == sorted([f"train-{first.run_id}", f"train-{second.run_id}"])  # one task per run
    assert first.wait(120) and first.status == "finished", first.error
    assert second.wait(120) and second.status == "finished", second.error
    assert second.running_since >= first.finished - 0.5  # it trained after the first, on the one worker
    assert len(first.history) == 8 and len(second.history) == 2 and first.preview is not None
    assert {r.run_id for r in list_runs(board.cache_dir)} >= {first.run_id, second.run_id}
    assert not list(board.cache_dir.glob(".job-*"))  # the job files are gone with the jobs


@pytest.mark.slow
def test_cancel_across_processes_within_2_s_and_nothing_saved(board, adata):
    running = board.start(adata, params=long_params(21), batch_key=None)
    waiting = board.start(adata, params=long_params(22), batch_key=None)
    until(lambda: running.epochs_done >= 1, 120, "the first epoch")
    assert waiting.queue_position == 1
    t0 = time.monotonic()
    waiting.cancel()  # still in the queue: leaves it at once
    assert waiting.wait(2) and waiting.status == "cancelled"
    t1 = time.monotonic()
    running.cancel()
    assert running.wait(2), "a training job did not stop within 2 s of cancel"
    latency = time.monotonic() - t1
    assert running.status == "cancelled"
    until(lambda: idle(board), 2, "the worker is free again")
    print(f"\ncancel: queued job {t1 - t0:.2f} s, running job {latency:.2f} s, worker free "
          f"{time.monotonic() - t1:.2f} s after cancel")
    for job in (running, waiting):
        assert not has_run(board.cache_dir, job.run_id)
    assert interrupted_runs(board.cache_dir) == []  # a cancel is no crash
    assert not [p for p in board.cache_dir.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.slow
def test_sigkill_of_the_worker_fails_the_job_with_advice_and_a_retry_trains(board, adata):
    params = long_params(31, epochs=12)
    job = board.start(adata, params=params, batch_key="donor")
    until(lambda: job.epochs_done >= 1, 120, "the first epoch")
    (pid,) = board.compute().worker_pids().values()
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    assert job.wait(30), "the job of a killed worker did not end"
    print(f"\nSIGKILL to failed status: {time.monotonic() - t0:.2f} s")
    assert job.status == "failed"
    assert "killed" in job.error and "memory" in job.error and MEMORY_ENV in job.error, job.error
    assert "batch size" in job.error and "fewer cells" in job.error
    # the server and its board go on
    assert board.get(job.run_id) is job and job in board.jobs()
    assert board.interrupted() == []  # the job itself says what happened
    assert not has_run(board.cache_dir, job.run_id)
    retry = board.start(adata, params=params, batch_key="donor")
    assert retry is not job
    assert retry.wait(240) and retry.status == "finished", retry.error
    assert len(retry.history) == 12 and has_run(board.cache_dir, job.run_id)
    assert interrupted_runs(board.cache_dir) == []


# ---- clusters of their own --------------------------------------------------------------------------
@pytest.mark.slow
def test_close_leaves_no_worker_process(tmp_path, adata):
    board = JobBoard(tmp_path, compute=one_worker_cluster)
    job = board.start(adata[:300].copy(), params=RunParams(max_epochs=2, seed=41), batch_key=None)
    assert job.wait(120) and job.status == "finished", job.error
    host = board.compute().host
    pids = list(board.compute().worker_pids().values())
    assert pids and all(psutil.Process(p).ppid() == host.pid for p in pids)  # the cluster's process starts them
    board.close()
    assert host.poll() is not None
    until(lambda: all(gone(p) for p in pids), 10, "the worker processes exit")


SERVER = """
import os, signal, sys, time
from dashboard.jobs import JobBoard
from engine.model.params import RunParams
from engine.reading.load import read_counts

if __name__ == "__main__":
    board = JobBoard(sys.argv[1])
    job = board.start(read_counts(sys.argv[2])[:300].copy(), params=RunParams(max_epochs=400, early_stopping=False),
                      batch_key=None)
    while not job.history:
        time.sleep(0.05)
    print(*board.compute().worker_pids().values(), flush=True)
    if sys.argv[3] == "sigkill":
        time.sleep(300)  # killed here
    # "exit": the interpreter ends with a job running and the board never closed
"""


@pytest.mark.slow
@pytest.mark.parametrize("end", ["exit", "sigkill"])
def test_no_orphan_workers_when_the_server_ends(tmp_path, kang_small_path, end):
    script = tmp_path / "server.py"
    script.write_text(textwrap.dedent(SERVER))
    env = {**os.environ, "PYTHONPATH": str(REPO), WORKERS_ENV: "1", THREADS_ENV: "1", MEMORY_ENV: "4GiB"}
    server = subprocess.Popen([sys.executable, str(script), str(tmp_path / "runs"), str(kang_small_path), end],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        pids = [int(p) for p in server.stdout.readline().split()]
        assert pids, "the server printed no worker pid"
        assert all(server.pid in {q.pid for q in psutil.Process(p).parents()} for p in pids)
        processes = pids + [psutil.Process(p).ppid() for p in pids]  # the workers and the cluster's process
        if end == "sigkill":
            server.send_signal(signal.SIGKILL)
        server.wait(timeout=60)
        until(lambda: all(gone(p) for p in processes), 10, "the cluster's processes exit")
    finally:
        server.kill()
        server.stdout.close()


# ---- an existing cluster ------------------------------------------------------------------------------
def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "dask", *args], cwd=REPO,
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.slow
def test_an_external_scheduler_and_worker_train_a_job(tmp_path, adata, monkeypatch):
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = _start(["scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address",
                        "127.0.0.1:0"], tmp_path / "scheduler.log")
    worker = _start(["worker", address, "--nworkers", "1", "--nthreads", "1", "--host", "127.0.0.1",
                     "--no-dashboard", "--memory-limit", "4GiB", "--preload", "engine.runs.remote"],
                    tmp_path / "worker.log")
    try:
        monkeypatch.setenv(SCHEDULER_ENV, address)
        with JobBoard(tmp_path / "runs") as board:  # the default: ATLAS_DASK_SCHEDULER, as a server reads it
            compute = board.compute(timeout=60)
            assert compute.host is None and address in compute.description
            until(lambda: compute.capacity()["all"] == 1, 60, "the worker joins the scheduler")
            job: TrainingJob = board.start(adata, params=RunParams(max_epochs=2, seed=51), batch_key="donor")
            assert job.wait(180) and job.status == "finished", f"{job.error}\n{(tmp_path / 'worker.log').read_text()}"
            worker_pids = set(compute.worker_pids().values())
        assert len(job.history) == 2 and has_run(tmp_path / "runs", job.run_id)
        # the job ran in the `dask worker` started above, not in a cluster of the board's own
        assert worker_pids and all(worker.pid in {q.pid for q in psutil.Process(p).parents()} for p in worker_pids)
    finally:
        _stop(worker)
        _stop(scheduler)
