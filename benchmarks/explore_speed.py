"""Explore page speed on the bundled 12k-cell sample: first view, then colour changes.

Runs the dashboard in Streamlit's AppTest (in process, no browser), trains a short run on the
sample, opens Explore and times each script rerun. A colour change must recompute nothing but the
colour vector (target <= 300 ms per rerun).

    python benchmarks/explore_speed.py [--epochs 5] [--tsne]

"rerun s" is the whole script rerun in AppTest (in the browser a colour change reruns only the
scatter fragment); "panel s" is the page's own "Drawn in" time: colour vector, figure and its
serialisation.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--tsne", action="store_true", help="also time the first t-SNE")
    args = parser.parse_args()
    os.environ.setdefault("ATLAS_CACHE_DIR", tempfile.mkdtemp(prefix="atlas-bench-"))

    from streamlit.testing.v1 import AppTest

    from engine.model.params import RunParams
    from engine.runs.fit import fit

    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=600)
    at.run()
    state = at.session_state["atlas_state"]
    t0 = time.perf_counter()
    run = fit(state.filtered.copy(), params=RunParams(max_epochs=args.epochs, seed=0),
              batch_key="donor", cache_dir=os.environ["ATLAS_CACHE_DIR"])
    train_s = time.perf_counter() - t0
    state.active_run_id = run.run_id

    rows: list[tuple[str, float, float]] = [(f"train {args.epochs} epochs (not the page)", train_s,
                                             float("nan"))]

    def timed(label: str, action) -> None:
        t = time.perf_counter()
        action().run()
        assert not at.exception, at.exception
        drawn = next(float(c.value.split("Drawn in ")[1].split(" s")[0]) for c in at.caption
                     if "Drawn in" in c.value)
        rows.append((label, time.perf_counter() - t, drawn))

    timed("first view: neighbours + UMAP + Leiden", lambda: at.switch_page("../pages/explore.py"))
    timed("rerun, nothing changed", lambda: at)
    timed("colour: annotation (cell_type)", lambda: at.selectbox(key="explore_source").set_value("Annotation"))
    timed("colour: annotation donor", lambda: at.selectbox(key="explore_annotation").set_value("donor"))
    timed("colour: QC metric", lambda: at.selectbox(key="explore_source").set_value("QC metric"))
    timed("colour: gene (first gene, observed)", lambda: at.selectbox(key="explore_source").set_value("Gene"))
    timed("colour: gene CD14, observed (new gene)", lambda: at.selectbox(key="explore_gene").set_value("CD14"))
    timed("colour: gene CD14, denoised (first time)", lambda: at.radio(key="explore_expression").set_value("denoised"))
    timed("colour: gene CD14, observed again (cached)",
          lambda: at.radio(key="explore_expression").set_value("observed"))
    timed("colour: back to cluster", lambda: at.selectbox(key="explore_source").set_value("Cluster"))
    timed("point size", lambda: at.slider(key="explore_point_size").set_value(5.0))
    timed("Leiden resolution 0.5 (new clustering)", lambda: at.slider(key="explore_resolution").set_value(0.5))
    if args.tsne:
        timed("t-SNE (first time)", lambda: at.radio(key="explore_embedding").set_value("t-SNE"))

    print(f"{'step':48s} {'rerun s':>8s} {'panel s':>8s}")
    for label, seconds, panel in rows:
        print(f"{label:48s} {seconds:8.3f} {panel:8.3f}")


if __name__ == "__main__":
    main()
