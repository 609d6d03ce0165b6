"""Refuse to build a dense matrix that does not fit in memory, before allocating it.

Counts stay sparse, but some results are dense by nature (posterior samples of every gene, a
predictive check): ``cells x genes x samples`` floats. Allocating more than the machine has does
not raise ``MemoryError`` on Linux: the kernel's OOM killer ends the whole server, and every user
with it. :func:`check_dense_size` estimates the size first and raises a ``ValueError`` that says how
much is needed, how much is available and what to reduce.

::

    from engine.memory import check_dense_size
    check_dense_size(n_cells, n_genes, what="posterior samples", n_matrices=25,
                     advice="compare fewer cells (max_cells_per_group) or fewer samples")
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MEMORY_FRACTION", "available_memory", "check_dense_size", "format_bytes"]

#: Share of the available memory one dense result may take: the rest is left to the other
#: sessions of the server and to the temporary copies numpy and torch make while computing.
MEMORY_FRACTION = 0.5

_MEMINFO = Path("/proc/meminfo")
_CGROUP_V2 = Path("/sys/fs/cgroup")


def available_memory() -> int:
    """Bytes this process can still allocate without the kernel killing it.

    The smaller of ``MemAvailable`` (``/proc/meminfo``) and what the cgroup (a container's memory
    limit) leaves free; ``os.sysconf`` where ``/proc`` is absent.
    """
    candidates = [_meminfo_available(), _cgroup_available()]
    known = [c for c in candidates if c is not None]
    if known:
        return min(known)
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _meminfo_available() -> int | None:
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    try:
        limit = (_CGROUP_V2 / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((_CGROUP_V2 / "memory.current").read_text().strip())
        return max(int(limit) - used, 0)
    except (OSError, ValueError):
        return None


def format_bytes(n_bytes: float) -> str:
    """``12.3 GB`` (powers of 1000, like the sizes file browsers show)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n_bytes) < 1000:
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.1f} TB"


def check_dense_size(
    n_rows: int,
    n_cols: int,
    *,
    what: str,
    advice: str,
    itemsize: int = 4,
    n_matrices: int = 1,
    limit_bytes: int | None = None,
) -> int:
    """Raise ``ValueError`` if ``n_matrices`` dense ``n_rows x n_cols`` arrays would not fit.

    Parameters
    ----------
    n_rows, n_cols
        Shape of one dense matrix.
    what
        What is being built, for the message ("posterior samples for differential expression").
    advice
        What the user can reduce, for the message ("use fewer cells per group").
    itemsize
        Bytes per entry (4 for float32, 8 for float64).
    n_matrices
        How many such matrices exist at once (samples, copies).
    limit_bytes
        The most that may be used; default :data:`MEMORY_FRACTION` of :func:`available_memory`.

    Returns
    -------
    int
        The estimated size in bytes (for logging or a progress message).
    """
    needed = int(n_rows) * int(n_cols) * int(itemsize) * int(n_matrices)
    limit = int(MEMORY_FRACTION * available_memory()) if limit_bytes is None else int(limit_bytes)
    if needed > limit:
        shape = f"{n_rows:,} x {n_cols:,}" + (f" x {n_matrices:,}" if n_matrices > 1 else "")
        raise ValueError(
            f"{what} would need {format_bytes(needed)} of memory as a dense {shape} matrix, more than "
            f"the {format_bytes(limit)} this machine can spare: {advice}."
        )
    return needed
