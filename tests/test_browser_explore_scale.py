"""200,000 cells in a real browser: a box selects every cell inside it, also the cells not drawn (issue 15).

No training: the fixture writes a synthetic 200k-cell counts file (200 genes) into a server folder
and a run made with the engine's API beside it (an untrained VAE and a 10-dimensional latent of
five well separated clusters, saved with ``save_run`` under the run id of those counts, with the
``cells_hash`` the Train page matches runs by), plus the record the run's link reads its data back
from. The server draws at most ``ATLAS_MAX_POINTS`` = 50,000 points. The browser opens the run's
Explore link (the server computes the kNN graph and UMAP of 200k cells here: minutes on 2 cores)
and keeps the UMAP in the run's folder (``engine.runs.views``), from which the test reads where
every cell is (above 150,000 cells the layout runs on every core, so it cannot be recomputed
identically beside). It checks that the drawn points are those cells' positions, drags a box, and
compares the page's count with its own count of all cells in the box.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from .conftest import ARTIFACTS, serve_dashboard

pytestmark = [pytest.mark.browser, pytest.mark.slow]

N_CELLS = 200_000
N_GENES = 200
CAP = 50_000
FILE = "atlas200k.h5ad"

def _counts_file(folder) -> None:
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    per_cell = 8
    rows = np.repeat(np.arange(N_CELLS), per_cell)
    cols = rng.integers(0, N_GENES, N_CELLS * per_cell)
    cols[::per_cell] = np.arange(N_CELLS) % N_GENES  # every gene in some cell
    counts = sp.csr_matrix((rng.integers(1, 6, len(rows)).astype(np.float32), (rows, cols)),
                           shape=(N_CELLS, N_GENES))
    counts.sum_duplicates()
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(N_CELLS)])
    var = pd.DataFrame(index=[f"gene{j}" for j in range(N_GENES)])
    ad.AnnData(X=counts, obs=obs, var=var).write_h5ad(folder / FILE)


def _run(data_dir, cache_dir) -> tuple[str, np.ndarray]:
    """Save an untrained run of the counts file as the dashboard reads it; returns its id and latent."""
    import datetime as dt

    import pandas as pd

    from engine.model.params import RunParams
    from engine.model.vae import VAE
    from engine.reading.load import read_counts
    from engine.runs import records
    from engine.runs.annotations import AnnotationStore
    from engine.runs.storage import save_run

    adata = read_counts(data_dir / FILE)  # as the Data page reads it (default QC keeps every cell)
    assert adata.n_obs == N_CELLS
    params = RunParams(n_latent=10, seed=0)
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=10.0, size=(5, 10))
    latent = (centres[rng.integers(0, 5, N_CELLS)] + rng.normal(size=(N_CELLS, 10))).astype(np.float32)
    dhash = records.data_hash(adata)
    rid = records.run_id(adata, params=params, batch_key=None)
    metrics = {"seed": 0, "versions": {}, "train_seconds": 0.0, "seconds_per_epoch": 0.0, "n_epochs_trained": 0,
               "best_epoch": None, "lr": params.lr, "device": "cpu", "elbo_validation": None,
               "reconstruction_validation": None, "kl_validation": None, "n_cells": N_CELLS,
               "n_genes": N_GENES, "data_hash": dhash, "cells_hash": records.cells_hash(adata),
               "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    run = records.Run(run_id=rid, params=params, batch_key=None, batch_categories=None,
                      var_names=list(map(str, adata.var_names)), metrics=metrics,
                      history=pd.DataFrame({"epoch": [], "train_elbo": [], "validation_elbo": []}),
                      latent=latent, module=VAE(N_GENES, 1, params).eval(), path=None)
    save_run(run, cache_dir, data_hash_=dhash)
    # how the run's link opens its data: this file of the server folder, default QC
    AnnotationStore(cache_dir).put(rid, "dataset", "", {
        "source": "server", "file": FILE, "name": FILE, "transpose": None, "names_changed": False,
        "names_column": None, "thresholds": {}, "mito_prefixes": ["MT-", "mt-"], "n_top_genes": 2000,
        "hvg_batch_key": None})
    return rid, latent


def test_a_box_selects_cells_that_are_not_drawn(tmp_path_factory, browser_page):
    started = time.perf_counter()
    data_dir, cache_dir = tmp_path_factory.mktemp("data200k"), tmp_path_factory.mktemp("runs200k")
    _counts_file(data_dir)
    rid, latent = _run(data_dir, cache_dir)
    env = {"ATLAS_CACHE_DIR": str(cache_dir), "ATLAS_DATA_DIR": str(data_dir), "ATLAS_MAX_POINTS": str(CAP)}
    with serve_dashboard(tmp_path_factory, extra_env=env) as url:
        page = browser_page
        page.goto(f"{url}/explore?run={rid}&embedding=UMAP&colour=Cluster")
        plot = page.locator(".st-key-explore_scatter .atlas-scatter")
        plot.wait_for(timeout=900_000)
        caption = page.get_by_text(re.compile(r"50,000 of 200,000 cells drawn \(a random subsample\)"))
        caption.wait_for(timeout=120_000)
        shown = time.perf_counter()
        page.get_by_text(re.compile(r"Leiden clusters: \d+ at resolution")).wait_for(timeout=300_000)
        from engine.runs.views import load_view

        coords = load_view(cache_dir / rid, "X_umap", n_cells=N_CELLS)  # what the server drew from
        assert coords is not None, "the server did not keep the run's UMAP"
        coords = coords.astype(np.float32)

        # The drawn points are the seeded subsample of these cells, at these positions.
        from dashboard.explore_figures import subsample

        rows = subsample(N_CELLS, max_points=CAP)
        drawn = np.asarray(page.evaluate("""() => Array.from(
            document.querySelector('.st-key-explore_scatter .atlas-scatter').parentElement.__atlasScatter.xy)"""),
            dtype=np.float32).reshape(-1, 2)
        assert len(drawn) == CAP
        np.testing.assert_array_equal(drawn, coords[rows])

        # A box over part of the picture.
        page.locator(".st-key-explore_scatter .atlas-tools button[data-mode=box]").click()
        overlay = plot.locator("canvas.atlas-overlay")
        overlay.scroll_into_view_if_needed()
        box = overlay.bounding_box()
        x0, y0 = box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.2
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.75, steps=10)
        page.mouse.up()
        save = page.get_by_role("button", name=re.compile(r"Save selection as group \([1-9][\d,]* cells\)"))
        save.wait_for(timeout=120_000)
        n_selected = int(re.search(r"\(([\d,]+) cells\)", save.inner_text()).group(1).replace(",", ""))
        region = page.evaluate("""() => document.querySelector('.st-key-explore_scatter .atlas-scatter')
            .parentElement.__atlasScatter.region""")
        bx0, bx1, by0, by1 = region["box"]

        def in_box(xy):
            x, y = xy[:, 0].astype(float), xy[:, 1].astype(float)
            return (x >= bx0) & (x <= bx1) & (y >= by0) & (y <= by1)

        n_all, n_drawn = int(in_box(coords).sum()), int(in_box(drawn).sum())
        page.screenshot(path=str(ARTIFACTS / "explore_200k_box.png"), full_page=True)
        assert n_selected == n_all, (n_selected, n_all, n_drawn)
        assert n_selected > n_drawn > 0
        page.get_by_text(f"{n_selected:,} selected ({n_drawn:,} of them drawn)").wait_for()
        print(f"\n200k browser test: first view shown {shown - started:.0f} s after the start; "
              f"box: {n_selected:,} cells selected, {n_drawn:,} of them drawn; "
              f"total {time.perf_counter() - started:.0f} s")
