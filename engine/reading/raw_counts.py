"""Is this matrix raw counts? Recognising counts, normalised and log-transformed data.

scVI's likelihoods (negative binomial, ZINB, Poisson) are defined on raw UMI/read counts. A file
may carry counts in ``X``, in ``layers["counts"]`` or in ``.raw``; the other places often hold a
normalised or log-transformed copy. These checks look only at stored (non-zero) values, so they
stay fast and sparse on large matrices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import sparse

CountsKind = Literal["counts", "normalised", "log-transformed", "negative", "non-finite", "empty"]

WHAT_TO_DO = (
    "scVI's count likelihoods need raw UMI/read counts: upload the unnormalised matrix "
    "(often in .raw or layers['counts'])."
)

# log1p of any realistic count (up to ~1e6 reads in one gene of one cell) stays below 14, so a
# non-integer matrix whose largest value is this small is a log scale, not a linear one.
_LOG_SCALE_MAX = 20.0


@dataclass(frozen=True)
class CountsCheck:
    """What a matrix holds.

    Attributes
    ----------
    kind
        ``"counts"`` for non-negative finite integers; otherwise the first problem found.
    message
        One plain-English sentence saying what was found and, when not counts, what to do.
    """

    kind: CountsKind
    message: str

    @property
    def is_counts(self) -> bool:
        """Whether the matrix holds raw counts."""
        return self.kind == "counts"


def check_counts(matrix, *, name: str = "The matrix") -> CountsCheck:
    """Check that ``matrix`` (dense or scipy sparse, cells x genes) holds raw counts.

    Parameters
    ----------
    matrix
        The matrix to check.
    name
        How messages refer to it, e.g. ``"X"`` or ``"layers['counts']"``.
    """
    n_rows, n_cols = matrix.shape
    if n_rows == 0 or n_cols == 0:
        return CountsCheck("empty", f"{name} is empty ({n_rows} cells x {n_cols} genes).")
    values = _stored_values(matrix)
    finite = np.isfinite(values)
    if not finite.all():
        n_bad = int((~finite).sum())
        return CountsCheck(
            "non-finite",
            f"{name} holds {n_bad:,} NaN or infinite values: counts are always finite numbers. "
            "Fix the export (missing values should be 0) and upload again.",
        )
    nonzero = values[values != 0]
    if nonzero.size == 0:
        return CountsCheck(
            "empty", f"{name} holds only zeros: there are no counts to learn from."
        )
    low = float(nonzero.min())
    if low < 0:
        return CountsCheck(
            "negative",
            f"{name} holds negative values (min {low:.3g}): it looks scaled or centred, not raw "
            f"counts. {WHAT_TO_DO}",
        )
    fractional = nonzero[np.abs(nonzero - np.rint(nonzero)) > 1e-4]
    high = float(nonzero.max())
    if fractional.size == 0:
        return CountsCheck(
            "counts", f"{name} holds raw counts (non-negative integers, max {high:,.0f})."
        )
    examples = ", ".join(f"{v:.3f}" for v in np.unique(fractional[:1000])[:2])
    found = f"{name} holds non-integer values (e.g. {examples}; max {high:.3g})"
    row_sums = _row_sums(matrix)
    row_sums = row_sums[row_sums > 0]
    if row_sums.size > 1 and np.ptp(row_sums) <= 1e-3 * float(np.median(row_sums)):
        return CountsCheck(
            "normalised",
            f"{found} and every cell sums to {float(np.median(row_sums)):,.0f}: it looks "
            f"normalised, not raw counts. {WHAT_TO_DO}",
        )
    if high <= _LOG_SCALE_MAX:
        return CountsCheck(
            "log-transformed", f"{found}: it looks log-transformed, not raw counts. {WHAT_TO_DO}"
        )
    return CountsCheck("normalised", f"{found}: it looks normalised, not raw counts. {WHAT_TO_DO}")


def _stored_values(matrix) -> np.ndarray:
    if sparse.issparse(matrix):
        return np.asarray(matrix.data)
    return np.asarray(matrix).ravel()


def _row_sums(matrix) -> np.ndarray:
    return np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
