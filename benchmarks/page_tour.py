"""Page tour: every page of a fresh dashboard in Chromium, with a screenshot of each issue-18 fix to look at.

Usage (from the repository root, with the project venv and ``scripts/env.sh`` sourced)::

    python benchmarks/page_tour.py --out-dir /tmp/tour             # trains 40 epochs (defaults)
    python benchmarks/page_tour.py --epochs 5 --out-dir /tmp/tour  # quicker (the DE may call no gene)

It starts the server as ``benchmarks/browser_walk.py`` does (fresh run cache, own process group),
then walks Data -> Train -> Explore -> Markers -> Differential expression -> Export on the bundled
sample, checks on each page the text that shows a fix of issue 18 (a failed check stops the tour
with the screenshot ``failure.png``), and saves full-page screenshots named after what they show.
It prints one line per check. It measures nothing: the numbers are the browser walk's.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser_walk import SAMPLE_TEXT, dashboard_in_chromium  # noqa: E402


class Tour:
    def __init__(self, page, out_dir: Path) -> None:
        self.page, self.out_dir, self.n = page, out_dir, 0

    def shot(self, name: str) -> None:
        self.n += 1
        self.page.screenshot(path=str(self.out_dir / f"{self.n:02d}_{name}.png"), full_page=True)

    def see(self, text: str | re.Pattern, what: str, *, timeout: float = 120_000) -> None:
        """Wait until ``text`` shows on the page, and report it as the check ``what``."""
        self.page.get_by_text(text).first.wait_for(timeout=timeout)
        print(f"ok  {what}")

    def go(self, page_name: str) -> None:
        self.page.get_by_role("link", name=page_name).click()
        self.page.wait_for_timeout(500)


def tour(t: Tour, url: str, epochs: int | None) -> None:
    page = t.page
    page.goto(url)
    t.see(SAMPLE_TEXT, "Data: the sample loads and the sidebar counts its cells")
    t.see(re.compile(r"\d mitochondrial genes?\.|No gene name starts with"), "Data: mitochondrial genes counted")
    for line in page.get_by_text(re.compile(r"\d mitochondrial genes?\.")).all_inner_texts():
        if (line.split()[0] == "1") != line.endswith("gene."):  # (the sample has none: its hint shows)
            raise AssertionError(f"Data: {line!r}: singular and plural mixed up")
    shown = [e.inner_text() for text in ("Counts were taken from", "var['")
             for e in page.get_by_text(text).all() if e.is_visible()]  # (the closed detail holds them)
    if shown:
        raise AssertionError(f"Data: AnnData words outside the scanpy detail: {shown}")
    print("ok  Data: AnnData words only in the 'For scanpy users' detail")
    page.get_by_text("Quality control").first.scroll_into_view_if_needed()
    t.shot("data_qc_violins")

    t.go("Train")
    batch = page.get_by_role("combobox", name="Batch key")
    batch.wait_for()
    if batch.input_value() != "donor":
        raise AssertionError(f"Train: batch key preselected as {batch.input_value()!r}, not 'donor'")
    print("ok  Train: the batch key defaults to the sample's donor column")
    if page.get_by_text("Advanced").count():
        page.get_by_text("Advanced").first.click()  # the model options, to see what shows with the normal prior
        page.wait_for_timeout(1000)  # the expander opens with an animation
    if page.get_by_text("Mixture components K", exact=False).count():
        raise AssertionError("Train: 'Mixture components K' shown with the normal prior")
    print("ok  Train: mixture components hidden with the normal prior")
    if epochs is not None:
        if page.get_by_role("checkbox", name="Epochs: automatic", exact=True).is_checked():
            page.get_by_text("Epochs: automatic", exact=True).click()
        field = page.get_by_label("Epochs (if not automatic)", exact=True)
        field.fill(str(epochs))
        field.press("Enter")
        page.wait_for_timeout(1000)
    t.shot("train_form")
    page.get_by_role("button", name="Train", exact=True).click()
    t.see("It is now the active run", "Train: training ends with the run active", timeout=900_000)
    t.see(re.compile("ELBO", re.I), "Train: the training curve stays after training")
    t.shot("train_done_curve_kept")

    t.go("Explore")
    page.locator(".st-key-explore_scatter .atlas-scatter").wait_for(timeout=300_000)
    t.see(re.compile(r"Leiden clusters: \d+ at resolution"), "Explore: clusters with names on the plot")
    t.shot("explore_umap_cluster_names")

    t.go("Markers")
    page.get_by_role("button", name=re.compile("Find markers of")).click()
    t.see("Use these names for the clusters", "Markers: suggested cell-type names with evidence", timeout=600_000)
    t.shot("markers_dotplot_suggestions")
    page.get_by_role("button", name="Use these names for the clusters").click()
    t.see("the names show on every page", "Markers: suggested names applied to the clusters")

    t.go("Explore")
    page.locator(".st-key-explore_scatter .atlas-scatter").wait_for(timeout=300_000)
    legend = page.locator(".st-key-explore_scatter .atlas-key").inner_text()
    if not any(name in legend for name in ("B cells", "NK cells", "CD14+ Monocytes", "CD4 T cells")):
        raise AssertionError(f"Explore: the legend shows no cell-type names: {legend!r}")
    print("ok  Explore: clusters shown by their names")
    t.shot("explore_named_clusters")

    t.go("Differential expression")
    page.get_by_role("button", name=re.compile("Run differential expression")).wait_for()
    for label, option in (("Compare groups of", "cell_type"), ("Group 1", "B cells")):
        box = page.get_by_role("combobox", name=label, exact=True)
        box.click()
        page.get_by_role("option", name=option, exact=True).click()
        page.wait_for_timeout(1500)
    page.get_by_text(re.compile(r"B cells: [\d,]+ cells")).wait_for()
    if page.get_by_text("Pick two groups and press Run").count():
        print("ok  DE: the hint shows before a run")
    page.get_by_role("button", name=re.compile("Run differential expression")).click()
    t.see("Genes called DE", "DE: volcano and counts of genes called DE", timeout=300_000)
    if page.get_by_text("Pick two groups and press Run").count():
        raise AssertionError("DE: 'Pick two groups and press Run' still shown after the run")
    t.see("P(DE)", "DE: the table's headers are words, not column names")
    t.see("FDR threshold", "DE: the volcano marks the FDR threshold")
    t.shot("de_volcano_table")

    t.go("Export")
    t.see(re.compile("Download", re.I), "Export: the page offers downloads")
    shown = [e.inner_text() for text in ("engine.", "obsm[", "uns[", "var[") for e in page.get_by_text(text).all()
             if e.is_visible()]
    if shown:
        raise AssertionError(f"Export: programmer's words outside the scanpy detail: {shown}")
    print("ok  Export: written for biologists (AnnData keys only in the scanpy detail)")
    t.shot("export_page")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="train this many epochs (default: automatic)")
    parser.add_argument("--out-dir", type=Path, default=Path("artifacts") / "page_tour")
    args = parser.parse_args()
    with dashboard_in_chromium(args.out_dir) as (server, page):
        tour(Tour(page, args.out_dir), server.url, args.epochs)
    print(f"Screenshots in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
