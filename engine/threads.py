"""Helper threads for numba kernels that release the GIL (``nogil=True``).

Numba's own ``parallel=True`` needs a threading layer; the one always available (workqueue) aborts
when two Python threads enter a parallel kernel at once, which a Streamlit server with several
sessions does. So kernels run single-threaded over a range of rows, and :func:`split_over_threads`
runs the ranges side by side on a pool of plain threads.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["available_cores", "split_over_threads"]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which a Dask worker or a container may narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@functools.lru_cache(maxsize=1)
def _helper_pool() -> ThreadPoolExecutor:
    """The process's helper threads, created on first use (idle threads cost nothing)."""
    return ThreadPoolExecutor(max_workers=max((os.cpu_count() or 2) - 1, 1), thread_name_prefix="atlas-nb")


def split_over_threads(work: Callable[[int, int], None], n: int, parts: int) -> None:
    """Run ``work(start, stop)`` over ``parts`` consecutive ranges of ``range(n)`` at once.

    The first range runs on the calling thread, the others on helper threads; returns when all are
    done and re-raises the first error.
    """
    parts = max(min(parts, n), 1)
    bounds = [n * c // parts for c in range(parts + 1)]
    helpers = [_helper_pool().submit(work, bounds[c], bounds[c + 1]) for c in range(1, parts)]
    try:
        work(bounds[0], bounds[1])
    finally:
        for helper in helpers:
            helper.result()
