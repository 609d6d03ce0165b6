"""Library-size normalisation: counts per 10,000 and their log1p, the one place this is computed.

scanpy's ``normalize_total(target_sum=1e4)`` then ``log1p``; the model's normalised expression uses the
same scale (scVI's ``scale`` times ``TARGET_SUM``), so observed and denoised values compare directly.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["TARGET_SUM", "log_normalized"]

#: Counts per cell after normalisation (scanpy's ``normalize_total`` target; "per 10k" everywhere).
TARGET_SUM = 1e4


def log_normalized(
    counts: sp.spmatrix | np.ndarray, *, library: np.ndarray | None = None, target_sum: float = TARGET_SUM
) -> sp.csr_matrix:
    """``log1p(counts / library * target_sum)`` as float64 CSR, cells x genes.

    ``library`` is each cell's total count; by default the row sums of ``counts``. Pass it when
    ``counts`` holds only some genes (one gene's column, a run's genes) and the library is every
    gene's. Cells with an empty library stay 0.
    """
    csr = sp.csr_matrix(counts, dtype=np.float64)
    totals = np.asarray(csr.sum(axis=1)).ravel() if library is None else np.asarray(library, dtype=np.float64)
    if totals.shape != (csr.shape[0],):
        raise ValueError(f"library has {totals.shape[0]} values for {csr.shape[0]} cells")
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    out = sp.diags(scale) @ csr
    out = sp.csr_matrix(out)
    out.data = np.log1p(out.data)
    return out
