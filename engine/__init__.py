"""Atlas Explorer engine: the science behind the dashboard, importable without Streamlit.

Reading and checking counts (:mod:`engine.io`), quality control (:mod:`engine.qc`), the scVI-style
VAE and its training (:mod:`engine.model`, :mod:`engine.training`), the run cache
(:mod:`engine.cache`), inference, embeddings and clustering, and differential expression.
Also a command-line tool: ``python -m engine --help``.
"""

__version__ = "0.1.0"
