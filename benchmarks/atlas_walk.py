"""A large atlas through the whole dashboard in Chromium: server folder -> QC -> Train -> Explore -> DE, timed.

Usage (repository root, project venv and ``scripts/env.sh`` sourced; atlases from ``make_atlas.py``)::

    python benchmarks/atlas_walk.py --data-dir /tmp/atlases --file kang-1m.h5ad --out-dir /tmp/atlas_walk

It starts the dashboard as ``browser_walk.py`` does (own process group, empty run cache) with
``ATLAS_DATA_DIR=--data-dir``, and does what a person would, with the page's defaults:

1. **open**: the Data page's "Server folder" tab, the file, "Load this file", until the sidebar
   counts its cells (read, QC metrics, highly variable genes);
2. **QC charts**: until the Data page's four QC charts are drawn (after the load);
3. **train** (with ``--skip-train``, for a file that already holds X_scVI, X_umap and leiden: "Open
   the embedding saved in this file" on the Data page instead): the Train page with the batch key
   ``--batch-key`` and automatic epochs, "Train", until the run is active (the page says how many
   epochs it chose);
4. **first view**: Explore, until the scatter is drawn (neighbour graph, UMAP, Leiden);
5. **colour change**: "Colour by" -> "Annotation" (its first column), then "Cluster", then
   "Annotation" again, each from the click on the option until the canvas shows it (the note gives
   the canvas pass's own time and the server's, from the page's "Drawn in" caption);
6. **box selection**: a box over the middle of the scatter, until the page counts the cells
   selected among all cells (drawn or not);
7. **DE**: Differential expression of ``--group`` against the rest (``cell_type``), until the volcano shows.

With ``--profile``, ``py-spy record`` samples the server and its workers during each step (50 Hz)
into ``OUT_DIR/profile_<step>.txt``, one collapsed stack per line: where a step's server time goes.

Prints one row per step (seconds, and the peak resident memory of the server's process group,
workers included, sampled every 0.5 s) and saves a screenshot after each step.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser_walk import SAMPLE_TEXT, Server, dashboard_in_chromium  # noqa: E402

QC_DRAWN = """() => { const g = [...document.querySelectorAll('.js-plotly-plot')];
  return g.length >= 4 && g.every((x) => x._fullData && x._fullData.length && x.querySelector('.main-svg')); }"""
SCATTER = ".st-key-explore_scatter .atlas-scatter"


def group_rss(root: int) -> int:
    """Resident bytes of ``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            children.setdefault(int(fields[1]), []).append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


class PeakMemory:
    """The largest :func:`group_rss` of a process group since the last :meth:`take`."""

    def __init__(self, root: int) -> None:
        self.root, self.peak, self._stop = root, 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, group_rss(self.root))

    def take(self) -> int:
        peak, self.peak = max(self.peak, group_rss(self.root)), 0
        return peak

    def stop(self) -> None:
        self._stop.set()


def profiler(pid: int, path: Path) -> subprocess.Popen:
    """``py-spy record`` of the server and its workers into ``path`` (collapsed stacks) until SIGINT."""
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--subprocesses", "--format", "raw",
                             "--rate", "50", "--output", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


IDLE = "() => document.querySelector('[data-testid=stApp]')?.dataset.testScriptState === 'notRunning'"


def choose(page, label: str, option: str) -> None:
    page.wait_for_function(IDLE, timeout=600_000)  # a rerun that ends while the list is open closes it
    box = page.get_by_role("combobox", name=label, exact=True)
    box.click()
    page.get_by_role("option", name=option, exact=True).click()


def walk(page, url: str, args, server: Server, out_dir: Path) -> list[tuple[str, float, float, str]]:
    rows: list[tuple[str, float, float, str]] = []
    memory = PeakMemory(server.proc.pid)
    shots = iter(range(1, 100))

    def step(name: str, action, until, note=lambda: "") -> None:
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        memory.take()
        spy = profiler(server.proc.pid, out_dir / f"profile_{slug}.txt") if args.profile else None
        start = time.perf_counter()
        action()
        until()
        seconds = time.perf_counter() - start
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its samples when interrupted
            spy.wait(timeout=60)
        said = " ".join(note().split())  # one line; a caption's first sentence is enough
        rows.append((name, seconds, memory.take() / 2**30, said.split(". ")[0]))
        page.screenshot(path=str(out_dir / f"{next(shots):02d}_{slug}.png"), full_page=True)
        print(f"{name}: {seconds:.1f} s", flush=True)

    page.goto(url)
    page.get_by_text(SAMPLE_TEXT).first.wait_for(timeout=300_000)
    page.get_by_role("tab", name="Server folder").click()
    choose(page, "File in the server folder", args.file)
    cells = re.compile(r"[\d,]{7,} cells x [\d,]+ genes after QC")
    step("open the file from the server folder",
         lambda: page.get_by_role("button", name="Load this file").click(),
         lambda: page.get_by_text(cells).first.wait_for(timeout=1_800_000),
         lambda: page.get_by_text(cells).first.inner_text())
    step("Data page QC charts drawn", lambda: None, lambda: page.wait_for_function(QC_DRAWN, timeout=600_000))

    if args.skip_train:
        step("open the analysis saved in the file",
             lambda: page.get_by_role("button", name=re.compile("Open the embedding saved in this file")).click(),
             lambda: page.get_by_text("The saved analysis is the active run").first.wait_for(timeout=600_000),
             lambda: page.get_by_text("The saved analysis is the active run").first.inner_text())
    else:
        page.get_by_test_id("stSidebarNavItems").get_by_role("link", name="Train").click()
        page.get_by_role("combobox", name="Batch key").wait_for()
        choose(page, "Batch key", args.batch_key)
        page.wait_for_timeout(1500)
        step("train (automatic epochs)",
             lambda: page.get_by_role("button", name="Train", exact=True).click(),
             lambda: page.get_by_text("It is now the active run").first.wait_for(timeout=3_600_000),
             lambda: page.get_by_text(re.compile(r"\d+ epochs? in")).first.inner_text())

    page.get_by_test_id("stSidebarNavItems").get_by_role("link", name="Explore").click()
    step("Explore first view (graph, UMAP, Leiden)", lambda: None,
         lambda: page.wait_for_function(f"() => document.querySelector('{SCATTER}') && "
                                        f"document.querySelector('{SCATTER}').dataset.drawn", timeout=3_600_000),
         lambda: page.get_by_text(re.compile(r"Leiden clusters: \d+")).first.inner_text())
    root = page.locator(SCATTER)
    for option, label_js in (("Annotation", "!== 'cluster'"), ("Cluster", "=== 'cluster'"),
                             ("Annotation", "!== 'cluster'")):
        before = int(root.get_attribute("data-drawn"))
        page.wait_for_function(IDLE, timeout=600_000)
        page.get_by_role("combobox", name="Colour by", exact=True).click()  # the list open: timed from the pick
        step(f"colour change (Colour by: {option})",
             lambda option=option: page.get_by_role("option", name=option, exact=True).click(),
             lambda before=before, label_js=label_js: page.wait_for_function(
                 f"() => Number(document.querySelector('{SCATTER}').dataset.drawn) > {before} && "
                 f"document.querySelector('{SCATTER}').dataset.label {label_js}", timeout=120_000),
             lambda: f"{int(root.get_attribute('data-points')):,} points drawn, canvas pass "
                     f"{root.get_attribute('data-draw-ms')} ms, server: "
                     f"{page.get_by_text(re.compile(r'Drawn in [0-9.]+ s')).first.inner_text().split('Drawn')[-1]}")

    overlay = page.locator(f"{SCATTER} canvas.atlas-overlay")
    box = overlay.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.locator(f"{SCATTER} .atlas-tools button[data-mode=box]").click()
    page.mouse.move(cx - 150, cy - 120)
    page.mouse.down()
    page.mouse.move(cx + 150, cy + 120, steps=8)
    selected = page.get_by_text(re.compile(r"\d selected"))
    step("box selection over all cells", lambda: page.mouse.up(), lambda: selected.first.wait_for(timeout=120_000),
         lambda: selected.first.inner_text())

    page.get_by_test_id("stSidebarNavItems").get_by_role("link", name="Differential expression").click()
    page.get_by_role("button", name=re.compile("Run differential expression")).wait_for(timeout=300_000)
    choose(page, "Compare groups of", "cell_type")
    page.wait_for_timeout(1500)
    choose(page, "Group 1", args.group)
    page.wait_for_timeout(1500)
    step(f"DE: {args.group} vs rest (page defaults)",
         lambda: page.get_by_role("button", name=re.compile("Run differential expression")).click(),
         lambda: page.get_by_text("Genes called DE").first.wait_for(timeout=1_200_000))
    memory.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/atlases"))
    parser.add_argument("--file", default="kang-1m.h5ad")
    parser.add_argument("--batch-key", default="batch")
    parser.add_argument("--group", default="B cells")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy record of the server during each step: OUT_DIR/profile_<step>.txt")
    parser.add_argument("--skip-train", action="store_true",
                        help="the file already holds X_scVI, X_umap and leiden: go from the Data page to Explore")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/atlas_walk"))
    args = parser.parse_args()
    if args.profile and shutil.which("py-spy") is None:
        parser.error("--profile needs py-spy (not part of the set-up): pip install py-spy")
    os.environ["ATLAS_DATA_DIR"] = str(args.data_dir)  # the server inherits it
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with dashboard_in_chromium(args.out_dir) as (server, page):
        rows = walk(page, server.url, args, server, args.out_dir)
    print(f"\n{args.file} through the dashboard ({started}, load average at the end "
          f"{os.getloadavg()[0]:.1f}); screenshots in {args.out_dir}\n")
    print("| step | seconds | peak memory, server + workers (GiB) | the page said |")
    print("|---|--:|--:|---|")
    for name, seconds, gib, note in rows:
        print(f"| {name} | {seconds:.1f} | {gib:.2f} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
