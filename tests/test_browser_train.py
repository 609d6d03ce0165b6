"""A real browser trains the sample on the Train page and cancels a longer run.

While training, it watches the progress bar move; it then sees the run in the history and loads the
same settings from the cache.
"""

import re

import pytest

from .conftest import ARTIFACTS, train_in_browser

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def epoch_shown(page) -> int:
    text = page.get_by_text(re.compile(r"Epoch \d+ of \d+")).first.inner_text()
    return int(re.search(r"Epoch (\d+) of", text).group(1))


def test_train_the_sample_watch_progress_then_hit_the_cache(dashboard_url, browser_page):
    page = browser_page
    page.goto(dashboard_url)
    page.get_by_text("12,261", exact=True).first.wait_for()  # the sample is loaded at start
    train_in_browser(page, 6)

    # the progress bar advances while the page stays live
    page.get_by_text(re.compile(r"Epoch [1-5] of 6")).first.wait_for(timeout=180_000)
    first = epoch_shown(page)
    page.get_by_text(re.compile(r"Epoch [2-6] of 6")).first.wait_for(timeout=180_000)
    page.screenshot(path=str(ARTIFACTS / "train_page_progress.png"))
    page.get_by_text("It is now the active run").wait_for(timeout=300_000)
    assert first < 6
    # the run is listed in the history, marked active
    history = page.get_by_text("Runs on this data").locator("xpath=ancestor::div[@data-testid='stVerticalBlock'][1]")
    history.locator("[data-testid='stDataFrame']").wait_for()

    # same settings again: loaded from the cache, well under a second
    page.get_by_role("button", name="Train", exact=True).click()
    message = page.get_by_text(re.compile(r"Loaded run trained on .*, 6 epochs in .*read from the cache in [\d.]+ s"))
    message.wait_for()
    assert float(re.search(r"from the cache in ([\d.]+) s", message.inner_text()).group(1)) < 1.0
    page.screenshot(path=str(ARTIFACTS / "train_page_cache_hit.png"))


def test_cancel_a_run_from_the_page(dashboard_url, browser_page):
    page = browser_page
    page.goto(dashboard_url)
    page.get_by_text("12,261", exact=True).first.wait_for()
    train_in_browser(page, 400, seed=7)  # seed 7: a run not in the cache
    page.get_by_text(re.compile(r"Epoch [1-9]\d* of 400")).first.wait_for(timeout=180_000)
    page.get_by_role("button", name="Cancel training").click()
    page.get_by_text("Training was cancelled. Nothing was saved.").wait_for(timeout=30_000)
