"""Shared test fixtures: paths to the bundled fixture, the sample and the real data sets."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pytest

# Each test process uses at most two threads: the machines are 2-core and tests run side by side.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see engine/__init__.py
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".atlas" / "numba_cache"))
# Never the developer's own run cache: the job board may be created before `run_cache` runs.
os.environ["ATLAS_CACHE_DIR"] = tempfile.mkdtemp(prefix="atlas-test-runs-")
# Page tests compute t-SNE, the batch panel and markers in their own process (deterministic, no
# cluster per test module); tests/test_compute.py runs them on a cluster's worker.
os.environ.setdefault("ATLAS_LONG_JOBS", "server")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data"
SAMPLE = REPO / "sample_data" / "kang_pbmc_ctrl.h5ad"
SHARED_DATA = Path(os.environ.get("ATLAS_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def kang_small_path() -> Path:
    """1,145 PBMC cells x 1,287 genes, up to 150 per cell type, from the Kang 2018 control arm."""
    return FIXTURES / "kang_small.h5ad"


def shared_file(name: str) -> Path:
    """A real data set from ../shared/data (present on developer machines and in CI).

    A missing file fails the test rather than skipping it, so CI cannot pass without the data.
    """
    path = SHARED_DATA / name
    if not path.exists():
        pytest.fail(
            f"{path} not found: the real data sets are expected in {SHARED_DATA} (by default "
            "../shared/data, beside the repository); if they live elsewhere, set ATLAS_SHARED_DATA "
            f"to the folder that holds {name}",
            pytrace=False,
        )
    return path


ARTIFACTS = REPO / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_dashboard(tmp_path_factory, extra_env: dict[str, str] | None = None):
    """Start a real dashboard server on a free localhost port; yields its URL, stops it afterwards.

    ``extra_env`` is added to the server's environment last (e.g. its own ``ATLAS_CACHE_DIR``).
    """
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    env = dict(os.environ)
    env["ATLAS_CACHE_DIR"] = str(tmp_path_factory.mktemp("runs"))
    env.update(extra_env or {})
    log = open(tmp_path_factory.mktemp("server") / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "dashboard" / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError(f"the dashboard did not start on {url}; see {log.name}")
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def dashboard_url(tmp_path_factory):
    """A real dashboard server for browser tests, shared by the whole test session."""
    with serve_dashboard(tmp_path_factory) as url:
        yield url


@pytest.fixture
def browser_page():
    """A headless Debian Chromium page driven by Playwright."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run `bash scripts/setup.sh --test`")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(120_000)
        yield page
        context.close()
        browser.close()


# ---- A trained run for page tests -----------------------------------------------------------------
QUICK_EPOCHS = 8


@pytest.fixture(scope="session")
def run_cache(tmp_path_factory) -> Path:
    """One run cache for the whole test session; the dashboard finds it through ATLAS_CACHE_DIR."""
    path = tmp_path_factory.mktemp("atlas-runs")
    os.environ["ATLAS_CACHE_DIR"] = str(path)
    return path


def app_with_active_run(run_cache: Path, kang_small_path: Path, *, batch_key: str | None = "donor"):
    """An AppTest of the dashboard with the small Kang fixture uploaded and a quickly trained run made active.

    The run trains for QUICK_EPOCHS epochs and is cached across tests. Returns (AppTest, AppState, Run).
    """
    from streamlit.testing.v1 import AppTest

    from engine.model.params import RunParams
    from engine.runs.fit import fit

    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=180)
    at.run()
    at.file_uploader[0].set_value(("kang_small.h5ad", kang_small_path.read_bytes(),
                                   "application/octet-stream")).run()
    assert not at.exception, at.exception
    state = at.session_state["atlas_state"]
    # A quick run at the thorough schedule's learning rate: the fast schedule's 3e-3 is meant for its
    # 490,000 cell passes, not for QUICK_EPOCHS of this fixture; the page tests were calibrated on this.
    run = fit(state.filtered.copy(), params=RunParams(max_epochs=QUICK_EPOCHS, lr=1e-3, seed=0),
              batch_key=batch_key, cache_dir=run_cache)
    state.active_run_id = run.run_id
    return at, state, run


def open_explore(page):
    """Go to Explore and wait for the scatter and the clusters (first view); returns the scatter's locator."""
    import re

    page.get_by_role("link", name="Explore").click()
    plot = page.locator(".st-key-explore_scatter .atlas-scatter")
    plot.wait_for(timeout=300_000)
    page.get_by_text(re.compile(r"Leiden clusters: \d+ at resolution 1")).wait_for()
    return plot


def train_fixture_in_browser(page, dashboard_url: str, epochs: int) -> None:
    """Open the dashboard, upload the small fixture (1,145 cells: quick on CI), train it and wait until it is active."""
    page.goto(dashboard_url)
    page.get_by_text("12,261", exact=True).first.wait_for()  # the sample is loaded at start
    page.locator("input[type=file]").set_input_files(str(FIXTURES / "kang_small.h5ad"))
    page.get_by_text("1,145", exact=True).first.wait_for()
    train_in_browser(page, epochs)
    page.get_by_text("It is now the active run").wait_for(timeout=300_000)


def train_in_browser(page, epochs: int, *, seed: int | None = None) -> None:
    """On the Train page, set a fixed number of epochs, press Train and wait until the run is active.

    This is what a person does to get a quick run.
    """
    page.get_by_role("link", name="Train").click()
    page.get_by_text("Runs on this data").wait_for(timeout=120_000)
    # exact labels: "KL warm-up epochs: automatic" holds "epochs: automatic" too
    field = page.get_by_label("Epochs (if not automatic)", exact=True)
    if not field.is_visible():
        page.get_by_text("Advanced").click()
    if page.get_by_role("checkbox", name="Epochs: automatic", exact=True).is_checked():
        page.get_by_text("Epochs: automatic", exact=True).click()
    field.fill(str(epochs))
    field.press("Tab")
    if seed is not None:
        page.get_by_label("Seed", exact=True).fill(str(seed))
        page.get_by_label("Seed", exact=True).press("Tab")
    page.get_by_role("button", name="Train", exact=True).click()


@pytest.fixture(scope="session", autouse=True)
def _let_warm_up_finish():
    """Wait for the dashboard's warm-up thread (a short calibration training) before Python exits.

    A daemon thread still inside torch when the interpreter shuts down aborts the process (exit 134),
    which would fail a run whose tests all passed.
    """
    yield
    import threading

    for thread in threading.enumerate():
        if thread.name == "atlas-warm-up":
            thread.join(timeout=120)


@pytest.fixture(scope="session")
def kang_12k_default(tmp_path_factory):
    """The 12k-cell sample and the model the dashboard trains on it by default (batch key ``donor``).

    Trained once per test session (about a minute on 2 cores) and shared by the real-data tests of
    DE and markers, which check what a user gets without touching a setting.
    """
    import anndata as ad
    import torch

    from engine.model.params import RunParams
    from engine.runs.fit import fit

    adata = ad.read_h5ad(shared_file("kang_pbmc_ctrl_12261x1287.h5ad"))
    adata.layers["counts"] = adata.X.copy()
    adata.var["display_name"] = adata.var["gene_symbol"].astype(str)
    torch.set_num_threads(2)
    run = fit(adata, params=RunParams(seed=0), batch_key="donor", cache_dir=tmp_path_factory.mktemp("runs_12k"))
    return adata, run
