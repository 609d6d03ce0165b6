"""Work done once per server process, at start-up, in the background."""

from __future__ import annotations

import logging
import os
import threading

import streamlit as st

from engine.warmup import warm_up


@st.cache_resource
def start_warm_up() -> threading.Thread:
    """Compile the embedding kernels (numba) on a tiny input while the user looks at the Data page.

    The first UMAP on the Explore page then does not pay for it. Runs once per server process.
    """
    thread = threading.Thread(target=warm_up, name="atlas-warm-up", daemon=True)
    thread.start()
    return thread


@st.cache_resource
def configure_logging() -> None:
    """Send the ``engine`` and ``dashboard`` loggers to the server's stderr, beside Streamlit's own log.

    They log job start and end, failures with their tracebacks, timings of the slow steps. Once per
    server process; ``ATLAS_LOG_LEVEL`` (default INFO) sets the level.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    level = os.environ.get("ATLAS_LOG_LEVEL", "INFO").upper()
    for name in ("engine", "dashboard"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.addHandler(handler)
        logger.propagate = False  # Streamlit's root configuration would print them twice
