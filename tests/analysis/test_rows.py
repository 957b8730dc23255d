from __future__ import annotations

import numpy as np
import pytest

from shoal.analysis import blocks
from shoal.analysis.rows import RowSubset
from tests.analysis.readers import StrictReader


def test_a_row_subset_reads_like_the_matrix_of_its_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocks, "BLOCK_ROWS", 4)
    matrix = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    rows = np.array([40, 3, 3, 17, 0, 49, 22, 8, 31, 12])
    reader = StrictReader(matrix)
    subset = RowSubset(reader, rows)
    expected = matrix[rows]
    assert len(subset) == 10 and subset.shape == (10, 3) and subset.ndim == 2
    assert subset.dtype == np.float32
    np.testing.assert_array_equal(subset[2:7], expected[2:7])
    np.testing.assert_array_equal(subset[[9, 0, 4]], expected[[9, 0, 4]])
    np.testing.assert_array_equal(subset[expected[:, 0] > 0], expected[expected[:, 0] > 0])
    np.testing.assert_array_equal(subset[np.int64(5)], expected[5])
    np.testing.assert_array_equal(np.asarray(subset), expected)
    assert reader.largest_read <= 4  # read through take_rows, a block at a time
    assert RowSubset(matrix, []).shape == (0, 3) and subset[3:3].shape == (0, 3)


def test_a_row_subset_refuses_rows_outside_the_matrix_and_column_indexing() -> None:
    with pytest.raises(IndexError, match="rows must lie in"):
        RowSubset(np.zeros((5, 2)), [0, 5])
    with pytest.raises(TypeError, match="by rows only"):
        RowSubset(np.zeros((5, 2)), [0, 1])[:, 0]
