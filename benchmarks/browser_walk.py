"""Browser walk: what a person waits for, timed in a real Chromium against a fresh dashboard server.

Usage (from the repository root, with the project venv and ``scripts/env.sh`` sourced)::

    python benchmarks/browser_walk.py                       # the full walk, training with defaults
    python benchmarks/browser_walk.py --epochs 3 --idle-seconds 10    # a quick check of the script
    python benchmarks/browser_walk.py --epochs 3 --busy 2   # colour changes while two trainings run

Options: ``--port`` (default: a free one), ``--epochs N`` (train N epochs instead of the automatic
number), ``--train-timeout`` (s, default 900), ``--idle-seconds`` (default 60), ``--out-dir``
(screenshots, the server log and ``results.json``; default ``artifacts/browser_walk``),
``--headed`` (show the browser; needs a display) and ``--busy N`` (N trainings of the sample, each
``python -m engine train`` for 400 epochs in its own process, run on the same cores from the gene
colour steps to the DE slider step; the colour target is then issue 16's 1 s).

The script starts ``python -m streamlit run dashboard/app.py --server.port P --server.address
127.0.0.1 --server.headless true`` in its own process group, with a new empty ``ATLAS_CACHE_DIR``
(so nothing is cached from earlier runs; ``NUMBA_CACHE_DIR`` and ``OMP_WAIT_POLICY`` default as in
``scripts/env.sh``), waits for ``/_stcore/health``, drives Debian's Chromium through Playwright
(1400 x 1000 window), and stops the whole process group at the end, whatever happened. It prints a
markdown table against the targets of issue 14 and saves screenshots of every step.

Steps, and exactly how each is timed
------------------------------------
1. **Sample visible**: wall time from ``page.goto`` until the sidebar shows "12,261 cells x 1,287
   genes after QC" (Playwright's wait; the first session of a fresh server loads the sample). The
   notes add when the Data page's first script run ended (its summary is complete), on the
   browser's clock from the navigation's start.
2. **Training**: on the Train page the "Batch key" is set to ``donor`` (and, with ``--epochs``,
   "Epochs: automatic" is unticked and "Epochs (if not automatic)" filled), everything else
   default. Time from pressing "Train" until the success message "It is now the active run"
   appears (the page polls the job every 2 s, as a person sees it). The epochs trained are read
   from that message, and the notes quote the page's duration estimate shown at the click.
3. **First Explore view**: from the click on "Explore" in the sidebar until the UMAP scatter is
   drawn and its caption "Drawn in" is shown (neighbour graph, UMAP and Leiden are computed here).
4. **Gene colour**: "Colour by" -> "Gene" (the first gene of the list is drawn), then genes picked
   in "Gene (type to search)": LYZ (first gene picked), CD79A (another gene), "Expression" ->
   denoised (first denoised), then CD14 (another gene, denoised). Each is timed from the click on
   the option until the scatter is redrawn with the gene's colour bar ("LYZ (observed)", ...).
5. **Leiden resolution**: with the colour back on "Cluster", the "Leiden resolution" slider is
   focused and moved one step with the Right arrow key (1 -> 1.1); timed from the key press until
   the heading says "at resolution 1.1" and the scatter and cluster-size charts are redrawn.
6. **DE**: on the Differential expression page, "Compare groups of" = cell_type, Group 1 = B cells,
   Group 2 = rest (default); timed from pressing "Run differential expression" until the volcano
   is drawn and the metric "Genes called DE" is shown.
7. **DE slider**: "FDR target" moved one step (0.05 -> 0.06) with the Right arrow key; timed from
   the key press until the volcano is redrawn.
8. **Idle CPU**: with the Explore page open and nothing happening, the server's CPU time (utime +
   stime from ``/proc/<pid>/stat`` of the server and all its live descendants, plus the reaped
   children's cutime + cstime) over ``--idle-seconds``, as % of one core. Script reruns seen in
   the browser during that window are counted.

What "drawn" means (steps 3 to 7). A script injected into the page before it loads
(``add_init_script``) records, with the browser's clock (``performance.now()``):

- the input: the first ``pointerdown`` or ``keydown`` after the step is armed (arming happens
  after any preparation, e.g. once the dropdown is open and filtered to the gene);
- every DOM mutation inside each target chart (found through the ``st-key-<key>`` class Streamlit
  gives keyed elements): the Explore scatter's ``.atlas-scatter`` (``dashboard/cell_scatter.js``
  sets its ``data-drawn`` attribute at the end of each canvas pass, after its legend or colour bar),
  and the ``.js-plotly-plot`` element of ``explore_sizes`` and ``de_volcano``, hover labels and the
  mode bar excluded (Plotly rebuilds a figure's SVG layers on every ``Plotly.react``, so every
  redraw mutates this subtree, also when the points themselves are WebGL);
- Streamlit's script run state, ``data-test-script-state`` on ``[data-testid="stApp"]``
  ("running" / "rerunRequested" vs "notRunning"), which the front end sets the moment the state
  changes. (The running indicator ``[data-testid="stStatusWidget"]`` is not used: Streamlit only
  shows it after a run has lasted 500 ms, so it misses short reruns and is late for long ones.);
- the first moment a step-specific condition holds, checked on every mutation batch (the colour
  bar's title, e.g. "LYZ (observed)"; the heading "at resolution 1.1"; the metric label).

**The time reported** is from the input to the moment every target chart has changed at least
once and the condition holds: the DOM holds the new picture (the next frame shows it). Plotly often redraws a second
time shortly after (e.g. when a colour bar changes the margins); the last change of the charts is
reported as "settled" in the notes, and the end of the script run as "run ended" (for the DE this
includes the Wilcoxon comparison the page runs after the volcano). A step is over when its runs
have ended, the condition holds and nothing changed for 1 s. If a chart did not change at all
(e.g. the FDR step called the same genes), the time is to the end of the run and the notes say so.
No fixed sleeps are used in the measurements; polling (every 100 ms) only decides when a step is
over, the times come from the browser's timestamps.

Step 2 ends as soon as its message shows (the Train page reruns a progress fragment every 2 s, so
it is never quiet). ``results.json`` in the output folder keeps every raw number.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SAMPLE_TEXT = "12,261 cells x 1,287 genes after QC"
SAMPLE = REPO / "sample_data" / "kang_pbmc_ctrl.h5ad"
SCATTER = ".st-key-explore_scatter .atlas-scatter"  # the canvas scatter (dashboard/cell_scatter.js)
SIZES = ".st-key-explore_sizes .js-plotly-plot"
VOLCANO = ".st-key-de_volcano .js-plotly-plot"
DRAWN_IN = re.compile(r"Drawn in ([\d.]+) s")  # the Explore page's caption under the scatter
QUIET_S = 1.0  # nothing changed for this long: the step is over
NO_CHART_CHANGE_S = 3.0  # the run ended and the chart did not change for this long: it will not

# Installed in the page before any of its scripts (and kept across Streamlit's page switches, which
# do not reload the document). See the module docstring for what it records.
TRACKER_JS = r"""
(() => {
  if (window.__walk) return;
  const IGNORED = '.hoverlayer, .modebar-container, .dragcover';
  const w = window.__walk = {
    armed: false, t0: null, charts: [], cond: null, condAt: null, runs: [], muts: [],
    running: false, idleSince: 0, totalRuns: 0, replies: [],
  };
  // When the server's messages arrive (Streamlit's websocket): splits a step's time into the
  // server's part (input -> first reply) and the browser's (reply -> picture).
  const NativeWebSocket = window.WebSocket;
  window.WebSocket = class extends NativeWebSocket {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', () => { if (w.armed && w.t0 !== null) w.replies.push(performance.now()); });
    }
  };
  // Streamlit's own run state, set on the app's root element as soon as the state changes
  // (its running indicator only shows after 500 ms of running, so it misses short runs).
  const isRunning = () => ['running', 'rerunRequested'].includes(
    document.querySelector('[data-testid="stApp"]')?.dataset.testScriptState);
  w.arm = (charts, cond) => {
    w.armed = true; w.t0 = null; w.charts = charts; w.condAt = null; w.runs = []; w.replies = [];
    w.muts = charts.map(() => []);
    w.cond = cond ? new Function('return (' + cond + ');') : null;
  };
  w.status = () => ({
    now: performance.now(), t0: w.t0, t0wall: w.t0wall, condAt: w.condAt, hasCond: w.cond !== null, runs: w.runs,
    charts: w.charts.map((c, i) => ({selector: c, n: w.muts[i].length, first: w.muts[i][0] ?? null,
                                      last: w.muts[i].at(-1) ?? null})),
    running: w.running, idleSince: w.idleSince, totalRuns: w.totalRuns, replies: w.replies.slice(),
  });
  const onInput = () => { if (w.armed && w.t0 === null) { w.t0 = performance.now(); w.t0wall = Date.now(); } };
  window.addEventListener('pointerdown', onInput, true);
  window.addEventListener('keydown', onInput, true);
  const touches = (r, chart) => {
    const el = r.target.nodeType === 1 ? r.target : r.target.parentElement;
    if (el && el.closest(chart) && !el.closest(IGNORED)) return true;
    for (const n of r.addedNodes) {
      if (n.nodeType === 1 && (n.matches(chart) || n.querySelector(chart))) return true;
    }
    return false;
  };
  const observer = new MutationObserver((records) => {
    const now = performance.now();
    const running = isRunning();
    if (running !== w.running) {
      w.running = running;
      if (running) {
        w.totalRuns += 1;
        if (w.armed) w.runs.push({start: now, end: null});
      } else {
        w.idleSince = now;
        if (w.armed && w.runs.length) w.runs.at(-1).end = now;
      }
    }
    if (!w.armed || w.t0 === null) return;
    w.charts.forEach((chart, i) => { if (records.some(r => touches(r, chart))) w.muts[i].push(now); });
    if (w.cond && w.condAt === null) {
      try { if (w.cond()) w.condAt = now; } catch (e) { /* not there yet */ }
    }
  });
  const start = () => observer.observe(document.documentElement,
    {childList: true, subtree: true, attributes: true, characterData: true});
  if (document.documentElement) start(); else document.addEventListener('DOMContentLoaded', start);
})();
"""


def in_chart(selector: str, text: str) -> str:
    """A condition (JS expression): the chart's SVG text holds ``text``."""
    return f"(document.querySelector({json.dumps(selector)})?.textContent ?? '').includes({json.dumps(text)})"


def some_text(selector: str, text: str) -> str:
    """A condition (JS expression): some element matching ``selector`` holds ``text``."""
    return (f"[...document.querySelectorAll({json.dumps(selector)})]"
            f".some(e => e.textContent.includes({json.dumps(text)}))")


@dataclass
class Step:
    name: str
    value: float | None  # seconds, or % of a core for idle CPU
    unit: str
    target: str
    met: bool | None
    notes: str = ""


TARGETS = {  # issue 14; "gene_busy": issue 16, a colour change while two trainings run
    "sample": ("<= 10 s", 10.0), "train": ("<= 60 s", 60.0), "umap": ("<= 5 s", 5.0),
    "gene": ("<= 0.3 s", 0.3), "gene_busy": ("<= 1 s", 1.0), "resolution": ("<= 1 s", 1.0),
    "de": ("<= 5 s", 5.0), "slider": ("<= 0.3 s", 0.3), "idle": ("< 2 %", 2.0),
}
BUSY_START_S = 12.0  # a background training has imported torch, read the sample and begun its epochs


class Busy:
    """``--busy N``: N trainings of the sample running beside the walk (issue 16, item 6).

    Each is ``python -m engine train`` (400 epochs, no early stopping) in its own process on the same
    cores, from the gene colour steps until the DE slider step is over.
    """

    def __init__(self, n: int, out_dir: Path) -> None:
        self.procs: list[subprocess.Popen] = []
        work = Path(tempfile.mkdtemp(prefix="walk-busy-"))
        for i in range(n):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "engine", "train", str(SAMPLE), "--out", str(work / f"busy{i}.h5ad"),
                 "--cache-dir", str(work / "runs"), "--batch-key", "donor", "--max-epochs", "400",
                 "--no-early-stopping", "--seed", str(100 + i)],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(out_dir / f"busy{i}.log", "w"),  # noqa: SIM115
                start_new_session=True))
        if n:
            time.sleep(BUSY_START_S)
            if dead := [p.args[-1] for p in self.procs if p.poll() is not None]:
                raise RuntimeError(f"background training(s) with seed {dead} ended early: see busy*.log")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def make_step(name: str, kind: str, value: float | None, unit: str = "s", notes: str = "") -> Step:
    text, limit = TARGETS[kind]
    met = None if value is None else (value < limit if kind == "idle" else value <= limit)
    return Step(name, value, unit, text, met, notes)


# ---- The server -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``streamlit run dashboard/app.py`` in its own process group, with an empty run cache."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.cache_dir = Path(tempfile.mkdtemp(prefix="atlas-browser-walk-"))
        env = dict(os.environ)
        env["ATLAS_CACHE_DIR"] = str(self.cache_dir)
        env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".atlas" / "numba_cache"))  # as scripts/env.sh
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.log = open(log_path, "w")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true"],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"the dashboard did not start on {self.url}; see {self.log.name}")

    def stop(self) -> None:
        """Stop the server's whole process group (SIGTERM, then SIGKILL) and remove its run cache."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        try:  # anything left in the group (a child that ignored SIGTERM)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()
        shutil.rmtree(self.cache_dir, ignore_errors=True)


@contextlib.contextmanager
def dashboard_in_chromium(out_dir: Path, *, port: int | None = None, headed: bool = False,
                          init_script: str | None = None):
    """Yield ``(server, page)``: a fresh dashboard server and a Chromium page (1400 x 1000) on it.

    The server log goes to ``out_dir/streamlit.log``; if the body raises, ``out_dir/failure.png``
    shows the page at that moment. Browser and server (its whole process group) are stopped at the
    end, whatever happened.
    """
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is missing: run `bash scripts/setup.sh --test`")
    out_dir.mkdir(parents=True, exist_ok=True)
    server = Server(port or free_port(), out_dir / "streamlit.log")
    try:
        server.wait_healthy()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=not headed,
                                        args=[a for a in CHROMIUM_ARGS if not (headed and a == "--headless")])
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            if init_script:
                context.add_init_script(init_script)
            page = context.new_page()
            page.set_default_timeout(120_000)
            try:
                yield server, page
            except BaseException:
                page.screenshot(path=str(out_dir / "failure.png"), full_page=True)
                raise
            finally:
                context.close()
                browser.close()
    finally:
        server.stop()


def _proc_stat(pid: int) -> tuple[int, list[str]] | None:
    """(parent pid, fields after the command name) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the name may hold spaces and parentheses
    return int(fields[1]), fields


def cpu_ticks(root: int) -> int:
    """Clock ticks of CPU used by ``root`` and its live descendants, plus its reaped children."""
    parents: dict[int, int] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (got := _proc_stat(int(entry.name))) is not None:
            parents[int(entry.name)], stats[int(entry.name)] = got
    family, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in family} - family
        family |= more
        grew = bool(more)
    # fields (0-based after the name): 11 utime, 12 stime, 13 cutime, 14 cstime
    total = sum(int(stats[p][11]) + int(stats[p][12]) for p in family if p in stats)
    if root in stats:
        total += int(stats[root][13]) + int(stats[root][14])
    return total


# ---- The page -------------------------------------------------------------------------------------
class Walk:
    """The browser page, its tracker and the screenshots."""

    def __init__(self, page, out_dir: Path) -> None:
        self.page = page
        self.out_dir = out_dir
        self.busy: Busy | None = None
        self.n_shots = 0
        self.raw: dict[str, dict] = {}

    def shot(self, name: str) -> None:
        self.n_shots += 1
        self.page.screenshot(path=str(self.out_dir / f"{self.n_shots:02d}_{name}.png"))

    def status(self) -> dict:
        return self.page.evaluate("() => window.__walk.status()")

    def arm(self, charts: list[str], cond: str | None) -> None:
        self.page.evaluate("([charts, cond]) => window.__walk.arm(charts, cond)", [charts, cond])

    def wait_idle(self, *, rerun_expected: bool = True, timeout: float = 300.0, quiet: float = 0.5) -> None:
        """Wait for the rerun an action asked for (if one starts within 2 s), then for quiet.

        The only fixed wait of the script: up to 2 s for a rerun to start after a widget changed.
        """
        before = self.status()["totalRuns"]
        deadline = time.monotonic() + timeout
        started = not rerun_expected
        start_by = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            s = self.status()
            started = started or s["totalRuns"] > before or s["running"] or time.monotonic() > start_by
            if started and not s["running"] and s["now"] - s["idleSince"] >= quiet * 1000:
                return
            time.sleep(0.1)
        raise TimeoutError("the page did not become idle")

    def measure(self, action, *, charts: list[str], cond: str | None, timeout: float,
                until: str = "quiet") -> dict:
        """Arm the tracker, do ``action``, wait until the step is over; its times in seconds.

        ``until="quiet"``: the runs ended, the condition holds and nothing changed for QUIET_S;
        ``until="cond"``: as soon as the condition holds. Returns, in seconds from the input:
        ``seconds`` (drawn: every chart changed and the condition holds), ``settled`` (the charts'
        last change), ``run_end`` (the last run ended), and ``runs``, ``unchanged`` (charts that did
        not change) and the tracker's raw status.
        """
        self.arm(charts, cond)
        action()
        deadline = time.monotonic() + timeout
        while not self._over(s := self.status(), until):
            if time.monotonic() > deadline:
                raise TimeoutError(f"step not over after {timeout:.0f} s; tracker: {s}")
            time.sleep(0.1)
        t0, cond_at = s["t0"], s["condAt"] or s["t0"]
        ended = [r["end"] for r in s["runs"] if r["end"] is not None]
        changed = [c for c in s["charts"] if c["n"]]
        if until == "cond":
            drawn = settled = s["condAt"]
        elif changed:
            drawn = max([c["first"] for c in changed] + [cond_at])
            settled = max([c["last"] for c in changed] + [cond_at])
        else:  # nothing was redrawn: the step is over when the run is
            drawn = settled = max(ended + [cond_at])
        replies = [r for r in s["replies"] if r <= drawn]
        return {"seconds": (drawn - t0) / 1000, "settled": (settled - t0) / 1000,
                "first_reply": (replies[0] - t0) / 1000 if replies else None,
                "last_reply": (replies[-1] - t0) / 1000 if replies else None,
                "run_end": (max(ended) - t0) / 1000 if ended else None, "runs": len(s["runs"]),
                "charts": [c["selector"] for c in s["charts"]],
                "unchanged": [c["selector"] for c in s["charts"] if not c["n"]], "raw": s}

    @staticmethod
    def _over(s: dict, until: str) -> bool:
        if s["t0"] is None:
            return False  # the input has not reached the page yet
        cond_ok = not s["hasCond"] or s["condAt"] is not None
        if until == "cond" or not cond_ok or s["running"]:
            return cond_ok and until == "cond"
        times = [s["t0"]] + [r["end"] for r in s["runs"] if r["end"] is not None]
        times += [c["last"] for c in s["charts"] if c["last"] is not None]
        times += [s["condAt"]] if s["condAt"] is not None else []
        calm = (s["now"] - max(times)) / 1000
        all_changed = all(c["n"] for c in s["charts"])
        if s["runs"]:  # not running: they have all ended
            return calm >= (QUIET_S if all_changed else NO_CHART_CHANGE_S)
        # no run seen at all (not expected): only a change on the page can end the step
        changed = any(c["n"] for c in s["charts"]) or s["condAt"] is not None
        return changed and calm >= NO_CHART_CHANGE_S

    # ---- widgets ----
    def open_choice(self, label: str, option: str, *, search: bool = False):
        """Open a selectbox (typing ``option`` to filter it if ``search``); the option to click."""
        box = self.page.get_by_role("combobox", name=label, exact=True)
        box.click()
        if search:
            box.fill(option)
        choice = self.page.get_by_role("option", name=option, exact=True)
        choice.wait_for()
        return choice

    def choose(self, label: str, option: str) -> None:
        """Pick an option of a selectbox and wait for the rerun (untimed preparation)."""
        from playwright.sync_api import expect

        self.open_choice(label, option).click()
        expect(self.page.get_by_role("combobox", name=label, exact=True)).to_have_value(option)
        self.wait_idle()

    def slider(self, label: str):
        """The keyboard-focusable thumb of the slider labelled ``label``."""
        return self.page.get_by_test_id("stSlider").filter(has_text=label).get_by_role("slider").first

    def radio_option(self, label: str, option: str):
        return self.page.get_by_test_id("stRadio").filter(has_text=label).get_by_text(option, exact=True)

    def drawn_in(self) -> str:
        """The Explore page's own "Drawn in" time (server side: colours, figure, serialisation)."""
        caption = self.page.get_by_text(DRAWN_IN).first.inner_text()
        return f"; page says drawn in {DRAWN_IN.search(caption).group(1)} s"

    def park_mouse(self) -> None:
        """Move the pointer to the sidebar's empty bottom, away from any chart's hover labels."""
        self.page.mouse.move(20, self.page.viewport_size["height"] - 20)


def _notes(m: dict) -> str:
    parts = [f"settled {m['settled']:.2f} s"]
    if m.get("first_reply") is not None:
        parts.append(f"server replies {m['first_reply']:.2f}-{m['last_reply']:.2f} s")
    if m["run_end"] is not None:
        parts.append(f"run ended {m['run_end']:.2f} s")
    if m["runs"] != 1:
        parts.append(f"{m['runs']} runs")
    if m["unchanged"]:
        parts.append(f"not redrawn: {', '.join(m['unchanged'])}"
                     + (" (time to run end)" if m["unchanged"] == m["charts"] else ""))
    return "; ".join(parts)


# ---- The walk -------------------------------------------------------------------------------------
def walk(w: Walk, url: str, args, steps: list[Step], server: Server) -> None:
    page = w.page
    # 1. page load until the sample is visible
    t = time.perf_counter()
    page.goto(url)
    page.get_by_text(SAMPLE_TEXT).wait_for(timeout=180_000)
    visible = time.perf_counter() - t
    w.shot("sample_visible")
    w.wait_idle(rerun_expected=False, quiet=QUIET_S)
    done = w.status()["idleSince"] / 1000  # performance.now() counts from the navigation's start
    steps.append(make_step("Page load until the sample is visible", "sample", visible,
                           notes=f"Data page complete (its run ended) at {done:.2f} s"))
    w.shot("data_page_complete")

    # 2. train with defaults, batch key donor
    page.get_by_role("link", name="Train").click()
    page.get_by_text("Runs on this data").wait_for(timeout=120_000)
    w.wait_idle(rerun_expected=False)
    w.choose("Batch key", "donor")
    if args.epochs is not None:
        field = page.get_by_label("Epochs (if not automatic)", exact=True)  # exact: "KL warm-up epochs: automatic"
        if not field.is_visible():
            page.get_by_text("Advanced").click()
        if page.get_by_role("checkbox", name="Epochs: automatic", exact=True).is_checked():
            page.get_by_text("Epochs: automatic", exact=True).click()
            w.wait_idle()
        field.fill(str(args.epochs))
        field.press("Tab")
        w.wait_idle()
    estimate = page.get_by_role("button", name="Train", exact=True).locator(
        "xpath=following::*[@data-testid='stCaptionContainer'][1]")
    shown = estimate.inner_text().strip()
    m = w.measure(lambda: page.get_by_role("button", name="Train", exact=True).click(), charts=[],
                  cond=some_text('[data-testid^="stAlert"]', "It is now the active run"),
                  timeout=args.train_timeout, until="cond")
    message = page.get_by_text("It is now the active run").first.inner_text()
    trained = re.search(r"Trained (\d+) epochs in (\d+) s", message)
    epochs = f"{trained.group(1)} epochs ({trained.group(2)} s on the page)" if trained else message
    mode = f"--epochs {args.epochs}" if args.epochs is not None else "automatic epochs"
    w.wait_idle(rerun_expected=False)  # the page reruns once more after the message
    notes = f"{mode}: {epochs}; estimate shown at the click: {shown}"
    if (after := estimate.inner_text().strip()) != shown:
        notes += f"; estimate shown after training: {after}"
    steps.append(make_step("Train (defaults, batch key donor) until done", "train", m["seconds"], notes=notes))
    w.raw["train"] = m
    w.shot("trained")

    # 3. first Explore view
    explore = page.get_by_role("link", name="Explore")
    m = w.measure(explore.click, charts=[SCATTER], timeout=600,
                  cond=some_text('[data-testid="stMain"] [data-testid="stCaptionContainer"]', "Drawn in"))
    steps.append(make_step("First Explore view (UMAP drawn)", "umap", m["seconds"], notes=_notes(m) + w.drawn_in()))
    w.raw["first_explore"] = m
    w.shot("explore_first_view")

    # 4. gene colour changes
    # with --busy N, N trainings run from here until the idle step (Walk.busy, stopped in main too)
    w.busy = Busy(args.busy, w.out_dir)
    busy_note = f"; {args.busy} training(s) running" if args.busy else ""

    def gene_step(name: str, click, expect_text: str, key: str) -> None:
        m = w.measure(click, charts=[SCATTER], cond=in_chart(SCATTER, expect_text), timeout=300)
        steps.append(make_step(name, "gene_busy" if args.busy else "gene", m["seconds"],
                               notes=_notes(m) + w.drawn_in() + busy_note))
        w.raw[key] = m
        w.shot(key)

    option = w.open_choice("Colour by", "Gene")
    gene_step("Colour by -> Gene (first gene of the list)", option.click, "(observed)", "colour_gene_default")
    option = w.open_choice("Gene (type to search)", "LYZ", search=True)
    gene_step("Gene LYZ (first gene picked)", option.click, "LYZ (observed)", "gene_lyz")
    option = w.open_choice("Gene (type to search)", "CD79A", search=True)
    gene_step("Gene CD79A (another gene)", option.click, "CD79A (observed)", "gene_cd79a")
    gene_step("Expression -> denoised (CD79A)", w.radio_option("Expression", "denoised").click,
              "CD79A (denoised)", "gene_cd79a_denoised")
    option = w.open_choice("Gene (type to search)", "CD14", search=True)
    gene_step("Gene CD14, denoised (another gene)", option.click, "CD14 (denoised)", "gene_cd14_denoised")

    # 5. Leiden resolution, one keyboard step, with the colour back on clusters
    w.choose("Colour by", "Cluster")
    heading = page.get_by_role("heading", name=re.compile(r"Leiden clusters: \d+ at resolution"))
    before = heading.inner_text()
    thumb = w.slider("Leiden resolution")
    thumb.scroll_into_view_if_needed()
    thumb.focus()
    w.park_mouse()
    old = float(thumb.input_value())
    new = f"{round(old + 0.1, 1):g}"  # the slider's step is 0.1
    m = w.measure(lambda: page.keyboard.press("ArrowRight"), charts=[SCATTER, SIZES], timeout=300,
                  cond=some_text("h3", f"at resolution {new}"))
    after = heading.inner_text()
    steps.append(make_step(f"Leiden resolution {old:g} -> {new} (keyboard)", "resolution", m["seconds"],
                           notes=_notes(m) + w.drawn_in()
                           + f"; {_clusters(before)} -> {_clusters(after)} clusters"))
    w.raw["resolution"] = m
    w.shot("leiden_resolution")

    # 6. one DE: B cells vs rest
    page.get_by_role("link", name="Differential expression").click()
    page.get_by_role("combobox", name="Compare groups of").wait_for(timeout=300_000)
    w.wait_idle(rerun_expected=False)
    w.choose("Compare groups of", "cell_type")
    w.choose("Group 1", "B cells")
    page.get_by_text(re.compile(r"B cells: [\d,]+ cells")).wait_for()
    run_de = page.get_by_role("button", name="Run differential expression")
    m = w.measure(run_de.click, charts=[VOLCANO], timeout=600,
                  cond=some_text('[data-testid="stMetricLabel"]', "Genes called DE"))
    n_de = page.get_by_test_id("stMetricValue").first.inner_text()
    steps.append(make_step("DE B cells vs rest (volcano + Genes called DE)", "de", m["seconds"],
                           notes=_notes(m) + f"; {n_de} genes called DE"))
    w.raw["de"] = m
    page.get_by_test_id("stMetric").first.evaluate("e => e.scrollIntoView({block: 'start'})")
    w.shot("de_volcano")

    # 7. FDR target, one keyboard step
    thumb = w.slider("FDR target")
    thumb.focus()
    w.park_mouse()
    old = thumb.input_value()
    m = w.measure(lambda: page.keyboard.press("ArrowRight"), charts=[VOLCANO], cond=None, timeout=300)
    n_after = page.get_by_test_id("stMetricValue").first.inner_text()
    steps.append(make_step(f"DE slider: FDR target {float(old):g} -> {float(thumb.input_value()):g} (keyboard)",
                           "slider", m["seconds"], notes=_notes(m) + f"; genes called DE {n_de} -> {n_after}"))
    w.raw["fdr_slider"] = m
    page.get_by_test_id("stMetric").first.evaluate("e => e.scrollIntoView({block: 'start'})")
    w.shot("de_fdr_slider")

    w.busy.stop()

    # 8. idle CPU with Explore open
    w.measure(explore.click, charts=[SCATTER], timeout=600,
              cond=some_text('[data-testid="stMain"] [data-testid="stCaptionContainer"]', "Drawn in"))
    w.park_mouse()
    runs_before = w.status()["totalRuns"]
    tick = os.sysconf("SC_CLK_TCK")
    c0, t = cpu_ticks(server.proc.pid), time.monotonic()
    deadline = t + args.idle_seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))
    c1, elapsed = cpu_ticks(server.proc.pid), time.monotonic() - t
    runs = w.status()["totalRuns"] - runs_before
    percent = 100.0 * (c1 - c0) / tick / elapsed
    steps.append(make_step("Idle CPU, Explore open", "idle", percent, unit="%",
                           notes=f"{(c1 - c0) / tick:.2f} s CPU over {elapsed:.0f} s; {runs} reruns seen"))
    w.raw["idle"] = {"cpu_s": (c1 - c0) / tick, "seconds": elapsed, "reruns": runs}
    w.shot("explore_idle")


def _clusters(heading: str) -> str:
    found = re.search(r"Leiden clusters: (\d+)", heading)
    return found.group(1) if found else "?"


def table(steps: list[Step]) -> str:
    lines = ["| step | measured | target (issue 14) | met | notes |", "|---|---|---|---|---|"]
    for s in steps:
        value = "n/a" if s.value is None else (f"{s.value:.2f} %" if s.unit == "%" else f"{s.value:.2f} s")
        met = "?" if s.met is None else ("yes" if s.met else "**no**")
        lines.append(f"| {s.name} | {value} | {s.target} | {met} | {s.notes} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=None, help="server port (default: a free one)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="train this many epochs instead of the automatic number (quick runs)")
    parser.add_argument("--train-timeout", type=float, default=900.0, help="seconds (default 900)")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="idle CPU window (default 60)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "artifacts" / "browser_walk",
                        help="screenshots, server log, results.json (default artifacts/browser_walk)")
    parser.add_argument("--headed", action="store_true", help="show the browser window (needs a display)")
    parser.add_argument("--busy", type=int, default=0,
                        help="trainings run in the background during the colour, resolution and DE steps")
    args = parser.parse_args()

    steps: list[Step] = []
    w: Walk | None = None
    try:
        with dashboard_in_chromium(args.out_dir, port=args.port, headed=args.headed,
                                   init_script=TRACKER_JS) as (server, page):
            w = Walk(page, args.out_dir)
            try:
                walk(w, server.url, args, steps, server)
            finally:
                if w.busy is not None:
                    w.busy.stop()
    except Exception as err:  # noqa: BLE001 - report what was measured, then fail
        print(table(steps))
        print(f"\nFAILED after {len(steps)} steps: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    finally:
        (args.out_dir / "results.json").write_text(json.dumps(
            {"steps": [s.__dict__ for s in steps], "raw": w.raw if w else {}, "args": {
                k: str(v) for k, v in vars(args).items()}}, indent=1))

    print(table(steps))
    print(f"\nScreenshots, server log and results.json in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
