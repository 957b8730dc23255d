from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from shoal.analysis.blocks import l2_normalize
from shoal.analysis.knn import (
    EXACT_MAX_SAMPLES,
    KnnGraph,
    NeighborIndex,
    build_knn_graph,
    recall_at_k,
)
from tests.analysis.readers import StrictReader
from tests.analysis.synthetic import clustered_embeddings


def brute_force(x: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    distances = cdist(x.astype(np.float64), x.astype(np.float64), metric=metric)
    np.fill_diagonal(distances, np.inf)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(distances, order, axis=1)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_graph_matches_brute_force(metric: str) -> None:
    x, _ = clustered_embeddings(800, dim=32, seed=1)
    graph = build_knn_graph(x, n_neighbors=10, metric=metric, method="exact")
    expected_idx, expected_dist = brute_force(x, 10, metric)
    assert graph.indices.shape == (800, 10) and graph.indices.dtype == np.int64
    assert graph.distances.dtype == np.float32
    assert recall_at_k(graph.indices, expected_idx, 10) == 1.0
    np.testing.assert_allclose(graph.distances, expected_dist, atol=2e-5)
    assert (np.diff(graph.distances, axis=1) >= 0).all()
    assert not (graph.indices == np.arange(800)[:, None]).any()


def test_self_excluded_with_exact_duplicates() -> None:
    base = np.random.default_rng(0).normal(size=(20, 16))
    x = np.repeat(base, 4, axis=0)  # every vector four times
    graph = build_knn_graph(x, n_neighbors=5, method="exact")
    rows = np.arange(len(x))[:, None]
    assert not (graph.indices == rows).any()
    # The three copies are the nearest, at distance ~0, then a different vector.
    assert (graph.indices[:, :3] // 4 == rows // 4).all()
    assert graph.distances[:, :3].max() < 1e-6 and graph.distances[:, 3].min() > 1e-3


@pytest.mark.parametrize("n_samples", [1, 2, 5, 16])
def test_tiny_sets(n_samples: int) -> None:
    x = np.random.default_rng(0).normal(size=(n_samples, 8))
    graph = build_knn_graph(x, n_neighbors=15)
    assert graph.n_neighbors == n_samples - 1
    assert graph.indices.shape == (n_samples, n_samples - 1)
    for row in range(n_samples):
        assert sorted(graph.indices[row].tolist()) == [j for j in range(n_samples) if j != row]


def test_memmap_input_and_zero_vectors(tmp_path) -> None:
    x, _ = clustered_embeddings(300, dim=16)
    x[5] = 0.0
    path = tmp_path / "x.npy"
    np.save(path, x)
    mapped = np.load(path, mmap_mode="r")
    graph = build_knn_graph(mapped, n_neighbors=5)
    direct = build_knn_graph(x, n_neighbors=5)
    np.testing.assert_array_equal(graph.indices, direct.indices)
    assert np.isfinite(graph.distances).all()
    assert np.allclose(l2_normalize(x)[5], 0.0)


def test_hnsw_recall_on_real_embeddings(real: dict[str, np.ndarray]) -> None:
    x = real["fmnist"]
    exact = build_knn_graph(x, n_neighbors=10, method="exact")
    approximate = build_knn_graph(x, n_neighbors=10, method="hnsw")
    assert approximate.method == "hnsw"
    assert recall_at_k(approximate.indices, exact.indices, 10) >= 0.95
    # Distances of what HNSW returns are exact distances, not approximations.
    recomputed = 1.0 - np.einsum(
        "ij,ij->i",
        l2_normalize(x)[np.repeat(np.arange(len(x)), 10)],
        l2_normalize(x)[approximate.indices.ravel()],
    ).reshape(-1, 10)
    np.testing.assert_allclose(approximate.distances, recomputed, atol=1e-5)
    # Queries from outside the reference set (the test split against train).
    queries = real["fmnist_test"]
    exact_idx, _ = NeighborIndex(x, method="exact").search(queries, 10)
    hnsw_idx, hnsw_dist = NeighborIndex(x, method="hnsw").search(queries, 10)
    assert recall_at_k(hnsw_idx, exact_idx, 10) >= 0.95
    assert (np.diff(hnsw_dist, axis=1) >= 0).all()


def test_auto_switches_to_hnsw_above_threshold_with_high_recall() -> None:
    n_samples = EXACT_MAX_SAMPLES + 4_000
    x, _ = clustered_embeddings(n_samples, dim=64, n_clusters=30, seed=3)
    graph = build_knn_graph(x, n_neighbors=10)
    assert graph.method == "hnsw"
    queries = np.random.default_rng(0).choice(n_samples, 1_000, replace=False)
    oracle = NeighborIndex(x, method="exact")
    exact_idx, _ = oracle.search(x[queries], 10, exclude=[[q] for q in queries])
    assert recall_at_k(graph.indices[queries], exact_idx, 10) >= 0.95


def test_neighbor_index_search_exclude_and_padding() -> None:
    x, _ = clustered_embeddings(200, dim=16, seed=4)
    index = NeighborIndex(x)
    expected_idx, expected_dist = brute_force(x, 5, "cosine")
    # Small and large query batches take different code paths; both must agree with the oracle.
    for rows in (np.arange(3), np.arange(64)):
        found_idx, found_dist = index.search(x[rows], 5, exclude=[[r] for r in rows])
        np.testing.assert_array_equal(found_idx, expected_idx[rows])
        np.testing.assert_allclose(found_dist, expected_dist[rows], atol=2e-5)
    # One shared exclusion list; k larger than what is left pads with -1 / inf.
    small = NeighborIndex(x[:4])
    found_idx, found_dist = small.search(x[0], 6, exclude=[0, 1])
    assert sorted(found_idx[0, :2].tolist()) == [2, 3]
    assert (found_idx[0, 2:] == -1).all() and np.isinf(found_dist[0, 2:]).all()


def test_graph_round_trip_and_truncate() -> None:
    x, _ = clustered_embeddings(100, dim=8)
    graph = build_knn_graph(x, n_neighbors=6)
    again = KnnGraph.from_arrays(graph.to_arrays(), graph.to_meta())
    np.testing.assert_array_equal(again.indices, graph.indices)
    assert again.method == graph.method and again.n_neighbors == 6
    short = graph.truncate(3)
    np.testing.assert_array_equal(short.indices, graph.indices[:, :3])
    with pytest.raises(ValueError, match="rebuild"):
        graph.truncate(7)


def test_invalid_arguments() -> None:
    x = np.zeros((5, 3))
    with pytest.raises(ValueError, match="metric"):
        build_knn_graph(x, metric="manhattan")
    with pytest.raises(ValueError, match="method"):
        build_knn_graph(x, method="annoy")
    with pytest.raises(ValueError, match="n_neighbors"):
        build_knn_graph(x, n_neighbors=0)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_the_three_rerank_paths_agree(metric: str, monkeypatch) -> None:
    """Re-ranking HNSW candidates in memory (compiled, in place), by passes over a reader's
    blocks (a set on disk) and from gathered copies gives the same graph, and a row subset of
    either kind works too."""
    import shoal.analysis.knn as knn
    from shoal.analysis.rows import RowSubset

    x, _ = clustered_embeddings(3_000, dim=300, n_clusters=12, seed=4)
    x[7] = 0.0
    monkeypatch.setattr(knn, "BLOCK_ROWS", 512)  # several blocks per pass
    monkeypatch.setattr(knn, "SCAN_QUERY_ROWS", 1_000)  # several passes
    in_memory = build_knn_graph(x, n_neighbors=10, metric=metric, method="hnsw")
    reader = StrictReader(x)
    scanned = build_knn_graph(reader, n_neighbors=10, metric=metric, method="hnsw")
    index = NeighborIndex(reader, metric=metric, method="hnsw")
    gathered = [index._hnsw_search(index.vectors_[a : a + 500], 11) for a in range(0, 3_000, 500)]
    gathered_dist = np.concatenate([d for _, d in gathered])
    for graph in (scanned,):
        # Sums in another order may swap neighbours whose distances tie to within float32.
        assert (graph.indices == in_memory.indices).mean() > 0.999
        np.testing.assert_allclose(graph.distances, in_memory.distances, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gathered_dist[:, 1:], in_memory.distances, rtol=1e-5, atol=1e-5)
    assert knn._rows_in_memory(x.astype(np.float16)) is None
    assert knn._rows_in_memory(reader) is None
    # Subsets (the sampled UMAP fit's own graph): of an array in place, of a reader by passes.
    rows = np.random.default_rng(1).choice(len(x), 1_200, replace=False)
    copied = build_knn_graph(x[rows], n_neighbors=10, metric=metric, method="hnsw")
    for source in (x, StrictReader(x)):
        subset = build_knn_graph(
            RowSubset(source, rows), n_neighbors=10, metric=metric, method="hnsw"
        )
        assert (subset.indices == copied.indices).mean() > 0.999
        np.testing.assert_allclose(subset.distances, copied.distances, rtol=1e-5, atol=1e-6)
