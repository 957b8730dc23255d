"""shoal.analysis.compare and shoal.analysis.two_sample on REAL embeddings (tests/fixtures/real_embeddings.npz:
EfficientNet-Lite0 features of Fashion-MNIST, 500 per class, plus foreign photos).

The null splits and class-prior shifts are defined in benchmarks/real_data.py, which
benchmarks/bench_compare.py draws from too.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.real_data import null_split, prior_shift_rows
from shoal.analysis.compare import compare
from shoal.analysis.two_sample import two_sample_test


def _null_rejection_rate(
    embeddings: np.ndarray,
    *,
    n_splits: int,
    n_reference: int,
    n_current: int,
    method: str,
    seed: int,
    n_permutations: int = 200,
    max_samples: int = 5000,
) -> float:
    rng = np.random.default_rng(seed)
    rejected = 0
    for split in range(n_splits):
        reference, current = null_split(embeddings, n_reference, n_current, rng)
        outcome = two_sample_test(
            reference,
            current,
            method=method,
            n_permutations=n_permutations,
            max_samples=max_samples,
            random_state=seed * 1000 + split,
        )
        rejected += outcome.p_value <= 0.05
    return rejected / n_splits


def _shift_detection_rate(
    embeddings: np.ndarray, labels: np.ndarray, *, n_draws: int, n: int, method: str, seed: int
) -> float:
    rng = np.random.default_rng(seed)
    detected = 0
    for draw in range(n_draws):
        reference_rows, current_rows = prior_shift_rows(labels, n, draw % 10, rng)
        outcome = two_sample_test(
            embeddings[reference_rows],
            embeddings[current_rows],
            method=method,
            n_permutations=200,
            random_state=seed * 1000 + draw,
        )
        detected += outcome.p_value <= 0.05
    return detected / n_draws


# 40 splits of a test whose true rate is 0.05: 6 or more rejections (> 0.125) has probability
# 1.6 %; the slow test's 200 splits exceed 16 (0.08) with probability 2.7 %. Seeds are fixed.
# 99 permutations: p <= 0.05 means at most 4 of 99 relabellings reach the observed statistic.
@pytest.mark.parametrize(("n_reference", "n_current"), [(500, 500), (100, 1500)])
def test_default_test_is_calibrated_on_random_splits(real, n_reference, n_current):
    rate = _null_rejection_rate(
        real["fmnist"],
        n_splits=40,
        n_reference=n_reference,
        n_current=n_current,
        method="auto",
        seed=1,
        n_permutations=99,
    )
    assert rate <= 0.125


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "n_reference", "n_current"),
    [("mmd", 1000, 1000), ("classifier", 500, 500), ("mmd", 200, 4800)],
)
def test_calibrated_over_200_splits(real, method, n_reference, n_current):
    # 200 vs 4800 runs on a subsample of 200 + 1800 (max_samples=2000): unequal sizes and
    # subsampling together.
    rate = _null_rejection_rate(
        real["fmnist"],
        n_splits=200,
        n_reference=n_reference,
        n_current=n_current,
        method=method,
        seed=2,
        max_samples=2000,
    )
    assert rate <= 0.08


def test_default_test_detects_a_10_point_class_prior_shift(real):
    rate = _shift_detection_rate(
        real["fmnist"], real["fmnist_labels"], n_draws=20, n=1000, method="auto", seed=3
    )
    assert rate >= 0.9


@pytest.mark.slow
def test_detects_a_10_point_class_prior_shift_in_100_draws(real):
    rate = _shift_detection_rate(
        real["fmnist"], real["fmnist_labels"], n_draws=100, n=1000, method="auto", seed=4
    )
    assert rate >= 0.9


def test_novelty_ranks_foreign_photos_above_fashion_mnist(real):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    reference, current = null_split(real["fmnist"], 1000, 1000, rng)
    photos = real["photos"]
    result = compare(reference, np.vstack([current, photos]), n_permutations=200)
    is_photo = np.r_[np.zeros(len(current), bool), np.ones(len(photos), bool)]
    assert roc_auc_score(is_photo, result.novelty) >= 0.95
    # Fashion-MNIST drawn like the reference: about novelty_alpha (1 %) flagged.
    assert result.novelty_flags[~is_photo].mean() <= 0.03
    assert result.novelty_flags[is_photo].mean() >= 0.5
    assert result.significant


def test_cluster_table_names_the_over_represented_class(real):
    # One shifted draw per class. The per-cluster test must find an over-represented cluster in
    # most draws, and every cluster it calls over-represented must be enriched in the shifted
    # class (at least twice its pooled share of about 15 %), not another class.
    embeddings, labels = real["fmnist"], real["fmnist_labels"]
    rng = np.random.default_rng(6)
    draws_with_a_flag, flagged_members, flagged_shifted = 0, 0, 0
    for shifted_class in range(10):
        reference_rows, current_rows = prior_shift_rows(labels, 1000, shifted_class, rng)
        result = compare(embeddings[reference_rows], embeddings[current_rows], n_permutations=99)
        pooled_labels = np.r_[labels[reference_rows], labels[current_rows]]
        pooled_clusters = np.r_[result.reference_clusters, result.current_clusters]
        base_share = np.mean(pooled_labels == shifted_class)
        over = [c for c in result.shifted_clusters if c.direction == "over"]
        draws_with_a_flag += bool(over)
        for cluster in over:
            members = pooled_labels[pooled_clusters == cluster.cluster]
            assert np.mean(members == shifted_class) >= 2 * base_share, (shifted_class, cluster)
            assert cluster.ratio > 1.2
            flagged_members += len(members)
            flagged_shifted += int(np.sum(members == shifted_class))
    assert draws_with_a_flag >= 7
    assert flagged_shifted / flagged_members >= 0.5


@pytest.mark.slow
def test_large_reference_uses_approximate_search_and_stays_calibrated(real):
    # 25 000 reference samples (above the exact-search limit) made by resampling the real
    # vectors with small noise; the current set is drawn the same way, so about 1 % is flagged.
    embeddings = real["fmnist"]
    rng = np.random.default_rng(8)
    noise = 0.05 * float(embeddings.std())

    def draw(n: int) -> np.ndarray:
        rows = rng.integers(len(embeddings), size=n)
        return (embeddings[rows] + rng.normal(scale=noise, size=(n, embeddings.shape[1]))).astype(
            np.float16
        )

    result = compare(draw(25_000), draw(2_000), n_permutations=200)
    assert result.params["novelty_search"] == "hnsw"
    assert (result.n_used_reference, result.n_used_current) == (3000, 2000)
    assert result.novelty_flags.mean() <= 0.03
    assert len(result.clusters) == 30  # clip(min(3000, 2000) // 20, 2, 30)
