"""Shared test fixtures: paths to the bundled fixture, the sample and the real data sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Each test process uses at most two threads: the machines are 2-core and tests run side by side.
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data"
SAMPLE = REPO / "sample_data" / "kang_pbmc_ctrl.h5ad"
SHARED_DATA = Path(os.environ.get("ATLAS_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def kang_small_path() -> Path:
    """1,145 PBMC cells x 1,287 genes, up to 150 per cell type, from the Kang 2018 control arm."""
    return FIXTURES / "kang_small.h5ad"


def shared_file(name: str) -> Path:
    """A real data set from ../shared/data (present on developer machines and in CI)."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not found: the shared data folder sits beside the repository")
    return path
