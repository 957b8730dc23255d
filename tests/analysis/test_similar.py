from __future__ import annotations

import numpy as np
import pytest

from shoal.analysis.blocks import l2_normalize
from shoal.analysis.knn import NeighborIndex
from shoal.analysis.similar import SimilarResult, search_similar
from tests.analysis.synthetic import clustered_embeddings


def oracle(
    x: np.ndarray, query: np.ndarray, excluded: list[int], k: int
) -> tuple[np.ndarray, np.ndarray]:
    unit = l2_normalize(x).astype(np.float64)
    q = query.astype(np.float64) / np.linalg.norm(query)
    distances = 1.0 - unit @ q
    distances[excluded] = np.inf
    order = np.argsort(distances, kind="stable")[:k]
    return order, distances[order]


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return clustered_embeddings(3000, dim=64, seed=0)[0]


def test_single_row_query_matches_brute_force(data: np.ndarray) -> None:
    index = NeighborIndex(data)
    result = search_similar(index, rows=[17], k=50)
    expected, expected_distances = oracle(data, l2_normalize(data)[17], [17], 50)
    np.testing.assert_array_equal(result.indices, expected)
    np.testing.assert_allclose(result.distances, expected_distances, atol=1e-5)
    assert result.query_rows == (17,)


def test_several_rows_query_is_their_mean_direction(data: np.ndarray) -> None:
    index = NeighborIndex(data)
    rows = [3, 99, 2000]
    result = search_similar(index, rows=rows, k=20)
    mean_direction = l2_normalize(data)[rows].mean(axis=0)
    expected, expected_distances = oracle(data, mean_direction, rows, 20)
    np.testing.assert_array_equal(result.indices, expected)
    np.testing.assert_allclose(result.distances, expected_distances, atol=1e-5)
    assert not set(rows) & set(result.indices.tolist())


def test_vector_query_and_extra_exclusions(data: np.ndarray) -> None:
    index = NeighborIndex(data)
    vector = data[5] * 3.0 + 0.01
    result = search_similar(index, vector=vector, k=10, exclude=[5])
    expected, _ = oracle(data, vector, [5], 10)
    np.testing.assert_array_equal(result.indices, expected)
    frame = result.to_frame(sample_ids=np.array([f"s{i}" for i in range(len(data))]))
    assert frame["sample_id"].iloc[0] == f"s{expected[0]}"


def test_k_larger_than_set_and_bad_queries() -> None:
    x = np.random.default_rng(0).normal(size=(5, 3))
    index = NeighborIndex(x)
    result = search_similar(index, rows=[0, 1], k=50)
    assert sorted(result.indices.tolist()) == [2, 3, 4]
    with pytest.raises(ValueError, match="exactly one"):
        search_similar(index, k=3)
    with pytest.raises(ValueError, match="dim"):
        search_similar(index, vector=np.ones(4), k=3)
    with pytest.raises(IndexError):
        search_similar(index, rows=[9], k=3)
    assert isinstance(result, SimilarResult)
