"""A real browser finds every cluster's markers, reads the dot plot and names the clusters from them."""

import pytest

from .conftest import ARTIFACTS, train_fixture_in_browser

pytestmark = [pytest.mark.browser, pytest.mark.slow]

EPOCHS = 15  # enough for the fixture's cell types to separate


def test_markers_dot_plot_and_suggested_names_reach_the_explore_page(dashboard_url, browser_page):
    page = browser_page
    train_fixture_in_browser(page, dashboard_url, EPOCHS)

    page.get_by_role("link", name="Markers").click()
    page.get_by_role("button", name="Find markers").click()
    page.get_by_text("Suggested cell-type names").wait_for(timeout=300_000)
    dotplot = page.locator(".st-key-markers_figure .js-plotly-plot")
    dotplot.wait_for()
    assert "Markers of Leiden clusters" in dotplot.inner_text()
    page.get_by_role("button", name="Use these names for the clusters").wait_for()
    page.screenshot(path=str(ARTIFACTS / "markers_page.png"), full_page=True)

    page.get_by_role("button", name="Use these names for the clusters").click()
    page.get_by_text("the names show on every page").wait_for(timeout=60_000)
    named = page.get_by_text("Named", exact=False).first.inner_text()
    assert int(named.split()[1]) >= 2, named

    page.get_by_role("link", name="Explore").click()
    plot = page.locator(".st-key-explore_scatter .atlas-scatter")
    plot.wait_for(timeout=120_000)
    page.get_by_text("Drawn in").wait_for(timeout=120_000)
    text = plot.inner_text()
    assert any(name in text for name in ("B cells", "NK cells", "CD14+ Monocytes", "CD4 T cells")), text
    page.screenshot(path=str(ARTIFACTS / "explore_named_clusters.png"))
