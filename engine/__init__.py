"""Atlas Explorer engine: the science behind the dashboard, importable without Streamlit.

Reading and checking counts (:mod:`engine.io`), quality control (:mod:`engine.qc`), the scVI-style
VAE and its training (:mod:`engine.model`, :mod:`engine.training`, :func:`engine.fit`), the run
cache (:mod:`engine.cache`), inference (:mod:`engine.inference`), embeddings and clustering, and
differential expression (:mod:`engine.de`). Also a command-line tool: ``python -m engine --help``.

>>> import engine
>>> adata = engine.read_counts("pbmc.h5ad")
>>> run = engine.fit(adata, params=engine.RunParams(likelihood="nb"), batch_key="donor",
...                  cache_dir="runs")
"""

import os
import sys

# OpenMP threads that busy-wait between torch ops steal the CPU from each other and from every
# other process on small machines (2-thread training went from 1.9 to 34-110 s/epoch on a busy
# 2-core machine). Passive waiting must be chosen before torch is first imported.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from engine.cache import Run, load_run  # noqa: E402
from engine.fit import fit  # noqa: E402
from engine.io import read_counts  # noqa: E402
from engine.params import RunParams  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Run", "RunParams", "fit", "load_run", "read_counts", "__version__"]
