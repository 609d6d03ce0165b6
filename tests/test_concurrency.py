"""Several users at once: four sessions train three datasets (two share data and settings).

Nobody sees another's data, groups or state; the shared run trains once; and no module global
changes while they work (per-user data lives only in ``st.session_state``).
"""

from __future__ import annotations

import copy
import importlib
import logging
import pkgutil
import threading
import time
import types
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from streamlit.runtime.caching.cache_utils import CachedFunc
from streamlit.testing.v1 import AppTest

import dashboard
import engine
from dashboard import loading, training
from dashboard.jobs import JobBoard
from engine.model.params import RunParams
from engine.reading.load import read_counts
from engine.runs.records import list_runs

from .conftest import REPO

pytestmark = pytest.mark.slow
EPOCHS = 3

# Module-level containers reviewed by hand: constant lookup tables, never written at run time
# (the test below checks that they do not change while sessions work).
REVIEWED_CONSTANTS = {
    ("engine.cli.main", "COMMANDS"),  # sub-command -> module name
    ("dashboard.de_figures", "Y_TITLES"),  # axis titles
    ("dashboard.de_figures", "_MARGIN"),  # figure margins
    ("dashboard.figures", "QC_LABELS"),  # axis titles
    ("dashboard.explore", "METRIC_HELP"),  # help texts
    ("dashboard.explore", "QC_METRICS"),  # obs column -> label
    ("engine.threads", "_helper_pool"),  # lru_cache of the process's kernel helper threads, holds no data
    ("engine.analysis.clustering", "_IGRAPH_RNG_LOCK"),  # serialises igraph's process-wide RNG, holds no data
}
IMMUTABLE = (int, float, complex, str, bytes, bool, tuple, frozenset, type(None), Path, types.MappingProxyType,
             np.generic)


def project_modules() -> list[types.ModuleType]:
    """Every module of engine and dashboard, subpackages included.

    Not the entry script, which is a Streamlit script run per session rather than a module.
    """
    modules = []
    for package in (engine, dashboard):
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            if info.name != "dashboard.app":
                modules.append(importlib.import_module(info.name))
    assert len(modules) > 30, [m.__name__ for m in modules]  # the walk reached the subpackages
    return modules


def module_state() -> dict[tuple[str, str], object]:
    """Every module global that could hold data.

    That is, not a module, function, class, cached function, typing construct or immutable value.
    """
    state = {}
    for module in project_modules():
        for name, value in vars(module).items():
            if name.startswith("__") or isinstance(value, IMMUTABLE):
                continue
            if isinstance(value, types.ModuleType | types.FunctionType | types.BuiltinFunctionType | type
                          | CachedFunc) or type(value).__module__ in {"typing", "__future__", "re"}:
                continue
            if isinstance(value, logging.Logger):
                continue  # a module logger: records go to handlers, no data is kept
            if type(value).__name__ == "ufunc" or type(value).__module__.startswith("numba."):
                continue  # numpy ufuncs and numba-compiled functions are functions
            state[(module.__name__, name)] = value
    return state


def comparable_state() -> dict[tuple[str, str], object]:
    """:func:`module_state` without its locks, which hold no data and cannot be copied."""
    lock = type(threading.Lock())
    return {key: value for key, value in module_state().items() if not isinstance(value, lock)}


def test_no_module_global_can_hold_per_user_data():
    found = set(module_state())
    assert found == REVIEWED_CONSTANTS, (
        f"new module-level mutable objects {sorted(found - REVIEWED_CONSTANTS)}: per-user data belongs "
        "in dashboard.state.AppState (st.session_state); make constants tuples, frozensets or "
        "types.MappingProxyType")


def _count_trainings(gate: str) -> None:
    """Run in each worker process: note every training in ``gate`` and hold it until ``gate/go`` exists."""
    fit_module = importlib.import_module("engine.runs.fit")  # engine exports a function fit, which hides it
    real = getattr(fit_module._train_run, "__wrapped__", fit_module._train_run)

    def counting(*args, **kwargs):
        (Path(gate) / f"{args[5]}.{uuid.uuid4().hex}").touch()  # the run id
        deadline = time.monotonic() + 120
        while not (Path(gate) / "go").exists():
            assert time.monotonic() < deadline, "nobody said go"
            time.sleep(0.02)
        return real(*args, **kwargs)

    counting.__wrapped__ = real
    fit_module._train_run = counting


class CountedTraining:
    """Counts trainings per run id in the job board's worker processes, and holds them until :meth:`set`."""

    def __init__(self, gate: Path) -> None:
        self.gate = gate
        gate.mkdir()

    def install(self, board: JobBoard) -> None:
        """Count (and hold) the trainings of ``board``'s workers."""
        board.compute().client.run(_count_trainings, str(self.gate))

    def set(self) -> None:
        """Let every held training go."""
        (self.gate / "go").touch()

    def counts(self) -> Counter[str]:
        return Counter(p.name.split(".")[0] for p in self.gate.iterdir() if p.name != "go")


@pytest.fixture
def counted_training(monkeypatch, tmp_path):
    """A fresh run cache and job board; counts trainings per run id in the board's worker processes.

    Trainings wait for ``go`` so that every session presses Train while the others' jobs are still
    running (or waiting for the worker).
    """
    monkeypatch.setenv(training.CACHE_ENV, str(tmp_path))
    training.job_board.clear()
    training.load_run.clear()
    go = CountedTraining(tmp_path / "gate")
    go.install(training.job_board())
    yield go, tmp_path
    go.set()
    training.job_board().close()
    training.job_board.clear()
    training.load_run.clear()


@pytest.fixture(scope="module")
def datasets(kang_small_path, tmp_path_factory) -> dict[str, bytes]:
    """Three disjoint sets of cells from the small Kang fixture, as uploadable .h5ad bytes."""
    folder = tmp_path_factory.mktemp("sessions")
    adata = read_counts(kang_small_path)
    out = {}
    for name, cells in {"a": slice(0, 380), "b": slice(380, 760), "c": slice(760, 1145)}.items():
        path = folder / f"{name}.h5ad"
        adata[cells].copy().write_h5ad(path)
        out[name] = path.read_bytes()
    return out


def open_session(upload_name: str, data: bytes) -> AppTest:
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=180)
    at.run()
    at.file_uploader[0].set_value((upload_name, data, "application/octet-stream")).run()
    at.switch_page("../pages/train.py").run()
    assert not at.exception, at.exception
    next(c for c in at.checkbox if c.label == "Epochs: automatic").uncheck()
    next(n for n in at.number_input if n.label == "Epochs (if not automatic)").set_value(EPOCHS)
    return at


def state_of(at: AppTest):
    return at.session_state["atlas_state"]


def test_four_sessions_train_at_once_isolated_and_the_shared_run_once(datasets, counted_training):
    go, cache = counted_training
    before = copy.deepcopy(comparable_state())
    plan = [("a.h5ad", "a"), ("b.h5ad", "b"), ("c.h5ad", "c"), ("a-again.h5ad", "a")]
    apps = [open_session(name, datasets[key]) for name, key in plan]
    states = [state_of(at) for at in apps]
    assert len({id(s) for s in states}) == 4
    assert [s.dataset.name for s in states] == [name for name, _ in plan]
    assert [s.filtered.n_obs for s in states] == [380, 380, 385, 380]
    # the same bytes uploaded twice: one read-only object in the server (a 1M-cell atlas is 2+ GB),
    # not a copy per session; a session's changes copy it first (checked below)
    assert states[0].filtered is states[3].filtered
    assert states[0].dataset.adata is states[3].dataset.adata

    # session 1 draws a group and annotates its cells; nobody else may see either
    states[0].cell_groups["my T cells"] = states[0].filtered.obs_names[:25].to_numpy()

    for at in apps:  # everyone presses Train while the others' jobs are running
        next(b for b in at.button if b.label == "Train").click().run()
        assert not at.exception, at.exception
    rids = [s.watched_job for s in states]
    assert all(rids) and rids[0] == rids[3] and len(set(rids)) == 3
    board = training.job_board()
    assert board.get(rids[0]) is board.get(rids[3])
    go.set()
    for rid in set(rids):
        job = board.get(rid)
        assert job.wait(timeout=180) and job.status == "finished", job.error
    assert go.counts() == {rid: 1 for rid in set(rids)}  # the shared run trained once
    assert {r.run_id for r in list_runs(cache)} == set(rids)

    for at, state, rid in zip(apps, states, rids, strict=True):
        at.run()  # the progress panel sees the end of this session's job
        assert not at.exception, at.exception
        assert state.active_run_id == rid
        assert any("It is now the active run" in s.value for s in at.success)
    assert states[0].cell_groups.keys() == {"my T cells"}
    assert all(s.cell_groups == {} for s in states[1:])
    shared, mito = states[3].filtered, states[3].filtered.obs["pct_counts_mt"].copy()
    loading.use_mito_prefixes(states[0], ("RPL",))  # session 1 changes its data: a copy of its own
    assert states[0].filtered is not shared and states[3].filtered is shared
    assert not states[0].filtered.obs["pct_counts_mt"].equals(mito)
    assert shared.obs["pct_counts_mt"].equals(mito)
    assert [s.dataset.name for s in states] == [name for name, _ in plan]
    assert comparable_state().keys() == before.keys()
    for key, value in comparable_state().items():  # nothing a session did reached a module global
        assert value == before[key], key


def test_job_board_from_four_threads(kang_small_path, tmp_path, counted_training):
    go, _ = counted_training
    adata = read_counts(kang_small_path)
    data = {"a": adata[:300].copy(), "b": adata[300:600].copy(), "c": adata[600:900].copy()}
    board = JobBoard(tmp_path / "board")
    go.install(board)
    params = RunParams(max_epochs=2, seed=3)
    barrier = threading.Barrier(4)
    jobs: dict[int, object] = {}

    def session(i: int, key: str) -> None:
        barrier.wait()
        jobs[i] = board.start(data[key].copy(), params=params, batch_key="donor", dataset_name=key)

    threads = [threading.Thread(target=session, args=(i, key)) for i, key in enumerate("abca")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert jobs[0] is jobs[3] and len({id(j) for j in jobs.values()}) == 3
    go.set()
    for job in jobs.values():
        assert job.wait(timeout=120) and job.status == "finished", job.error
    assert sorted(go.counts().values()) == [1, 1, 1]
    assert [j.dataset_name for j in board.jobs(data_hash=jobs[1].data_hash)] == ["b"]
    assert len(list_runs(tmp_path / "board")) == 3
    board.close()
