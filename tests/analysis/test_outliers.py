from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from shoal.analysis import blocks, outliers
from shoal.analysis.blocks import l2_normalize
from shoal.analysis.knn import build_knn_graph
from shoal.analysis.outliers import (
    SCORERS,
    OutlierResult,
    flag_threshold,
    knn_global_scores,
    register_scorer,
    score_outliers,
)
from shoal.registry import UnknownNameError
from tests.analysis.readers import StrictReader
from tests.analysis.synthetic import clustered_embeddings


def planted(
    inliers: np.ndarray, outliers: np.ndarray, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Inliers and outliers shuffled together, with the truth mask."""
    x = np.concatenate([inliers, outliers])
    truth = np.r_[np.zeros(len(inliers), bool), np.ones(len(outliers), bool)]
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order], truth[order]


def clumped_digits(
    real: dict[str, np.ndarray], *, n_clumps: int, clump_size: int, seed: int
) -> np.ndarray:
    """``n_clumps`` groups of ``clump_size`` digits of one class each (distinct classes first)."""
    rng = np.random.default_rng(seed)
    labels = real["digits_labels"]
    classes = rng.permutation(np.unique(labels))
    chosen = []
    for clump in range(n_clumps):
        label = classes[clump % len(classes)]
        pool = np.setdiff1d(
            np.flatnonzero(labels == label), np.concatenate(chosen) if chosen else []
        )
        chosen.append(rng.choice(pool, clump_size, replace=False))
    return real["digits"][np.concatenate(chosen)]


def test_photos_among_fashion_mnist_are_found(real: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(0)
    photos = real["photos"][rng.choice(len(real["photos"]), 50, replace=False)]  # 1% of 5,000
    x, truth = planted(real["fmnist"], photos, seed=0)
    result = score_outliers(x)
    assert result.method == "ensemble"
    assert roc_auc_score(truth, result.scores) >= 0.95
    # The rule is not a fixed quota: it flags most photos and few Fashion-MNIST images.
    assert result.flagged[truth].mean() >= 0.8
    assert result.flagged[~truth].mean() <= 0.02


def test_default_beats_cleanlab_on_clumped_digits(real: dict[str, np.ndarray]) -> None:
    from cleanlab.outlier import OutOfDistribution

    digits = clumped_digits(real, n_clumps=10, clump_size=5, seed=0)  # 50 = 1%, clumps of 5
    x, truth = planted(real["fmnist"], digits, seed=1)
    shoal_auroc = roc_auc_score(truth, score_outliers(x).scores)
    # cleanlab: higher score = more typical.
    cleanlab_scores = OutOfDistribution().fit_score(features=x, verbose=False)
    cleanlab_auroc = roc_auc_score(truth, -cleanlab_scores)
    print(f"clumped digits AUROC: shoal {shoal_auroc:.4f}, cleanlab {cleanlab_auroc:.4f}")
    assert shoal_auroc >= cleanlab_auroc


def test_lof_matches_sklearn_on_exact_graph() -> None:
    from sklearn.neighbors import LocalOutlierFactor

    x, _ = clustered_embeddings(600, dim=16, seed=2)
    graph = build_knn_graph(x, n_neighbors=10, metric="euclidean", method="exact")
    ours = score_outliers(x, graph=graph, method="lof").scores
    reference = -LocalOutlierFactor(n_neighbors=10).fit(x).negative_outlier_factor_
    np.testing.assert_allclose(ours, reference, rtol=1e-4)


def test_isolation_forest_range_and_detection() -> None:
    x, _ = clustered_embeddings(500, dim=32, seed=3)
    far = x[:10] + 8.0 * np.abs(np.random.default_rng(0).normal(size=(10, 32))).astype(np.float32)
    data, truth = planted(x, far, seed=3)
    result = score_outliers(data, method="isolation_forest")
    assert (result.scores > 0).all() and (result.scores <= 1).all()
    assert roc_auc_score(truth, result.scores) >= 0.9


@pytest.mark.parametrize("method", sorted(SCORERS))
def test_every_scorer_follows_the_contract(method: str) -> None:
    x, _ = clustered_embeddings(300, dim=16, seed=4)
    graph = build_knn_graph(x, n_neighbors=8)
    result = score_outliers(x, graph=graph, method=method)
    assert result.scores.shape == (300,) and result.scores.dtype == np.float32
    assert np.isfinite(result.scores).all()
    np.testing.assert_array_equal(result.flagged, result.scores > result.threshold)
    # Evidence rows are the graph's neighbours of the flagged samples, most anomalous first.
    np.testing.assert_array_equal(result.neighbor_indices, graph.indices[result.flagged_indices])
    assert (np.diff(result.scores[result.flagged_indices]) <= 0).all()
    again = OutlierResult.from_arrays(result.to_arrays(), result.to_meta())
    np.testing.assert_array_equal(again.scores, result.scores)
    assert again.threshold == result.threshold


def test_clean_gaussian_data_flags_almost_nothing() -> None:
    x = np.random.default_rng(5).normal(size=(3000, 16)).astype(np.float32)
    result = score_outliers(x)
    assert result.flagged.mean() < 0.01


def test_local_score_is_blind_to_clumps_up_to_half_k() -> None:
    # Ten tight clumps of 6 near-identical far points: clump-mates are near, everything else far.
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    centres = rng.normal(scale=30, size=(10, 16))
    clumps = np.repeat(centres, 6, axis=0) + 0.01 * rng.normal(size=(60, 16))
    data, truth = planted(x, clumps.astype(np.float32), seed=6)
    graph = build_knn_graph(data, n_neighbors=15, metric="euclidean")
    far_half = score_outliers(data, graph=graph, method="knn_local")
    assert roc_auc_score(truth, far_half.scores) == 1.0
    assert far_half.flagged[truth].all()


def test_default_finds_a_foreign_group_larger_than_k() -> None:
    # 60 points from one far-away blob: more than k = 15, so every local score calls them normal.
    rng = np.random.default_rng(7)
    inliers = rng.normal(size=(3000, 16)).astype(np.float32)
    group = (rng.normal(size=(60, 16)) * 0.3 + 12.0).astype(np.float32)
    data, truth = planted(inliers, group, seed=7)
    graph = build_knn_graph(data, n_neighbors=15, metric="euclidean")
    local = score_outliers(data, graph=graph, method="knn_local")
    default = score_outliers(data, graph=graph)
    assert roc_auc_score(truth, local.scores) < 0.5
    assert roc_auc_score(truth, default.scores) >= 0.99
    assert default.flagged[truth].mean() >= 0.9 and default.flagged[~truth].mean() <= 0.01


def test_flag_threshold_edge_cases() -> None:
    threshold, rule = flag_threshold(np.ones(50))
    assert threshold == np.inf
    threshold, _ = flag_threshold(np.r_[np.zeros(40), np.ones(10)])
    assert np.isfinite(threshold)
    threshold, rule = flag_threshold(np.linspace(0, 1, 101), log_scale=False, z=3.5)
    assert threshold == pytest.approx(0.5 + 3.5 * 1.482602218505602 * 0.25)


def test_registry_and_errors() -> None:
    with pytest.raises(UnknownNameError, match="unknown outlier scorer 'nope'; registered: .*knn"):
        score_outliers(np.zeros((5, 2)), method="nope")
    with pytest.raises(ValueError, match="already registered"):
        register_scorer("knn", score_range="x")(lambda graph, embeddings, **_: None)
    # The same code again (a module re-imported, as Streamlit does) is no clash.
    spec = SCORERS["knn_mean"]
    assert register_scorer("knn_mean", score_range=spec.score_range)(spec.function) is spec.function
    assert SCORERS["knn_mean"] == spec
    with pytest.raises(ValueError, match="embeddings"):
        score_outliers(graph=build_knn_graph(np.eye(5)), method="isolation_forest")


def test_user_threshold_and_tiny_sets() -> None:
    x, _ = clustered_embeddings(50, dim=8, seed=7)
    result = score_outliers(x, method="knn_local", threshold=0.0)
    assert result.flagged.all() and result.params["rule"] == "user"
    for n_samples in (1, 2, 3):
        tiny = score_outliers(np.random.default_rng(0).normal(size=(n_samples, 4)))
        assert tiny.scores.shape == (n_samples,)
        assert not tiny.flagged.any()


def test_default_rule_record_and_the_fixed_rule_on_request() -> None:
    x, _ = clustered_embeddings(400, dim=16, seed=8)
    default = score_outliers(x)
    assert default.params["fdr"] == 0.05 and default.params["rule"].startswith("false-discovery")
    # The threshold is on the score's scale even when nothing crosses it.
    assert np.isfinite(default.threshold) and default.threshold == pytest.approx(
        default.params["centre"] + default.params["z"] * default.params["robust_sd"]
    )
    fixed = score_outliers(x, z_threshold=3.5)
    assert fixed.threshold == 3.5 and fixed.params["rule"] == "robust z-score > z"
    local = score_outliers(x, method="knn_local", z_threshold=3.5)
    assert local.params["rule"].startswith("median + z * robust_sd")
    stricter = score_outliers(x, method="knn_local", fdr=0.001)
    assert stricter.threshold > score_outliers(x, method="knn_local").threshold


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_global_in_blocks_of_a_reader_equals_all_pairs_in_memory(
    monkeypatch: pytest.MonkeyPatch, metric: str
) -> None:
    """700 rows in blocks of 64, read from the store-like reader (never whole), give the
    definition computed from the full distance matrix: each row's mean distance to its 5
    nearest members of each of 10 random 256-row subsamples, itself excluded."""
    x, _ = clustered_embeddings(700, dim=24, seed=4)
    graph = build_knn_graph(x, n_neighbors=10, metric=metric)
    rng = np.random.default_rng(1)
    members = [np.sort(rng.choice(len(x), 256, replace=False)) for _ in range(10)]
    if metric == "cosine":
        unit = l2_normalize(x).astype(np.float64)
        all_pairs = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    else:
        wide = x.astype(np.float64)
        all_pairs = np.linalg.norm(wide[:, None, :] - wide[None, :, :], axis=2)
    expected = np.zeros(len(x))
    for rows in members:
        distances = all_pairs[:, rows]
        distances[rows, np.arange(len(rows))] = np.inf
        expected += np.sort(distances, axis=1)[:, :5].mean(axis=1) / len(members)
    monkeypatch.setattr(outliers, "BLOCK_ROWS", 64)
    monkeypatch.setattr(blocks, "BLOCK_ROWS", 64)
    reader = StrictReader(x)
    scores = knn_global_scores(graph, reader, random_state=1)
    np.testing.assert_allclose(scores, expected, atol=2e-5)
    assert reader.largest_read <= 64
    np.testing.assert_array_equal(
        score_outliers(reader, graph=graph, random_state=1).flagged,
        score_outliers(x, graph=graph, random_state=1).flagged,
    )
