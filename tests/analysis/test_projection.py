from __future__ import annotations

import numpy as np
import pytest

from shoal.analysis.knn import build_knn_graph
from shoal.analysis.projection import (
    Projection,
    neighborhood_preservation,
    project,
    trustworthiness_score,
)
from tests.analysis.readers import StrictReader
from tests.analysis.synthetic import clustered_embeddings


@pytest.mark.slow
def test_trustworthiness_on_real_fashion_mnist(real: dict[str, np.ndarray]) -> None:
    x = real["fmnist"]
    graph = build_knn_graph(x, n_neighbors=15)
    result = project(x, graph=graph)
    assert result.method == "umap"
    assert result.coords.shape == (5000, 2) and result.coords.dtype == np.float32
    assert result.trustworthiness >= 0.9
    assert result.trustworthiness_sample_size == 5000 and not result.trustworthiness_sampled
    assert not result.transformed_mask.any()
    assert (
        0.0
        <= result.neighborhood_preservation.min()
        <= result.neighborhood_preservation.max()
        <= 1.0
    )


@pytest.mark.slow
def test_the_hnsw_index_axes_give_as_faithful_a_map(real: dict[str, np.ndarray]) -> None:
    """The workflow hands the projection the search index's PCA (128 axes of the normalised
    rows) instead of fitting 50 again: the map is as trustworthy as with its own fit."""
    from shoal.analysis.knn import NeighborIndex

    x = real["fmnist"]
    index = NeighborIndex(x, method="hnsw")
    arrays = index.to_arrays()
    assert arrays["pca_components"].shape == (128, x.shape[1])
    graph = build_knn_graph(x, n_neighbors=15, method="hnsw", index=index)
    own = project(x, graph=graph)
    given = project(x, graph=graph, pca_axes=(arrays["pca_mean"], arrays["pca_components"]))
    assert given.params["pca_fitted"] == "given" and "pca_fitted" not in own.params
    assert given.trustworthiness >= own.trustworthiness - 0.01
    assert given.trustworthiness >= 0.9


def test_small_projection_is_reproducible_and_faithful() -> None:
    x, _ = clustered_embeddings(600, dim=32, n_clusters=5, seed=0)
    graph = build_knn_graph(x, n_neighbors=15)
    first = project(x, graph=graph, random_state=3)
    second = project(x, graph=graph, random_state=3)
    np.testing.assert_array_equal(first.coords, second.coords)
    assert first.trustworthiness >= 0.85
    assert first.params["n_neighbors"] == 15 and first.params["graph_method"] == "exact"


def test_three_components() -> None:
    x, _ = clustered_embeddings(300, dim=16, seed=1)
    result = project(x, n_components=3)
    assert result.coords.shape == (300, 3)
    assert list(result.to_frame().columns[:4]) == ["sample_id", "x", "y", "z"]


def test_fit_on_sample_flags_every_transformed_point() -> None:
    x, clusters = clustered_embeddings(1500, dim=32, n_clusters=4, seed=2)
    result = project(x, max_fit_samples=600, random_state=0)
    assert result.method == "umap+transform"
    assert result.transformed_mask.sum() == 900
    assert np.isfinite(result.coords).all()
    # Transformed points land among their own cluster: their nearest fitted point in the map
    # belongs to the same cluster.
    fitted = np.flatnonzero(~result.transformed_mask)
    moved = np.flatnonzero(result.transformed_mask)
    gaps = np.linalg.norm(result.coords[moved, None] - result.coords[None, fitted], axis=2)
    nearest_fitted = fitted[gaps.argmin(axis=1)]
    assert (clusters[nearest_fitted] == clusters[moved]).mean() >= 0.95
    assert result.trustworthiness >= 0.8


def test_a_sampled_map_of_a_reader_in_small_blocks_and_chunks_is_as_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store-like reader, read 64 rows at a time (only the fitted sample is read for the
    layout), with the 900 other points placed 64 at a time: as faithful as the in-memory map
    in one block and one chunk (UMAP's layout is not reproducible across block sizes: PCA
    scores differ in the last bits)."""
    import shoal.analysis.projection as projection
    from shoal.analysis import blocks, knn
    from shoal.analysis import pca as pca_module

    x, clusters = clustered_embeddings(1500, dim=32, n_clusters=4, seed=2)
    graph = build_knn_graph(x, n_neighbors=15)
    maps = {"in memory": project(x, graph=graph, max_fit_samples=600)}
    for module in (blocks, knn, pca_module):
        monkeypatch.setattr(module, "BLOCK_ROWS", 64)
    monkeypatch.setattr(projection, "PLACE_CHUNK", 64)
    reader = StrictReader(x)
    maps["blocks"] = project(reader, graph=graph, max_fit_samples=600)
    assert reader.largest_read <= 64
    np.testing.assert_array_equal(
        maps["blocks"].transformed_mask, maps["in memory"].transformed_mask
    )
    for result in maps.values():
        moved = np.flatnonzero(result.transformed_mask)
        fitted = np.flatnonzero(~result.transformed_mask)
        gaps = np.linalg.norm(result.coords[moved, None] - result.coords[None, fitted], axis=2)
        assert (clusters[fitted[gaps.argmin(axis=1)]] == clusters[moved]).mean() >= 0.95
        assert result.params["seconds_place"] >= 0.0
    trust = {name: result.trustworthiness for name, result in maps.items()}
    assert abs(trust["blocks"] - trust["in memory"]) <= 0.02, trust


@pytest.mark.parametrize("n_samples", [2, 10, 20])
def test_tiny_sets(n_samples: int) -> None:
    x = np.random.default_rng(0).normal(size=(n_samples, 8)).astype(np.float32)
    result = project(x)
    assert result.coords.shape == (n_samples, 2)
    assert np.isfinite(result.coords).all()
    assert result.method == ("pca" if n_samples < 16 else "umap")


def test_neighborhood_preservation_oracle() -> None:
    x = np.random.default_rng(1).normal(size=(200, 2))
    graph = build_knn_graph(x, n_neighbors=5, metric="euclidean")
    np.testing.assert_array_equal(neighborhood_preservation(graph, x), np.ones(200))
    shuffled = x[np.random.default_rng(2).permutation(200)]
    assert neighborhood_preservation(graph, shuffled).mean() < 0.2


def test_neighborhood_preservation_in_blocks_equals_one_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shoal.analysis.projection as projection

    x, _ = clustered_embeddings(700, dim=16, seed=6)
    graph = build_knn_graph(x, n_neighbors=10)
    coords = x[:, :2] + np.random.default_rng(0).normal(scale=0.5, size=(700, 2))
    whole = neighborhood_preservation(graph, coords)
    monkeypatch.setattr(projection, "PRESERVATION_BLOCK", 64)
    np.testing.assert_array_equal(neighborhood_preservation(graph, coords), whole)
    assert 0.0 < whole.mean() < 1.0


def test_trustworthiness_sampled_above_limit() -> None:
    x, _ = clustered_embeddings(700, dim=8, seed=3)
    value, size = trustworthiness_score(x, x[:, :2], sample_size=300)
    assert size == 300 and 0.0 <= value <= 1.0


def test_round_trip() -> None:
    x, _ = clustered_embeddings(100, dim=8, seed=5)
    result = project(x)
    again = Projection.from_arrays(result.to_arrays(), result.to_meta())
    np.testing.assert_array_equal(again.coords, result.coords)
    assert again.trustworthiness == result.trustworthiness


@pytest.mark.slow
def test_tsne_and_pca_layouts_from_the_same_graph(real: dict[str, np.ndarray]) -> None:
    """t-SNE (openTSNE on the shared graph) keeps neighbourhoods at least as well as UMAP;
    PCA is the linear baseline both beat."""
    x = real["fmnist"][:1500]
    graph = build_knn_graph(x, n_neighbors=15)
    maps = {m: project(x, graph=graph, method=m) for m in ("umap", "tsne", "pca")}
    for method, result in maps.items():
        assert result.method == method and result.params["method"] == method
        assert result.coords.shape == (1500, 2) and np.isfinite(result.coords).all()
    assert maps["tsne"].trustworthiness >= maps["umap"].trustworthiness - 0.01
    assert maps["pca"].trustworthiness < min(
        maps["umap"].trustworthiness, maps["tsne"].trustworthiness
    )


def test_layout_choices_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    import shoal.analysis.projection as projection

    x, _ = clustered_embeddings(200, dim=16, seed=2)
    with pytest.raises(ValueError, match="choose one of umap, tsne, pca"):
        project(x, method="mds")
    monkeypatch.setattr(projection, "MAX_TSNE_SAMPLES", 100)
    with pytest.raises(ValueError, match="t-SNE maps up to 100 samples here, this set has 200"):
        project(x, method="tsne")
    assert project(x, method="pca").method == "pca"
    monkeypatch.undo()
    graph = build_knn_graph(x, n_neighbors=15)
    first, again = (project(x, graph=graph, method="tsne", random_state=1) for _ in range(2))
    np.testing.assert_allclose(first.coords, again.coords, atol=1e-3)  # reproducible


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_trustworthiness_equals_sklearns(metric: str) -> None:
    from sklearn.manifold import trustworthiness as sklearn_trustworthiness

    from shoal.analysis.projection import trustworthiness

    rng = np.random.default_rng(0)
    x, _ = clustered_embeddings(1_200, dim=40, n_clusters=6, seed=2)
    x = x * rng.uniform(0.5, 2.0, (len(x), 1))  # unequal norms: cosine differs from euclidean
    # A fair map and a random one (without tied map points, which either may order its way).
    for low in (x[:, :2] + rng.normal(size=(len(x), 2)) * 1e-3, rng.normal(size=(len(x), 2))):
        expected = sklearn_trustworthiness(x, low, n_neighbors=10, metric=metric)
        assert trustworthiness(x, low, n_neighbors=10, metric=metric) == pytest.approx(
            expected, abs=1e-6
        )


def test_parallel_layout_is_as_faithful_and_leaves_seeded_maps_reproducible() -> None:
    """The parallel kernel gives a map of the same quality; the serial one, compiled and cached
    under its own name, still gives the same map for the same seed afterwards."""
    from shoal.analysis import layout

    x, _ = clustered_embeddings(3_000, dim=32, n_clusters=6, seed=5)
    graph = build_knn_graph(x, n_neighbors=15)
    serial = project(x, graph=graph, random_state=1)
    parallel = project(x, graph=graph, random_state=1, parallel=True)
    again = project(x, graph=graph, random_state=1)
    np.testing.assert_array_equal(serial.coords, again.coords)
    assert parallel.params["parallel"] and not serial.params["parallel"]
    assert parallel.trustworthiness >= serial.trustworthiness - 0.01
    names = {
        layout._epoch_kernel(variant)._cache._cache_file._index_name for variant in (False, True)
    }
    assert len(names) == 2  # one cache entry per variant: they never load each other's code
