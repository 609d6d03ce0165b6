"""Crash safety of the run cache: processes killed (SIGKILL) mid-training or mid-save.

A killed process runs no ``finally`` and no ``atexit``: what it leaves behind is what a power cut or
the kernel's OOM killer would leave. After it, no half-written run may look finished, the
interrupted run is reported (and its debris removed), finished runs still load, and training the
same run again works.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from engine.model.params import RunParams
from engine.reading.load import read_counts
from engine.runs.fit import fit
from engine.runs.records import clean_stale, interrupted_runs, list_runs, lock_is_free, run_id
from engine.runs.storage import load_run

from .conftest import REPO

EPOCHS = 3
PARAMS = RunParams(max_epochs=EPOCHS, early_stopping=False, seed=0)

# The child announces each stage on stdout and then sleeps, so the test kills it at a known point.
CHILD_PRELUDE = """
import sys, time
import torch
torch.set_num_threads(1)
from engine.reading.load import read_counts
from engine.model.params import RunParams
adata = read_counts(sys.argv[1])[:400].copy()
params = RunParams(max_epochs={epochs}, early_stopping=False, seed=0)
def say(text):
    print(text, flush=True)
"""


@pytest.fixture(scope="module")
def small(kang_small_path):
    return read_counts(kang_small_path)[:400].copy()


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def run_until(script: str, marker: str, *args: str, timeout: float = 120) -> subprocess.Popen:
    """Start ``script`` in a fresh Python, wait until it prints ``marker``, return it (still running)."""
    code = CHILD_PRELUDE.format(epochs=EPOCHS) + textwrap.dedent(script)
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            raise AssertionError(f"child ended before {marker!r}: {seen} {proc.stderr.read()[-2000:]}")
        seen.append(line.strip())
        if line.strip() == marker:
            return proc
    proc.kill()
    raise AssertionError(f"child did not print {marker!r} in {timeout} s: {seen}")


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stdout.close()
    proc.stderr.close()


def test_sigkill_mid_training_leaves_no_finished_run_and_is_reported(small, kang_small_path, tmp_path):
    cache = tmp_path / "runs"
    finished = fit(small.copy(), params=RunParams(max_epochs=2, seed=1), cache_dir=cache)
    rid = run_id(small, params=PARAMS, batch_key=None)
    proc = run_until(
        """
        from engine.runs.fit import fit
        def on_epoch(report):
            say(f"epoch {report.epoch}")
            if report.epoch == 1:
                time.sleep(300)  # killed here, half-way through training
        fit(adata, params=params, cache_dir=sys.argv[2], on_epoch=on_epoch)
        """,
        "epoch 1", str(kang_small_path), str(cache),
    )
    assert not lock_is_free(cache, rid)  # the child trains under the run's lock
    assert [r.run_id for r in interrupted_runs(cache)] == []  # a live trainer is not "interrupted"
    kill(proc)

    assert lock_is_free(cache, rid)  # the kernel released the dead process's flock
    assert [r.run_id for r in list_runs(cache)] == [finished.run_id]
    assert load_run(cache, rid) is None
    interrupted = interrupted_runs(cache)
    assert [r.run_id for r in interrupted] == [rid]
    assert interrupted[0].n_cells == 400 and interrupted[0].params["max_epochs"] == EPOCHS
    assert load_run(cache, finished.run_id).latent.shape == (400, finished.params.n_latent)

    again = fit(small.copy(), params=PARAMS, cache_dir=cache)  # trains again, not stuck on the lock
    assert again.run_id == rid and len(again.history) == EPOCHS
    assert interrupted_runs(cache) == []
    assert {r.run_id for r in list_runs(cache)} == {rid, finished.run_id}


def test_sigkill_while_saving_leaves_a_tmp_folder_that_is_cleaned(small, kang_small_path, tmp_path):
    cache = tmp_path / "runs"
    rid = run_id(small, params=PARAMS, batch_key=None)
    proc = run_until(
        """
        import engine.runs.records
        real_save = engine.runs.records.np.save
        def slow_save(*args, **kwargs):  # weights are on disk, the rest is not yet
            real_save(*args, **kwargs)
            say("half written")
            time.sleep(300)
        engine.runs.records.np.save = slow_save
        from engine.runs.fit import fit
        fit(adata, params=params, cache_dir=sys.argv[2])
        """,
        "half written", str(kang_small_path), str(cache),
    )
    tmp = [p for p in cache.iterdir() if p.name.startswith(".tmp-")]
    assert len(tmp) == 1 and (tmp[0] / "model.pt").is_file() and not (tmp[0] / "run.json").exists()
    assert clean_stale(cache) == []  # the writer is alive: its folder is left alone
    kill(proc)

    assert list_runs(cache) == [] and load_run(cache, rid) is None
    assert [r.run_id for r in interrupted_runs(cache)] == [rid]
    assert clean_stale(cache) == [tmp[0].name]
    assert not tmp[0].exists()
    run = fit(small.copy(), params=PARAMS, cache_dir=cache)
    assert run.run_id == rid and load_run(cache, rid).latent.shape == run.latent.shape
    assert interrupted_runs(cache) == []


def test_server_killed_mid_job_then_restarted(small, kang_small_path, tmp_path):
    """The dashboard's job layer in a server process that dies; a new server process starts."""
    cache = tmp_path / "runs"
    proc = run_until(
        """
        from dashboard.jobs import JobBoard
        board = JobBoard(sys.argv[2])
        job = board.start(adata, params=params, batch_key=None, dataset_name="kang")
        while not job.history:
            time.sleep(0.01)
        say("training")
        time.sleep(300)
        """,
        "training", str(kang_small_path), str(cache),
    )
    rid = run_id(small, params=PARAMS, batch_key=None)
    # debris a crash during an earlier save could have left, with no live writer
    (cache / f".tmp-{rid}-deadbeef").mkdir()
    (cache / f".tmp-{rid}-deadbeef" / "model.pt").write_bytes(b"\x80\x02 cut")
    kill(proc)

    from dashboard.jobs import JobBoard

    board = JobBoard(cache)  # what the restarted server does first
    assert not (cache / f".tmp-{rid}-deadbeef").exists()
    assert list_runs(cache) == []
    assert [r.run_id for r in board.interrupted()] == [rid]
    assert board.interrupted(data_hash="another dataset") == []
    job = board.start(small, params=PARAMS, batch_key=None, dataset_name="kang")
    assert job.wait(timeout=120) and job.status == "finished", job.error
    assert board.interrupted() == []
    assert [r.run_id for r in list_runs(cache)] == [rid]


@pytest.mark.parametrize("damage", ["truncated weights", "broken json", "missing latent"])
def test_corrupt_entry_is_reported_then_retrained(small, tmp_path, damage):
    from engine.runs.records import CorruptRunError

    cache = tmp_path / "runs"
    run = fit(small.copy(), params=RunParams(max_epochs=2), cache_dir=cache)
    folder = cache / run.run_id
    if damage == "truncated weights":
        data = (folder / "model.pt").read_bytes()
        (folder / "model.pt").write_bytes(data[: len(data) // 3])
    elif damage == "broken json":
        (folder / "run.json").write_text(json.dumps({"run_id": run.run_id})[:-3])
    else:
        (folder / "latent.npy").unlink()
    with pytest.raises(CorruptRunError, match="corrupt.*train again"):
        load_run(cache, run.run_id)
    assert list_runs(cache) == []  # never listed as a usable run
    again = fit(small.copy(), params=RunParams(max_epochs=2), cache_dir=cache)
    assert again.run_id == run.run_id and len(again.history) == 2
    assert load_run(cache, run.run_id) is not None
