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
