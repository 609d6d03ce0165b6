"""Compiled loops of the DE and Wilcoxon code (numba, cached on disk like engine.model.nb_kernel's)."""

from __future__ import annotations

import math

import numba
import numpy as np

# Whole counts below this have their log1p kept per row by scatter_log_keys.
_SMALL_COUNTS = 16


@numba.njit(nogil=True, boundscheck=False, cache=True)
def masked_column_sums(data, indices, indptr, rows, n_columns):  # pragma: no cover - compiled
    """Per column of a CSR matrix, over ``rows``: the sum of the values and the number of non-zeros."""
    total = np.zeros(n_columns)
    nonzero = np.zeros(n_columns)
    for row in rows:
        for k in range(indptr[row], indptr[row + 1]):
            value = data[k]
            total[indices[k]] += value
            if value != 0:
                nonzero[indices[k]] += 1.0
    return total, nonzero


@numba.njit(nogil=True, boundscheck=False, cache=True)
def row_scales(data, indices, indptr, rows, start, stop, target, scale, per_column):  # pragma: no cover - compiled
    """Rows ``rows[start:stop]`` of a CSR matrix: their scale factors, and their non-zeros per column.

    ``scale[i] = target / row total`` (0 for a row without counts); each column's count of those
    rows' non-zero values is added to ``per_column``.
    """
    for i in range(start, stop):
        row = rows[i]
        total = 0.0
        for k in range(indptr[row], indptr[row + 1]):
            total += np.float64(data[k])
        if total > 0:
            scale[i] = target / total
            for k in range(indptr[row], indptr[row + 1]):
                if data[k] != 0:
                    per_column[indices[k]] += 1


@numba.njit(nogil=True, boundscheck=False, cache=True)
def scatter_log_keys(data, indices, indptr, rows, start, stop, scale, group,  # pragma: no cover - compiled
                     cursor, stop_column, position, keys, keys_f, sums):
    """Rows ``rows[start:stop]``' non-zeros in columns below ``stop_column``: gene-major keys and sums.

    Each row resumes at ``cursor[i - start]`` (an index into ``data``; advanced past the values
    written, so the next block of columns starts there: the CSR indices must be sorted in each
    row). Each value becomes ``w = log1p(value * scale[i])`` (float64), stored at
    ``position[column]`` (then advanced) as the key ``bits(w) << 1 | group[i]``: ``keys`` and
    ``keys_f`` are the same memory as uint64 and float64. ``sums[group[i], column] += w``.
    """
    one = np.uint64(1)
    # log1p of the small whole counts of a row, computed once per row and count: most counts are 1-3,
    # so this saves most log1p calls (the same float64 expression, so the same bits)
    small = np.empty(_SMALL_COUNTS)
    small_row = np.full(_SMALL_COUNTS, -1, dtype=np.int64)  # the row each small[c] was computed for
    for i in range(start, stop):
        end = indptr[rows[i] + 1]
        k = cursor[i - start]
        factor = scale[i]
        g = group[i]
        while k < end and indices[k] < stop_column:
            if data[k] != 0 and factor != 0:
                column = indices[k]
                p = position[column]
                value = np.float64(data[k])
                c = int(value) if 0 < value < _SMALL_COUNTS else 0
                if c > 0 and c == value:
                    if small_row[c] != i:
                        small[c] = math.log1p(value * factor)
                        small_row[c] = i
                    w = small[c]
                else:
                    w = math.log1p(value * factor)
                keys_f[p] = w
                keys[p] = (keys[p] << one) | g
                sums[g, column] += w
                position[column] += 1
            k += 1
        cursor[i - start] = k


@numba.njit(nogil=True, boundscheck=False, cache=True)
def gene_run_sums(keys, indptr, first, stop, n_zero, rank_sum, count, ties):  # pragma: no cover - compiled
    """Per gene of ``first..stop-1``: group 1's rank sum and count among its non-zeros, and sum(t^3 - t).

    Gene ``g``'s sorted keys are ``keys[indptr[g]:indptr[g + 1]]``.

    See :func:`engine.analysis.wilcoxon._rank_sums`.
    """
    one = np.uint64(1)
    for gene in range(first, stop):
        a, n = indptr[gene], indptr[gene + 1] - indptr[gene]
        total = 0.0
        in1_total = 0
        tie_total = 0.0
        start = 0
        while start < n:
            value = keys[a + start] >> one
            in1 = 0
            end = start
            while end < n and (keys[a + end] >> one) == value:
                in1 += np.int64(keys[a + end] & one)
                end += 1
            t = float(end - start)
            total += in1 * (n_zero[gene] + start + (t + 1.0) / 2.0)
            in1_total += in1
            tie_total += t * t * t - t
            start = end
        rank_sum[gene] = total
        count[gene] = in1_total
        ties[gene] = tie_total
