"""A real browser uploads a file on the Data page and sees its summary."""

import pytest

from .conftest import ARTIFACTS, shared_file

pytestmark = pytest.mark.browser


def test_upload_pancreas_file_shows_its_summary(dashboard_url, browser_page):
    page = browser_page
    path = shared_file("pancreas_2tech_3514x1194.h5ad")
    page.goto(dashboard_url)
    # the sample is loaded at start
    page.get_by_text("12,261", exact=True).first.wait_for()
    page.locator("input[type=file]").set_input_files(str(path))
    page.get_by_text("3,514", exact=True).first.wait_for()
    page.get_by_text("Summary: pancreas_2tech_3514x1194.h5ad").wait_for()
    assert page.get_by_text("1,194", exact=True).first.is_visible()
    page.screenshot(path=str(ARTIFACTS / "data_page_upload.png"), full_page=True)
