"""A run's link opened in a fresh browser shows its embedding, cluster names and groups (issue 17).

Session A trains the small fixture for a few epochs, names a cluster and saves a lasso group on the
Explore page; a new browser context (no cookies, no session) opens the page's URL and sees the
scatter, the name in its legend and the group in the groups table, without visiting the Train page.
"""

import re

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from .conftest import ARTIFACTS, open_explore, train_fixture_in_browser

pytestmark = [pytest.mark.browser, pytest.mark.slow]

EPOCHS = 3
NAME = "My B cells"


def _lasso(page, plot) -> None:
    overlay = plot.locator("canvas.atlas-overlay")
    overlay.scroll_into_view_if_needed()
    box = overlay.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    rx, ry = box["width"] * 0.3, box["height"] * 0.3
    page.mouse.move(cx - rx, cy - ry)
    page.mouse.down()
    for x, y in ((cx + rx, cy - ry), (cx + rx, cy + ry), (cx - rx, cy + ry), (cx - rx, cy - ry + 5)):
        page.mouse.move(x, y, steps=12)
    page.mouse.up()


def test_a_copied_link_restores_names_and_groups_in_a_new_browser(dashboard_url, browser_page):
    page = browser_page
    train_fixture_in_browser(page, dashboard_url, EPOCHS)
    plot = open_explore(page)

    # Name cluster 0: select its row's first cell, move to the "name" column and type. A rerun
    # still going on (the denoised decode after the first view) can swallow the keys: try again.
    editor = page.locator('[class*="st-key-explore_names_"] [data-testid="stDataFrameResizable"]')
    legend = plot.locator(".atlas-key").get_by_text(NAME, exact=True)
    for _ in range(3):
        try:
            editor.scroll_into_view_if_needed()
            grid = editor.bounding_box()
            page.mouse.click(grid["x"] + 15, grid["y"] + 35 + 17)  # below the header: the first row
            page.keyboard.press("ArrowRight")
            page.keyboard.press("ArrowRight")
            page.keyboard.press("Enter")  # opens the cell's editor
            cell = page.locator("textarea.gdg-input")
            cell.wait_for(timeout=10_000)
            cell.fill(NAME)
            cell.press("Enter")
            legend.wait_for(timeout=20_000)
            break
        except PlaywrightTimeout:
            continue
    legend.wait_for(timeout=10_000)

    # Save a lasso group.
    _lasso(page, plot)
    save = page.get_by_role("button", name=re.compile(r"Save selection as group \([1-9][\d,]* cells\)"))
    save.wait_for(timeout=60_000)
    n_selected = int(re.search(r"\(([\d,]+) cells\)", save.inner_text()).group(1).replace(",", ""))
    page.get_by_label("Group name").fill("link group")
    page.get_by_label("Group name").press("Tab")
    save.click()
    page.get_by_text(f"Saved group 'link group' with {n_selected:,} cells.").wait_for()

    # The page's URL is the link: it names the run and the view.
    page.wait_for_url(re.compile(r"run=[0-9a-f]+"))
    link = page.url
    assert "/explore" in link and "embedding=UMAP" in link

    # A fresh browser context: nothing of session A's cookies or Streamlit session.
    other = page.context.browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        fresh = other.new_page()
        fresh.set_default_timeout(180_000)
        fresh.goto(link)
        fresh_plot = fresh.locator(".st-key-explore_scatter .atlas-scatter")
        fresh_plot.wait_for()
        fresh_plot.locator(".atlas-key").get_by_text(NAME, exact=True).wait_for()
        table = fresh.locator('[data-testid="stTable"]')
        table.get_by_text("link group", exact=True).wait_for()
        assert table.get_by_text(f"{n_selected:,}").count() >= 1
        assert fresh.get_by_text("Train a model or pick a run").count() == 0
        fresh.screenshot(path=str(ARTIFACTS / "link_restored.png"), full_page=True)
    finally:
        other.close()
