"""A real browser trains a quick run, compares two cell types, clicks a gene on the volcano and sees
its violins."""

import pytest

from .conftest import ARTIFACTS

pytestmark = pytest.mark.browser

QUICK_EPOCHS = "3"


def _choose(page, label: str, option: str) -> None:
    """Pick an option of a Streamlit selectbox by its label."""
    page.get_by_label(label, exact=False).first.click()
    page.get_by_role("option", name=option, exact=True).click()
    page.wait_for_timeout(500)


def test_volcano_click_shows_the_genes_violins(dashboard_url, browser_page):
    page = browser_page
    try:
        _compare_and_click(page, dashboard_url)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "de_page_failure.png"), full_page=True)
        raise


def _compare_and_click(page, dashboard_url: str) -> None:
    page.goto(dashboard_url)
    page.get_by_text("12,261", exact=True).first.wait_for()  # the sample is loaded at start

    # A quick run on the Train page.
    page.get_by_role("link", name="Train").click()
    page.get_by_text("Advanced").click()
    page.get_by_text("Epochs: automatic").click()
    epochs = page.get_by_label("Epochs (if not automatic)")
    epochs.fill(QUICK_EPOCHS)
    epochs.press("Enter")
    page.get_by_role("button", name="Train").click()
    page.get_by_text("It is now the active run").wait_for(timeout=300_000)

    page.get_by_role("link", name="Differential expression").click()
    page.get_by_text("Compare groups of").wait_for(timeout=180_000)
    _choose(page, "Compare groups of", "cell_type")
    _choose(page, "Group 1", "B cells")
    _choose(page, "Group 2", "CD14+ Monocytes")
    page.get_by_role("button", name="Run differential expression").click()
    page.get_by_text("Genes called DE").wait_for(timeout=180_000)
    page.get_by_text("genes DE", exact=False).first.wait_for()

    # Click the most differential point of the red (DE) trace of the volcano's SVG.
    volcano = page.locator(".js-plotly-plot").first
    points = volcano.locator(".scatterlayer .trace").first.locator("path.point")
    assert points.count() > 10
    box = points.first.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)

    page.get_by_text("per group").first.wait_for(timeout=120_000)
    page.get_by_text("on the UMAP").first.wait_for(timeout=180_000)
    page.wait_for_timeout(1500)  # let the violins finish drawing
    violins = page.locator(".js-plotly-plot").filter(has_text="per group")
    assert violins.locator(".violinlayer .trace").count() == 2
    page.screenshot(path=str(ARTIFACTS / "de_page_gene_click.png"), full_page=True)
