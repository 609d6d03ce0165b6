"""Logging helpers: the engine logs to module loggers (``engine.*``) and never configures handlers.

The dashboard (``dashboard.startup.configure_logging``) and the command line decide where records go;
a notebook user sees nothing unless they call ``logging.basicConfig(level=logging.INFO)``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def timed(func: Callable[P, R]) -> Callable[P, R]:
    """Log ``"<function> took <seconds> s"`` at INFO on the function's module logger after each call."""
    logger = logging.getLogger(func.__module__)

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        start = time.perf_counter()
        result = func(*args, **kwargs)
        logger.info("%s took %.2f s", func.__qualname__, time.perf_counter() - start)
        return result

    return wrapper
