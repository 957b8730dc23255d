"""shoal.analysis.fuzzy against umap-learn's own numba kernels, on real embeddings' kNN graph."""

from __future__ import annotations

import numpy as np
import pytest
from umap import umap_

import shoal.analysis.projection as projection
from shoal.analysis import fuzzy
from shoal.analysis.knn import build_knn_graph


@pytest.fixture(scope="module")
def knn(real: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = real["fmnist"]
    graph = build_knn_graph(x, n_neighbors=14)
    indices, distances, _ = projection._umap_knn(graph, 15)
    return x, indices, distances


@pytest.mark.parametrize("local_connectivity", [1.0, 0.0, 1.5])
def test_sigmas_and_rhos_match_umap(knn, local_connectivity: float) -> None:
    _, _, distances = knn
    distances = distances.copy()
    distances[::7, 3:6] = 0.0  # rows with missing neighbours, as the placing step feeds them
    expected_sigma, expected_rho = umap_.smooth_knn_dist(
        distances, 15.0, local_connectivity=local_connectivity
    )
    sigma, rho = fuzzy.smooth_knn_dist(distances, 15.0, local_connectivity=local_connectivity)
    np.testing.assert_allclose(rho, expected_rho, rtol=1e-6)
    # Bisection stops within 1e-5 of its target; float32 sums in another order may take one
    # more or fewer halving step.
    np.testing.assert_allclose(sigma, expected_sigma, rtol=1e-3)
    assert np.median(np.abs(sigma - expected_sigma) / expected_sigma) < 1e-6


def test_bipartite_memberships_match_umap(knn) -> None:
    _, indices, distances = knn
    indices = indices.copy()
    indices[::5, -2:] = -1
    sigma, rho = umap_.smooth_knn_dist(distances, 15.0)
    rows, cols, vals, _ = umap_.compute_membership_strengths(
        indices, distances, sigma, rho, bipartite=True
    )
    kept = np.asarray(indices).ravel() != -1
    got_rows, got_cols, got_vals = fuzzy.membership_strengths(
        indices, distances, sigma, rho, bipartite=True
    )
    np.testing.assert_array_equal(got_rows, rows[kept])
    np.testing.assert_array_equal(got_cols, cols[kept])
    np.testing.assert_allclose(got_vals, vals[kept], rtol=1e-6, atol=1e-7)


def test_fuzzy_graph_matches_umap(knn) -> None:
    x, indices, distances = knn
    expected = umap_.fuzzy_simplicial_set(
        x, 15, np.random.RandomState(0), "cosine", knn_indices=indices, knn_dists=distances
    )[0].tocsr()
    graph = fuzzy.fuzzy_simplicial_set(indices, distances)
    assert graph.shape == expected.shape and graph.nnz == expected.nnz
    np.testing.assert_array_equal(graph.indptr, expected.indptr)
    np.testing.assert_array_equal(graph.indices, expected.indices)
    np.testing.assert_allclose(graph.data, expected.data, rtol=1e-4, atol=1e-6)
