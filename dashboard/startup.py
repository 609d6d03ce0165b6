"""Work done once per server process, at start-up, in the background."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import streamlit as st

from engine.model.calibration import SpeedCalibration, calibrate
from engine.warmup import warm_up


@dataclass
class WarmUp:
    """The server's start-up work, shared by every session: compiled kernels and the speed calibration."""

    thread: threading.Thread
    calibration: SpeedCalibration | None = None  # set by the thread when measured


@st.cache_resource
def start_warm_up() -> WarmUp:
    """Compile the kernels and measure this machine's training speed, in the background.

    The first UMAP on the Explore page then does not pay for compiling, and the Train page can say
    how long a run will take (:mod:`engine.model.calibration`). Runs once per server process.
    """
    thread = threading.Thread(target=lambda: _warm_up(state), name="atlas-warm-up", daemon=True)
    state = WarmUp(thread=thread)
    thread.start()
    return state


def _warm_up(state: WarmUp) -> None:
    warm_up()
    try:
        state.calibration = calibrate()
    except Exception:  # noqa: BLE001 - without a calibration the page shows no estimate, nothing more
        logging.getLogger(__name__).exception("the training-speed calibration failed")
    else:
        logging.getLogger(__name__).info("training speed calibrated in %.1f s: %s",
                                         state.calibration.measured_in, state.calibration)


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
