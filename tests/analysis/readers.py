"""A stand-in for the store's vector reader that tells when a kernel breaks the out-of-core rules."""

from __future__ import annotations

from typing import Any

import numpy as np


class StrictReader:
    """A read-only (n, dim) matrix as the store hands it to kernels: ``len``, ``shape``, ``dtype``,
    ``ndim``, ``reader[a:b]`` and ``reader[rows]`` (in-memory float32 copies). Reading it whole
    (``np.asarray``, iteration) raises, and ``largest_read`` records the most rows one read
    returned, so a test can check that a kernel stays within its blocks.
    """

    def __init__(self, matrix: np.ndarray):
        self._matrix = np.asarray(matrix, dtype=np.float32)
        self.shape = self._matrix.shape
        self.dtype = np.dtype(np.float32)
        self.ndim = 2
        self.largest_read = 0

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        taken = np.array(self._matrix[key], dtype=np.float32, copy=True)
        self.largest_read = max(self.largest_read, len(taken) if taken.ndim == 2 else 1)
        return taken

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise AssertionError("the kernel read the whole matrix (np.asarray of the reader)")

    def __iter__(self) -> Any:
        raise AssertionError("the kernel iterated over the reader row by row")
