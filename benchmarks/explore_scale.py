"""The Explore scatter and the Data page's QC plots at 1M cells: what the server builds, what the browser draws.

Usage (repository root, project venv and ``scripts/env.sh`` sourced)::

    python benchmarks/explore_scale.py                   # server side, then the browser (Chromium)
    python benchmarks/explore_scale.py --no-browser      # server side only
    python benchmarks/explore_scale.py --caps 200000,1000000 --cells 1000000

Server side (this process, no Streamlit): synthetic UMAP-like positions of ``--cells`` cells (30
blobs of unequal sizes and spreads), then

- for each drawing cap: the time to build the component's payload
  (:func:`dashboard.cell_scatter.scatter_data`, cluster colours and a continuous colour, best of 3)
  and its size as JSON (what Streamlit sends);
- the selection of every cell inside a box and inside a concave lasso (a 5-pointed star of 400
  vertices) among all cells (:func:`dashboard.cell_scatter.cells_in_region`, best of 5);
- the QC violins and the totals-vs-genes scatter of the Data page on 1M cells, as the density view
  they now are and, for comparison, as Plotly violins of every value: build time and JSON size;
  and in the browser (below), the time until the four charts are drawn.

Browser (``--no-browser`` skips it): ``python -m streamlit run benchmarks/explore_scale_app.py`` on a
free port, driven by Debian's Chromium through Playwright (headless, software rendering, 1400 x 1000).
For each cap, in a fresh browser context (a fresh tab and heap):

- **first picture**: from ``page.goto`` until the scatter's ``data-drawn`` attribute is set (the
  script ran, the payload travelled, the browser decoded it and drew one canvas pass); the pass
  itself is ``data-draw-ms`` (``performance.now()`` around ``draw`` in ``cell_scatter.js``);
- **colour change**: from the click on "value" until the canvas is redrawn with it;
- **box selection**: from the mouse release until the caption says how many cells are selected;
- **hover**: from the first mouse move over the cells until the hover line shows (the first hover
  builds the index of the drawn points);
- **JS heap**: CDP ``Performance.getMetrics`` ``JSHeapUsedSize`` after all that, and again after a
  forced garbage collection (``HeapProfiler.collectGarbage``); the tab's limit to stay under is 2 GB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dashboard.cell_scatter import cells_in_region, scatter_data  # noqa: E402
from dashboard.explore_figures import Colouring  # noqa: E402
from dashboard.figures import qc_violin, totals_vs_genes  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def synthetic_cells(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A UMAP-like picture: 30 blobs of unequal sizes and spreads; cluster codes; a continuous value."""
    rng = np.random.default_rng(seed)
    k = 30
    centres = rng.uniform(-15, 15, size=(k, 2))
    weights = rng.dirichlet(np.full(k, 0.7))
    labels = rng.choice(k, n, p=weights)
    spread = rng.uniform(0.3, 1.5, k)
    coords = (centres[labels] + rng.normal(size=(n, 2)) * spread[labels, None]).astype(np.float32)
    value = (np.sin(coords[:, 0] / 3) + rng.normal(scale=0.2, size=n)).astype(np.float32)
    return coords, labels, value


def qc_obs(n: int, seed: int = 0) -> pd.DataFrame:
    """Per-cell QC metrics of ``n`` cells from 8 donors, as the Data page has them."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"total_counts": rng.lognormal(8, 0.6, n), "n_genes_by_counts": rng.lognormal(7, 0.4, n),
                         "pct_counts_mt": rng.gamma(2, 2, n),
                         "donor": pd.Categorical(rng.choice([f"donor{i}" for i in range(8)], n))},
                        index=pd.RangeIndex(n).astype(str))


def best_of(k: int, fn):
    times, result = [], None
    for _ in range(k):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def star(n_vertices: int = 400, centre=(0.0, 0.0), radius: float = 8.0) -> list[list[float]]:
    angles = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)
    r = radius * (1 + 0.5 * np.sin(5 * angles))
    return np.c_[centre[0] + r * np.cos(angles), centre[1] + r * np.sin(angles)].tolist()


def server_side(n: int, caps: list[int]) -> None:
    coords, labels, value = synthetic_cells(n)
    clusters = pd.Categorical.from_codes(labels, categories=[str(i) for i in range(30)])
    print(f"\n### Scatter payload, {n:,} cells (server)\n")
    print("| cap (points drawn) | build, clusters (s) | build, continuous (s) | payload, clusters (MB) "
          "| payload, continuous (MB) |")
    print("|---:|---:|---:|---:|---:|")
    for cap in caps:
        t_cat, (cat, _) = best_of(3, lambda cap=cap: scatter_data(
            coords, colouring=Colouring("Cluster", clusters), clusters=clusters, title="t", max_points=cap))
        t_val, (val, _) = best_of(3, lambda cap=cap: scatter_data(
            coords, colouring=Colouring("value", value), clusters=clusters, title="t", max_points=cap))
        print(f"| {min(cap, n):,} | {t_cat:.2f} | {t_val:.2f} | {len(json.dumps(cat)) / 1e6:.1f} | "
              f"{len(json.dumps(val)) / 1e6:.1f} |")

    print(f"\n### Selection among all {n:,} cells (server)\n")
    print("| region | cells selected | time (s) |")
    print("|---|---:|---:|")
    for name, region in (("box, 20 x 20 around the centre", {"box": [-10, 10, -10, 10]}),
                         ("box, a corner", {"box": [5, 15, 5, 15]}),
                         ("lasso, concave star of 400 vertices", {"lasso": star()}),
                         ("lasso, small star around one blob", {"lasso": star(100, tuple(coords[0]), 2.0)})):
        t, rows = best_of(5, lambda region=region: cells_in_region(coords, region))
        print(f"| {name} | {len(rows):,} | {t:.3f} |")

    obs = qc_obs(n)
    print(f"\n### Data page QC plots, {n:,} cells (server)\n")
    print("| figure | build (s) | JSON (MB) |")
    print("|---|---:|---:|")
    cases = [
        ("3 violins by donor (density view)", lambda: [qc_violin(obs, m, groupby="donor")
                                                    for m in ("total_counts", "n_genes_by_counts", "pct_counts_mt")]),
        ("3 violins by donor (every cell, before)", lambda: [qc_violin(obs, m, groupby="donor", max_points=n)
                                                             for m in ("total_counts", "n_genes_by_counts",
                                                                       "pct_counts_mt")]),
        ("totals vs genes (50,000 drawn)", lambda: [totals_vs_genes(obs, kept=obs["total_counts"].to_numpy() > 2000)]),
    ]
    for name, make in cases:
        t, figs = best_of(1, make)
        t_json, size = best_of(1, lambda figs=figs: sum(len(f.to_json()) for f in figs))
        print(f"| {name} | {t + t_json:.2f} | {size / 1e6:.1f} |")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def app_server():
    port = _free_port()
    log = open("/tmp/explore_scale_server.log", "w")
    app = str(REPO / "benchmarks" / "explore_scale_app.py")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", app,
                             "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    import urllib.request

    try:
        for _ in range(180):
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()


# Plotly sets _fullData on a chart once it has drawn it
PLOTTED = """() => { const g = [...document.querySelectorAll('.js-plotly-plot')];
  return g.length >= 4 && g.every((x) => x._fullData && x._fullData.length && x.querySelector('.main-svg')); }"""
DRAWN = "document.querySelector('.atlas-scatter') && document.querySelector('.atlas-scatter').dataset.drawn"


def browser_side(n: int, caps: list[int]) -> None:
    from playwright.sync_api import sync_playwright

    rows = []
    with app_server() as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        warm = browser.new_page()
        warm.set_default_timeout(600_000)
        warm.goto(f"{url}/?n={n}&cap=1000")  # the server makes the synthetic cells once
        warm.wait_for_function(f"() => {DRAWN}")
        warm.close()
        for cap in caps:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(600_000)
            cdp = context.new_cdp_session(page)
            cdp.send("Performance.enable")
            root = page.locator(".atlas-scatter")
            t0 = time.perf_counter()
            page.goto(f"{url}/?n={n}&cap={cap}")
            page.wait_for_function(f"() => {DRAWN}")
            first = time.perf_counter() - t0
            first_pass = float(root.get_attribute("data-draw-ms"))
            points = int(root.get_attribute("data-points"))

            before = int(root.get_attribute("data-drawn"))
            t0 = time.perf_counter()
            page.get_by_text("value", exact=True).click()
            page.wait_for_function(f"() => Number({DRAWN}) > {before} && "
                                   "document.querySelector('.atlas-scatter').dataset.label === 'value'")
            colour = time.perf_counter() - t0
            colour_pass = float(root.get_attribute("data-draw-ms"))

            overlay = page.locator("canvas.atlas-overlay")
            box = overlay.bounding_box()
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            tip = page.locator(".atlas-tip")
            t0 = time.perf_counter()
            page.mouse.move(cx, cy)
            for dx in range(0, 200, 4):
                if tip.is_visible():
                    break
                page.mouse.move(cx + dx, cy + dx / 2)
            hover = time.perf_counter() - t0

            page.locator(".atlas-tools button[data-mode=box]").click()
            page.mouse.move(cx - 200, cy - 150)
            page.mouse.down()
            page.mouse.move(cx + 100, cy + 150, steps=8)
            t0 = time.perf_counter()
            page.mouse.up()
            caption = page.get_by_text(re.compile(r"\d selected"))
            caption.wait_for()
            select = time.perf_counter() - t0
            selected_text = caption.inner_text()

            used = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            cdp.send("HeapProfiler.collectGarbage")
            after = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            rows.append((points, first, first_pass, colour, colour_pass, hover, select,
                         used["JSHeapUsedSize"] / 2**20, used["JSHeapTotalSize"] / 2**20,
                         after["JSHeapUsedSize"] / 2**20, selected_text))
            page.screenshot(path=f"/tmp/explore_scale_{points}.png")
            context.close()
        qc = []
        for label, cap in (("density view from every cell (now)", 50_000), ("every value sent (before)", n)):
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(600_000)
            page.goto(f"{url}/?page=qc&n={n}&cap=1000")  # the synthetic metrics made once, not timed
            page.wait_for_function(PLOTTED)
            t0 = time.perf_counter()
            page.goto(f"{url}/?page=qc&n={n}&cap={cap}")
            page.wait_for_function(PLOTTED)
            qc.append((label, time.perf_counter() - t0))
            page.close()
        browser.close()
    print(f"\n### Data page QC plots in the browser, {n:,} cells (3 violins by 8 donors + totals vs genes)\n")
    print("| violins | page load to every chart drawn (s) |")
    print("|---|---:|")
    for label, seconds in qc:
        print(f"| {label} | {seconds:.2f} |")
    print(f"\n### Browser, {n:,} cells (headless Chromium, software rendering)\n")
    print("| points drawn | first picture (s) | its canvas pass (ms) | colour change (s) | its canvas pass (ms) | "
          "first hover (s) | box selection (s) | JS heap used / total (MB) | after GC (MB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]:,} | {r[1]:.2f} | {r[2]:.0f} | {r[3]:.2f} | {r[4]:.0f} | {r[5]:.2f} | {r[6]:.2f} | "
              f"{r[7]:.0f} / {r[8]:.0f} | {r[9]:.0f} |")
    print()
    for r in rows:
        print(f"- {r[0]:,} drawn: the page said \"{r[10]}\"")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--caps", default="200000,500000,1000000")
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--no-server", action="store_true")
    args = parser.parse_args()
    caps = [int(c) for c in args.caps.split(",")]
    if not args.no_server:
        server_side(args.cells, caps)
    if not args.no_browser:
        browser_side(args.cells, caps)


if __name__ == "__main__":
    main()
