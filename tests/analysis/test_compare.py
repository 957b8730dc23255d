"""shoal.analysis.two_sample and shoal.analysis.compare on small synthetic data: exactness of the tests, the
result record and the per-cluster table. Real-embedding checks live in test_compare_real.py; the
filters and the dataset workflow in tests/shoal/workflows/test_compare.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shoal.analysis import two_sample
from shoal.analysis.compare import ClusterShift, ComparisonResult, cluster_shifts, compare
from shoal.analysis.two_sample import (
    COMPARISON_TESTS,
    PermutationStatistic,
    available_tests,
    mmd_test,
    permutation_labels,
    permutation_p_value,
    register_test,
    two_sample_test,
)
from shoal.registry import UnknownNameError
from tests.analysis.synthetic import shifted_gaussians

# --------------------------------------------------------------------------- permutation machinery


def test_permutation_labels_keep_the_observed_column_and_the_counts():
    is_current = np.r_[np.zeros(7, bool), np.ones(3, bool)]
    labels = permutation_labels(is_current, 50, np.random.default_rng(0))
    assert labels.shape == (10, 51)
    np.testing.assert_array_equal(labels[:, 0], is_current)
    np.testing.assert_array_equal(labels.sum(axis=0), 3)
    assert len({tuple(c) for c in labels.T}) > 40  # the shuffles really differ


def test_permutation_p_value_counts_ties_and_adds_one():
    assert permutation_p_value(np.array([2.0, 1.0, 2.0, 3.0])) == pytest.approx(3 / 4)
    assert permutation_p_value(np.array([9.0, 1.0, 2.0, 3.0])) == pytest.approx(1 / 4)


@pytest.mark.parametrize("method", ["mmd", "classifier"])
def test_p_values_are_uniform_under_exchangeability(method):
    # Exact permutation tests: P(p <= a) <= a for every a. 150 small null draws; a calibrated
    # test exceeds 0.05 + 3 standard errors (0.103) with probability below 0.2 %.
    p_values = []
    for seed in range(150):
        reference, current = shifted_gaussians(40, 25, seed=seed, dim=8)
        p_values.append(
            two_sample_test(
                reference, current, method=method, n_permutations=99, random_state=seed
            ).p_value
        )
    p_values = np.array(p_values)
    assert np.mean(p_values <= 0.05) <= 0.103
    assert np.mean(p_values <= 0.5) <= 0.5 + 3 * np.sqrt(0.25 / 150)
    assert p_values.min() >= 1 / 100


@pytest.mark.parametrize("method", ["mmd", "classifier"])
def test_a_clear_shift_gives_the_smallest_p_value(method):
    reference, current = shifted_gaussians(200, 150, shift=1.0)
    outcome = two_sample_test(reference, current, method=method, n_permutations=199)
    assert outcome.p_value == pytest.approx(1 / 200)
    assert outcome.effect_size > 0
    assert outcome.null_statistics.shape == (199,)


def test_mmd_statistic_matches_a_direct_unbiased_estimate():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(30, 5))
    is_current = np.r_[np.zeros(18, bool), np.ones(12, bool)]
    outcome = mmd_test(features, permutation_labels(is_current, 5, rng), rng=rng)
    squared = ((features[:, None, :] - features[None, :, :]) ** 2).sum(-1)
    bandwidth = np.median(squared[~np.eye(30, dtype=bool)])
    kernel = np.exp(-squared / bandwidth)
    x, y = ~is_current, is_current
    k_xx, k_yy, k_xy = kernel[np.ix_(x, x)], kernel[np.ix_(y, y)], kernel[np.ix_(x, y)]
    expected = (k_xx.sum() - 18) / (18 * 17) + (k_yy.sum() - 12) / (12 * 11) - 2 * k_xy.mean()
    # The bandwidth's median is taken in float32 (memory), hence not 1e-12.
    assert outcome.values[0] == pytest.approx(expected, rel=1e-6)
    assert outcome.effect_size == outcome.values[0]


def test_classifier_auc_matches_a_refitted_out_of_fold_oracle():
    # The closed form must equal fitting ridge per fold and scoring the held-out fold.
    from sklearn.linear_model import Ridge
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    features = rng.normal(size=(60, 4))
    features[30:, 0] += 0.8
    is_current = np.r_[np.zeros(30, bool), np.ones(30, bool)]
    labels = permutation_labels(is_current, 3, np.random.default_rng(0))
    outcome = two_sample.classifier_test(features, labels, rng=np.random.default_rng(9))
    # The same folds: the test draws them first from the generator it is given.
    folds = np.random.default_rng(9).permutation(np.arange(60) % two_sample.CLASSIFIER_FOLDS)
    centred = features - features.mean(0)
    mean_variance = (centred**2).sum() / (60 * 4)
    scores = np.empty(60)
    for fold in range(two_sample.CLASSIFIER_FOLDS):
        test_rows = folds == fold
        train_rows = ~test_rows
        penalty = two_sample.CLASSIFIER_SHRINKAGE * mean_variance * train_rows.sum()
        model = Ridge(alpha=penalty).fit(features[train_rows], is_current[train_rows].astype(float))
        scores[test_rows] = model.predict(features[test_rows])
    assert outcome.values[0] == pytest.approx(roc_auc_score(is_current, scores), abs=1e-9)
    assert outcome.values.shape == (4,)


def test_registry_accepts_a_new_test_and_refuses_a_clash():
    @register_test("test-registry-demo")
    def demo(features, labels, *, rng):
        stats = np.abs(features[:, 0] @ (labels - labels.mean(0)))
        return PermutationStatistic(stats, float(stats[0]), "abs")

    try:
        assert "test-registry-demo" in available_tests()
        reference, current = shifted_gaussians(50, 50, shift=2.0)
        result = compare(reference, current, method="test-registry-demo", n_permutations=49)
        assert result.method == "test-registry-demo"
        with pytest.raises(ValueError, match="already registered"):
            register_test("mmd")(demo)
        # The same code again (a module re-imported, as Streamlit does) is no clash.
        assert register_test("test-registry-demo")(demo) is demo

        @register_test("test-registry-broken")
        def broken(features, labels, *, rng):
            return PermutationStatistic(np.zeros(3), 0.0, "none")

        with pytest.raises(ValueError, match="returned \\(3,\\) values for 50 label columns"):
            compare(reference, current, method="test-registry-broken", n_permutations=49)
    finally:
        COMPARISON_TESTS.remove("test-registry-demo")
        COMPARISON_TESTS.remove("test-registry-broken")


def test_unknown_method_and_bad_shapes_raise_clear_errors():
    reference, current = shifted_gaussians(20, 20)
    with pytest.raises(
        UnknownNameError, match="unknown comparison method 'nope'; registered: .*mmd"
    ):
        compare(reference, current, method="nope")
    with pytest.raises(ValueError, match="dim 32 but current has dim 31"):
        compare(reference, current[:, :31])
    with pytest.raises(ValueError, match="at least 2 samples"):
        compare(reference, current[:1])


# --------------------------------------------------------------------------- sizes


def test_large_unequal_sets_are_subsampled_and_say_so():
    reference, current = shifted_gaussians(30_000, 200, dim=16)
    outcome = two_sample_test(reference, current, max_samples=2000, n_permutations=99)
    assert (outcome.n_used_reference, outcome.n_used_current) == (1800, 200)
    assert outcome.n_used == 2000


def test_compare_reports_sizes_and_scores_every_current_sample():
    reference, current = shifted_gaussians(300, 120, shift=0.0, dim=16)
    result = compare(reference, current, n_permutations=99, max_samples=200)
    assert (result.n_reference, result.n_current) == (300, 120)
    assert (result.n_used_reference, result.n_used_current, result.n_used) == (100, 100, 200)
    assert "a random subsample of 300 vs 120" in result.verdict()
    assert (
        result.novelty.shape
        == result.novelty_p_values.shape
        == result.novelty_flags.shape
        == (120,)
    )
    assert result.reference_clusters.shape == (300,) and result.current_clusters.shape == (120,)
    assert ((result.novelty >= 0) & (result.novelty <= 1)).all()
    assert ((result.novelty_p_values > 0) & (result.novelty_p_values <= 1)).all()


def test_same_seed_same_result_and_float16_memmap_input(tmp_path):
    reference, current = shifted_gaussians(150, 100, shift=0.3, dim=16)
    path = tmp_path / "reference.npy"
    np.save(path, reference.astype(np.float16))
    mapped = np.load(path, mmap_mode="r")
    first = compare(mapped, current, n_permutations=99, random_state=5)
    second = compare(mapped, current, n_permutations=99, random_state=5)
    assert first.p_value == second.p_value and first.statistic == second.statistic
    np.testing.assert_array_equal(first.novelty, second.novelty)
    np.testing.assert_array_equal(first.current_clusters, second.current_clusters)


def test_row_subsets_of_a_reader_in_small_blocks_equal_in_memory_sides(monkeypatch):
    """Both sides as views of one store-like reader (as the dataset workflow passes them), read
    and clustered 64 rows at a time, give the in-memory sides' result exactly."""
    from shoal.analysis import blocks
    from shoal.analysis import compare as compare_module
    from shoal.analysis.rows import RowSubset
    from tests.analysis.readers import StrictReader

    reference, current = shifted_gaussians(700, 300, shift=0.4, dim=16)
    pooled = np.vstack([reference, current])
    order = np.random.default_rng(0).permutation(len(pooled))
    position = np.argsort(order)  # pooled row i is stored at row position[i]
    stored = StrictReader(pooled[order])
    whole = compare(reference, current, n_permutations=99, n_clusters=5, random_state=2)
    monkeypatch.setattr(compare_module, "BLOCK_ROWS", 64)
    monkeypatch.setattr(blocks, "BLOCK_ROWS", 64)
    views = compare(
        RowSubset(stored, position[:700]),
        RowSubset(stored, position[700:]),
        n_permutations=99,
        n_clusters=5,
        random_state=2,
    )
    assert stored.largest_read <= 64
    assert (views.p_value, views.statistic) == (whole.p_value, whole.statistic)
    np.testing.assert_array_equal(views.reference_clusters, whole.reference_clusters)
    np.testing.assert_array_equal(views.current_clusters, whole.current_clusters)
    np.testing.assert_array_equal(views.nearest_reference, whole.nearest_reference)
    np.testing.assert_allclose(views.novelty_distance, whole.novelty_distance, rtol=1e-6)
    assert [c.to_dict() for c in views.clusters] == [c.to_dict() for c in whole.clusters]


# --------------------------------------------------------------------------- novelty


def test_novelty_ranks_planted_far_points_first():
    reference, current = shifted_gaussians(400, 200, dim=16)
    rng = np.random.default_rng(1)
    far = rng.normal(size=(10, 16)).astype(np.float32) * 3 - 3.0  # the opposite side of the origin
    result = compare(reference, np.vstack([current, far]), n_permutations=49)
    assert result.novelty_flags[-10:].all()
    assert result.novelty[-10:].min() == 1.0
    assert result.novelty_p_values[-10:].max() == pytest.approx(1 / 401)
    # Drawn like the reference: about novelty_alpha (1 %) flagged; 200 draws, allow up to 5 %.
    assert result.novelty_flags[:200].mean() <= 0.05


def test_a_current_sample_that_duplicates_a_reference_sample_is_not_novel():
    reference, current = shifted_gaussians(200, 50, dim=16)
    result = compare(reference, np.vstack([current, reference[:3]]), n_permutations=49)
    assert (result.nearest_reference[-3:] == [0, 1, 2]).all()
    assert result.novelty_distance[-3:].max() < np.median(result.novelty_distance)


# --------------------------------------------------------------------------- clusters


def test_cluster_shifts_against_scipy_fisher_and_bh():
    from scipy.stats import false_discovery_control, fisher_exact

    reference = np.repeat([0, 1, 2, 3], [100, 100, 100, 100])
    current = np.repeat([0, 1, 2, 3], [160, 90, 80, 70])
    shifts = cluster_shifts(reference, current, alpha=0.05)
    expected_p = [
        fisher_exact([[c, r], [400 - c, 400 - r]]).pvalue
        for r, c in zip([100] * 4, [160, 90, 80, 70], strict=True)
    ]
    np.testing.assert_allclose([s.p_value for s in shifts], expected_p)
    np.testing.assert_allclose([s.q_value for s in shifts], false_discovery_control(expected_p))
    first = shifts[0]
    assert (first.direction, first.n_current, first.n_reference, first.significant) == (
        "over",
        160,
        100,
        True,
    )
    assert first.ratio == pytest.approx((160.5 / 400) / (100.5 / 400))
    assert [s.direction for s in shifts[1:]] == ["under"] * 3


def test_cluster_present_on_one_side_only_has_a_finite_ratio():
    shifts = cluster_shifts(np.array([0] * 40), np.array([0] * 30 + [1] * 10))
    lonely = shifts[1]
    assert (lonely.n_reference, lonely.n_current, lonely.direction) == (0, 10, "over")
    assert np.isfinite(lonely.ratio) and lonely.ratio > 10


def test_a_planted_mode_is_found_by_the_cluster_table():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 24)) * 4 + 6
    reference = np.vstack([c + rng.normal(size=(100, 24)) for c in centres])
    counts = [250, 70, 70, 70, 70, 70]  # mode 0 over-represented in current
    current = np.vstack(
        [c + rng.normal(size=(n, 24)) for c, n in zip(centres, counts, strict=True)]
    )
    result = compare(reference, current, n_permutations=99, n_clusters=6)
    over = [c for c in result.shifted_clusters if c.direction == "over"]
    assert len(over) == 1
    assert over[0].n_current == 250 and over[0].n_reference == 100
    assert result.significant


# --------------------------------------------------------------------------- the result record


def test_result_to_dict_is_json_and_round_trips_through_an_artefact():
    reference, current = shifted_gaussians(120, 80, shift=0.5, dim=16)
    result = compare(reference, current, n_permutations=49)
    payload = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert payload["n_current"] == 80 and len(payload["novelty"]) == 80
    assert payload["verdict"].startswith(("The current set differs", "No difference"))
    assert isinstance(payload["clusters"][0], dict)

    arrays, meta = result.to_arrays(), result.to_meta()
    json.dumps(meta, allow_nan=False)
    again = ComparisonResult.from_arrays(arrays, meta)
    assert again.p_value == result.p_value and again.clusters == result.clusters
    np.testing.assert_array_equal(again.novelty_flags, result.novelty_flags)
    assert isinstance(again.clusters[0], ClusterShift)


def test_frames_have_one_row_per_cluster_and_per_current_sample():
    reference, current = shifted_gaussians(120, 80, dim=16)
    result = compare(reference, current, n_permutations=49, n_clusters=4)
    clusters = result.clusters_frame()
    assert len(clusters) == 4 and {"ratio", "q_value", "direction"} <= set(clusters.columns)
    assert clusters["q_value"].is_monotonic_increasing
    novelty = result.novelty_frame()
    assert len(novelty) == 80 and "sample_id" not in novelty.columns


def test_verdict_states_the_decision_the_numbers_and_the_where():
    reference, current = shifted_gaussians(200, 200, shift=1.5, dim=16)
    shifted = compare(reference, current, n_permutations=99)
    text = shifted.verdict()
    assert text.startswith("The current set differs from the reference (MMD permutation test")
    assert "p = 0.01 <= alpha = 0.05" in text and "MMD² = " in text
    assert "200 reference vs 200 current samples" in text
    assert "of 200 current samples" in text

    reference, current = shifted_gaussians(200, 200, shift=0.0, dim=16, seed=3)
    same = compare(reference, current, n_permutations=99, method="classifier")
    assert not same.significant
    assert same.verdict().startswith("No difference between the current set and the reference")
    assert "domain-classifier permutation test" in same.verdict() and "AUC - 0.5" in same.verdict()
