"""Some rows of a (maybe memory-mapped) matrix, standing in for the matrix of those rows.

A comparison of train (800k rows) with test (200k) of a 1M x 1280 set, a selection seeded with
train, a UMAP fitted on 200k sampled rows: each needs "the matrix of these rows", and copying it
would cost 4 GB, 1 GB, 1 GB. :class:`RowSubset` reads rows only when a kernel indexes it, in
ascending row order (rows asked for out of order are sorted and read in blocks by
:func:`shoal.analysis.blocks.take_rows`), so it goes wherever a kernel takes an embeddings matrix.

Example:
    >>> x = np.arange(12.0).reshape(6, 2)
    >>> odd = RowSubset(x, [5, 1, 3])
    >>> odd.shape, odd[1:].tolist()
    ((3, 2), [[2.0, 3.0], [6.0, 7.0]])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shoal.analysis.blocks import take_rows


class RowSubset:
    """Rows ``rows`` of ``source`` (n_source, dim), in the order given, read when indexed.

    ``subset[a:b]``, ``subset[positions]`` and ``subset[mask]`` give float32 copies of those
    rows; ``len``, ``shape``, ``ndim`` and ``dtype`` are those of the (len(rows), dim) matrix.
    ``np.asarray(subset)`` reads every row: for small subsets and tests.
    """

    def __init__(self, source: Any, rows: Any):
        self.source = source
        self.rows = np.asarray(rows, dtype=np.int64).ravel()
        if len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= len(source)):
            raise IndexError(f"rows must lie in [0, {len(source)})")
        self.shape: tuple[int, int] = (len(self.rows), int(source.shape[1]))
        self.ndim = 2
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            raise TypeError("index a RowSubset by rows only: subset[a:b] or subset[positions]")
        if isinstance(key, (int, np.integer)):
            return take_rows(self.source, self.rows[np.array([key])])[0]
        rows = self.rows[key]
        if len(rows) > 1 and (rows[1:] < rows[:-1]).any():
            return take_rows(self.source, rows)
        # Already ascending (a slice of sorted rows, an index's candidates): one read, no sort.
        return np.asarray(self.source[rows], dtype=np.float32)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = take_rows(self.source, self.rows)
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"RowSubset({len(self.rows)} of {len(self.source)} rows, dim {self.shape[1]})"
