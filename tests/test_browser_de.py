"""A real browser trains a quick run, compares two cell types, clicks a gene on the volcano and sees its violins."""

import re

import pytest
from playwright.sync_api import expect

from .conftest import ARTIFACTS, train_fixture_in_browser

pytestmark = [pytest.mark.browser, pytest.mark.slow]

QUICK_EPOCHS = 15  # enough for B cells and monocytes to differ in both directions


def _choose(page, label: str, option: str) -> None:
    """Pick an option of a Streamlit selectbox as a person does: open it, click the option.

    The selectbox's input is a combobox named after its label and showing the choice as its value
    (a search by label text would also find the widget's "Help for ..." button).
    """
    box = page.get_by_role("combobox", name=label, exact=True)
    box.click()
    page.get_by_role("option", name=option, exact=True).click()
    expect(box).to_have_value(option)


def test_volcano_click_shows_the_genes_violins(dashboard_url, browser_page):
    page = browser_page
    try:
        _compare_and_click(page, dashboard_url)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "de_page_failure.png"), full_page=True)
        raise


def _compare_and_click(page, dashboard_url: str) -> None:
    train_fixture_in_browser(page, dashboard_url, QUICK_EPOCHS)  # 150 cells per cell type

    page.get_by_role("link", name="Differential expression").click()
    page.get_by_role("combobox", name="Compare groups of").wait_for(timeout=180_000)
    # Each choice reruns the page, which rebuilds the next selectbox's options: wait for the rerun
    # before opening the next one (an open list would be replaced under the pointer).
    _choose(page, "Compare groups of", "cell_type")
    group1 = page.get_by_role("combobox", name="Group 1")
    expect(group1).to_have_value(re.compile(r"cells|Monocytes"))  # a cell type, not a cluster
    _choose(page, "Group 1", "B cells")
    page.get_by_text("B cells: 150 cells").wait_for()  # the group sizes follow the choice
    _choose(page, "Group 2", "CD14+ Monocytes")
    page.get_by_text("CD14+ Monocytes: 150 cells").wait_for()
    page.get_by_role("button", name="Run differential expression").click()
    page.get_by_text("Genes called DE", exact=True).wait_for(timeout=120_000)
    n_de, up_b, up_mono = (int(v.replace(",", "")) for v in
                           page.get_by_test_id("stMetricValue").all_inner_texts()[:3])
    assert n_de > 50 and up_b > 10 and up_mono > 10  # many markers of each cell type
    assert up_b + up_mono == n_de

    # Hover over the first point of the red (called DE) trace of the volcano's SVG, then click it.
    volcano = page.locator(".js-plotly-plot").first
    volcano.scroll_into_view_if_needed()
    points = volcano.locator(".scatterlayer .trace").first.locator("path.point")
    assert points.count() == n_de
    box = points.first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)  # plotly clicks the point under its hover label
    volcano.locator(".hoverlayer .hovertext").wait_for()
    page.mouse.click(x, y)

    violins = page.locator(".js-plotly-plot").filter(has_text="per group")
    violins.wait_for(timeout=60_000)
    gene = violins.locator(".gtitle").text_content().removesuffix(" per group")
    page.get_by_role("heading", name=gene, exact=True).wait_for()
    # The clicked gene is ringed and named on the volcano, and shown on the UMAP.
    page.locator(".js-plotly-plot").first.locator(".scatterlayer .textpoint").get_by_text(
        gene, exact=True).wait_for()
    page.locator(".js-plotly-plot").filter(has_text=f"{gene} on the UMAP").wait_for(timeout=120_000)
    assert violins.locator(".violinlayer .trace").count() == 2
    violins.get_by_text("B cells (150 cells)").wait_for()

    # Streamlit scrolls inside its own container: a tall window fits the whole page in the picture.
    page.set_viewport_size({"width": 1400, "height": 2300})
    page.wait_for_timeout(1500)  # let the plots redraw at the new size
    page.screenshot(path=str(ARTIFACTS / "de_page_gene_click.png"), full_page=True)
