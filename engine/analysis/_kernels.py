"""Compiled loops of the DE and Wilcoxon code (numba, cached on disk like engine.model.nb_kernel's)."""

from __future__ import annotations

import numba
import numpy as np

# Columns written per pass of csc_scaled.
_COLUMN_BLOCK = 512


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
def csc_scaled(data, indices, indptr, rows, n_columns, target):  # pragma: no cover - compiled
    """The CSR matrix's ``rows`` (in that order) gene-major, each row scaled to sum to ``target``.

    The CSR matrix's indices must be sorted within each row (canonical format).

    Returns CSC ``(data, indices, indptr)``: float64 values ``value * (target / row total)`` with
    zeros left out (rows without counts scale by 0), and the row's position in ``rows`` as index.
    """
    n_rows = rows.shape[0]
    scale = np.zeros(n_rows)
    per_column = np.zeros(n_columns + 1, dtype=np.int64)
    for i in range(n_rows):
        row = rows[i]
        total = 0.0
        for k in range(indptr[row], indptr[row + 1]):
            total += np.float64(data[k])
        if total > 0:
            scale[i] = target / total
            for k in range(indptr[row], indptr[row + 1]):
                if data[k] != 0:
                    per_column[indices[k] + 1] += 1
    out_indptr = np.cumsum(per_column)
    nnz = out_indptr[n_columns]
    out_data = np.empty(nnz)
    out_indices = np.empty(nnz, dtype=np.int32)  # row positions: fewer than 2**31 cells
    position = out_indptr[:n_columns].copy()
    # Scattering every value to its column at once writes to thousands of places far apart (a cache
    # and TLB miss per value); a block of columns at a time keeps the write cursors few. Each row's
    # indices are sorted, so a row resumes where the previous block stopped.
    cursor = np.empty(n_rows, dtype=np.int64)
    for i in range(n_rows):
        cursor[i] = indptr[rows[i]]
    for stop_column in range(_COLUMN_BLOCK, n_columns + _COLUMN_BLOCK, _COLUMN_BLOCK):
        for i in range(n_rows):
            end = indptr[rows[i] + 1]
            k = cursor[i]
            while k < end and indices[k] < stop_column:
                if data[k] != 0 and scale[i] != 0:
                    column = indices[k]
                    out_data[position[column]] = np.float64(data[k]) * scale[i]
                    out_indices[position[column]] = i
                    position[column] += 1
                k += 1
            cursor[i] = k
    return out_data, out_indices, out_indptr


@numba.njit(nogil=True, boundscheck=False, cache=True)
def fill_keys(bits, indices, indptr, genes, group, keys):  # pragma: no cover - compiled
    """Row ``r`` of ``keys``: gene ``genes[r]``'s value bits shifted left by one, or'ed with its cell's group."""
    one = np.uint64(1)
    for row in range(genes.shape[0]):
        gene = genes[row]
        start = indptr[gene]
        for k in range(indptr[gene + 1] - start):
            keys[row, k] = (bits[start + k] << one) | group[indices[start + k]]


@numba.njit(nogil=True, boundscheck=False, cache=True)
def row_run_sums(keys, lengths, n_zero, rank_sum, count, ties):  # pragma: no cover - compiled
    """Per row of sorted keys (``lengths[r]`` of them, then padding): group 1's rank sum and count, sum(t^3 - t).

    See :func:`engine.analysis.wilcoxon._run_sums`.
    """
    one = np.uint64(1)
    for row in range(keys.shape[0]):
        n = lengths[row]
        total = 0.0
        in1_total = 0
        tie_total = 0.0
        start = 0
        while start < n:
            value = keys[row, start] >> one
            in1 = 0
            stop = start
            while stop < n and (keys[row, stop] >> one) == value:
                in1 += np.int64(keys[row, stop] & one)
                stop += 1
            t = float(stop - start)
            total += in1 * (n_zero[row] + start + (t + 1.0) / 2.0)
            in1_total += in1
            tie_total += t * t * t - t
            start = stop
        rank_sum[row] = total
        count[row] = in1_total
        ties[row] = tie_total
