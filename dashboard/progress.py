"""A progress bar that says what is being computed and how far along it is.

Used inside ``st.cache_data`` functions: Streamlit replays the elements a cached function created,
so the bar must be created there (one created outside could not be replayed), and it is emptied at
the end so that a cache hit shows nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import streamlit as st


@contextmanager
def progress_bar(what: str) -> Iterator[Callable[[float, str], None]]:
    """Show ``what`` with a bar; yields ``show(fraction, step="")`` to move it. Emptied on exit."""
    slot = st.empty()
    started = time.perf_counter()

    def show(fraction: float, step: str = "") -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        detail = f" · {step}" if step else ""
        seconds = time.perf_counter() - started
        slot.progress(fraction, text=f"{what}{detail}: {fraction:.0%} ({seconds:.0f} s)")

    show(0.0)
    try:
        yield show
    finally:
        slot.empty()


def steps(show: Callable[[float, str], None], start: float, end: float, step: str) -> Callable[[float], None]:
    """A ``fraction`` callback for one step that maps its 0..1 onto ``start..end`` of the bar."""
    return lambda fraction: show(start + (end - start) * fraction, step)
