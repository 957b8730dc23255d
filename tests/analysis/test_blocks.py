from __future__ import annotations

import numpy as np

from shoal.analysis.blocks import l2_normalize


def test_l2_normalize_equals_float64_division_and_keeps_zero_and_tiny_rows() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 64)).astype(np.float32) * rng.uniform(1e-3, 1e3, (500, 1))
    x[3] = 0.0
    x[7] = np.float32(1e-30) * x[8]  # its squares underflow float32
    original = x.copy()
    got = l2_normalize(x)
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    expected = x / np.where(norms > 0, norms, 1.0)
    assert got.dtype == np.float32 and got is not x
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_array_equal(x, original)
    assert not got[3].any() and np.isclose(np.linalg.norm(got[7]), 1.0)
