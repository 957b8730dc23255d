"""shoal.analysis.layout against umap-learn's layout kernel, on real embeddings' fuzzy graph."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import scipy.sparse

from shoal.analysis import layout
from shoal.analysis.fuzzy import fuzzy_simplicial_set
from shoal.analysis.knn import build_knn_graph
from shoal.analysis.pca import BlockPCA
from shoal.analysis.projection import _initial_layout, _umap_knn, trustworthiness_score


@numba.njit(cache=False)
def _powers(x: np.ndarray, b: float) -> np.ndarray:
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = layout._power(x[i], b)
    return out


@pytest.mark.parametrize(
    "b", [0.5, 0.7904949732233831, 0.8950608778515733, 1.3341669924314914, 2.0]
)
def test_the_polynomial_power_is_within_1e_4_of_numpys(b: float) -> None:
    x = np.geomspace(1e-12, 1e6, 200_001).astype(np.float32)
    expected = np.power(x.astype(np.float64), b)
    got = _powers(x, np.float32(b)).astype(np.float64)
    assert np.max(np.abs(got / expected - 1.0)) < 1e-4


def test_the_known_curve_is_umap_learns_fit() -> None:
    from umap.umap_ import find_ab_params

    for (spread, min_dist), known in layout.KNOWN_CURVES.items():
        np.testing.assert_allclose(layout._fit_curve(min_dist, spread), known, rtol=1e-6)
        np.testing.assert_allclose(find_ab_params(spread, min_dist), known, rtol=1e-6)
    np.testing.assert_allclose(layout.curve_params(0.5), find_ab_params(1.0, 0.5), rtol=1e-6)


@pytest.mark.slow
def test_as_faithful_as_umap_learns_kernel_from_the_same_start(
    real: dict[str, np.ndarray],
) -> None:
    """Same graph, same start, same epochs: Shoal's kernel (serial and parallel) gives maps as
    trustworthy as umap-learn's optimize_layout_euclidean, in 2-D and 3-D."""
    from umap.layouts import optimize_layout_euclidean

    x = real["fmnist"]
    graph = build_knn_graph(x, n_neighbors=14)
    indices, distances, _ = _umap_knn(graph, 15)
    fuzzy = fuzzy_simplicial_set(indices, distances).tocoo()
    n_epochs = 200
    fuzzy.data[fuzzy.data < fuzzy.data.max() / n_epochs] = 0.0
    fuzzy.eliminate_zeros()
    reduced = BlockPCA(50, normalize=True).fit_transform(x)
    a, b = layout.curve_params(0.1)
    for n_components in (2, 3):
        start = _initial_layout(reduced, n_components, np.random.default_rng(0))
        theirs = optimize_layout_euclidean(
            start.copy(),
            start.copy(),
            fuzzy.row,
            fuzzy.col,
            n_epochs,
            len(x),
            fuzzy.data.max() / fuzzy.data,
            a,
            b,
            np.array([1, 2, 3], dtype=np.int64),
            move_other=True,
        )
        expected, _ = trustworthiness_score(x, theirs)
        for parallel in (False, True):
            ours = layout.optimize_layout(
                start.copy(),
                fuzzy.row,
                fuzzy.col,
                fuzzy.data,
                n_epochs=n_epochs,
                a=a,
                b=b,
                parallel=parallel,
            )
            got, _ = trustworthiness_score(x, ours)
            assert got >= expected - 0.01, (n_components, parallel, got, expected)
        assert expected >= 0.9


def test_serial_runs_repeat_and_tails_stay_put_when_placing() -> None:
    rng = np.random.default_rng(0)
    weights = scipy.sparse.random(400, 400, density=0.03, random_state=1, format="coo")
    start = rng.uniform(0, 10, (400, 2)).astype(np.float32)
    first = layout.optimize_layout(
        start.copy(), weights.row, weights.col, weights.data, n_epochs=30
    )
    second = layout.optimize_layout(
        start.copy(), weights.row, weights.col, weights.data, n_epochs=30
    )
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, start) and np.isfinite(first).all()

    heads = np.isin(np.arange(400), weights.row[weights.data > 0])
    placed = layout.optimize_layout(
        start.copy(), weights.row, weights.col, weights.data, n_epochs=30, move_other=False
    )
    np.testing.assert_array_equal(placed[~heads], start[~heads])
    assert not np.array_equal(placed[heads], start[heads])


def test_bad_inputs_are_named() -> None:
    edges = np.array([0, 1]), np.array([1, 5]), np.array([1.0, 1.0])
    with pytest.raises(ValueError, match="float32"):
        layout.optimize_layout(np.zeros((3, 2)), *edges, n_epochs=5)
    with pytest.raises(ValueError, match="2 or 3 columns"):
        layout.optimize_layout(np.zeros((3, 4), np.float32), *edges, n_epochs=5)
    with pytest.raises(ValueError, match="0 to 2"):
        layout.optimize_layout(np.zeros((3, 2), np.float32), *edges, n_epochs=5)
