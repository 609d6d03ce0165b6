"""The first request to a freshly started server, for a page other than the first one.

Streamlit runs a ``pages/`` folder beside the entry script on its own (its "v1" multipage mode) until
a session has called ``st.navigation``: a bookmarked ``/train`` right after a restart showed
Streamlit's own page list and "Load a dataset first". The entry script, ``dashboard/app.py``, does
not sit beside ``pages/``, so that mode never applies; this test proves it on a fresh server.
"""

import pytest

from .conftest import ARTIFACTS, serve_dashboard

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_first_request_for_a_page_after_a_restart_gets_the_whole_app(tmp_path_factory, browser_page):
    page = browser_page
    with serve_dashboard(tmp_path_factory) as url:  # a server no session has visited yet
        page.goto(url + "/train?run=0123456789abcdef0123")
        page.get_by_text("12,261 cells x 1,287 genes after QC").wait_for()  # the sample, loaded by dashboard/app.py
        page.get_by_role("heading", name="Settings").wait_for()  # the Train form, not "Load a dataset first"
        page.get_by_text("Likelihood", exact=True).wait_for()
        page.get_by_role("button", name="Train", exact=True).wait_for()
        page.screenshot(path=str(ARTIFACTS / "first_visit_train.png"), full_page=True)
        sidebar = page.get_by_test_id("stSidebarNav").inner_text()
        assert "Differential expression" in sidebar  # our navigation ...
        assert "app" not in sidebar.split()  # ... not Streamlit's list of the files in pages/
        assert page.get_by_text("Load a dataset on the Data page first.").count() == 0
        assert page.url.endswith("/train?run=0123456789abcdef0123")  # the page and its run id are kept
