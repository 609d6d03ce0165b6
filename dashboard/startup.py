"""Work done once per server process, at start-up, in the background."""

from __future__ import annotations

import threading

import streamlit as st

from engine.warmup import warm_up


@st.cache_resource
def start_warm_up() -> threading.Thread:
    """Compile the embedding kernels (numba) on a tiny input while the user looks at the Data page,
    so the first UMAP on the Explore page does not pay for it. Runs once per server process."""
    thread = threading.Thread(target=warm_up, name="atlas-warm-up", daemon=True)
    thread.start()
    return thread


def route_through_entry_script() -> None:
    """Send a page that Streamlit ran on its own back through ``app.py``.

    Until some session of a server process has called ``st.navigation``, Streamlit treats an app with
    a ``pages/`` folder beside its entry script as a "v1" multipage app: the first request for, say,
    ``/train`` after a (re)start runs ``pages/train.py`` alone, so the sample is not loaded, the page
    says "Load a dataset first" and Streamlit's own page list ("app, data, ...") fills the sidebar.
    Turning that mode off and rerunning runs ``app.py``, whose ``st.navigation`` routes to the same
    page (the URL and its query, e.g. ``?run=``, are kept). A no-op once ``st.navigation`` has run.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        st.rerun()
