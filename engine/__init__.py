"""Atlas Explorer engine: the science behind the dashboard, importable without Streamlit.

Subpackages, in the order data flows through them:

- :mod:`engine.reading`: count files into AnnData (formats, raw-count checks, gene names);
- :mod:`engine.preprocessing`: quality control and highly variable genes;
- :mod:`engine.model`: the scVI-style VAE, its options, likelihoods, training and inference;
- :mod:`engine.runs`: :func:`fit` (train, or load a cached run) and the run cache;
- :mod:`engine.analysis`: neighbours, UMAP/t-SNE, Leiden, batch mixing, differential expression;
- :mod:`engine.cli`: ``python -m engine --help``.

``import engine`` loads no torch: the names below are imported on first use, so reading, QC and the
command line's help stay light.

>>> import engine
>>> adata = engine.read_counts("pbmc.h5ad")
>>> run = engine.fit(adata, params=engine.RunParams(likelihood="nb"), batch_key="donor",
...                  cache_dir="runs")
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

# OpenMP threads that busy-wait between torch ops steal the CPU from each other and from every
# other process on small machines (2-thread training went from 1.9 to 34-110 s/epoch on a busy
# 2-core machine). Passive waiting must be chosen before torch is first imported.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:
    from engine.model.params import RunParams
    from engine.reading.load import read_counts
    from engine.runs.fit import fit
    from engine.runs.records import Run
    from engine.runs.storage import load_run

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access, PEP 562)
_EXPORTS = {
    "Run": "engine.runs.records",
    "RunParams": "engine.model.params",
    "fit": "engine.runs.fit",
    "load_run": "engine.runs.storage",
    "read_counts": "engine.reading.load",
}
__all__ = ["Run", "RunParams", "__version__", "fit", "load_run", "read_counts"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
