"""The helper threads that run GIL-free kernels side by side."""

from __future__ import annotations

import threading

import pytest

from engine.threads import available_cores, split_over_threads


def test_every_index_is_covered_once_across_threads():
    seen: list[tuple[int, int, str]] = []
    split_over_threads(lambda a, b: seen.append((a, b, threading.current_thread().name)), 10, 3)
    assert sorted((a, b) for a, b, _ in seen) == [(0, 3), (3, 6), (6, 10)]
    assert threading.current_thread().name in {name for *_, name in seen}  # the caller does a share


def test_more_parts_than_items_and_a_failing_part():
    seen: list[tuple[int, int]] = []
    split_over_threads(lambda a, b: seen.append((a, b)), 2, 8)
    assert sorted(seen) == [(0, 1), (1, 2)]

    def fail(a: int, b: int) -> None:
        if a > 0:
            raise ValueError("part failed")

    with pytest.raises(ValueError, match="part failed"):
        split_over_threads(fail, 4, 2)


def test_available_cores_is_positive():
    assert available_cores() >= 1
