from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from benchmarks.real_data import flip_labels as flip_labels_with
from shoal.analysis.knn import build_knn_graph
from shoal.analysis.mislabels import MislabelResult, encode_labels, score_mislabels
from tests.analysis.synthetic import clustered_embeddings


def flip_labels(labels: np.ndarray, share: float, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return flip_labels_with(labels, share, np.random.default_rng(seed))


def test_flipped_fashion_mnist_labels_are_found(real: dict[str, np.ndarray]) -> None:
    clean = real["fmnist_labels"]
    noisy, flipped = flip_labels(clean, 0.05, seed=0)
    graph = build_knn_graph(real["fmnist"], n_neighbors=15)
    result = score_mislabels(noisy, graph=graph)
    auroc = roc_auc_score(flipped, result.scores)
    print(f"label-flip AUROC {auroc:.4f}, flagged {result.n_flagged}")
    assert auroc >= 0.9
    # Most flips are flagged, and the suggestion restores the true label for most of those.
    caught = result.flagged & flipped
    assert caught.sum() >= 0.6 * flipped.sum()
    restored = result.suggested_labels[caught] == clean[caught].astype(str)
    assert restored.mean() >= 0.8
    # Evidence: the flagged samples' neighbours and their labels.
    np.testing.assert_array_equal(result.neighbor_indices, graph.indices[result.flagged_indices])
    np.testing.assert_array_equal(
        result.neighbor_labels, noisy[result.neighbor_indices].astype(str)
    )


def test_scores_range_and_unlabelled_samples() -> None:
    x, clusters = clustered_embeddings(400, dim=16, n_clusters=4, seed=1)
    labels = np.array([f"class-{c}" for c in clusters], dtype=object)
    labels[:10] = None
    labels[10:20] = ""
    result = score_mislabels(labels, embeddings=x)
    assert np.isnan(result.scores[:20]).all() and not result.flagged[:20].any()
    rest = result.scores[20:]
    assert (rest >= 0).all() and (rest < 1).all()
    assert set(result.classes) == {f"class-{c}" for c in range(4)}
    again = MislabelResult.from_arrays(result.to_arrays(), result.to_meta())
    np.testing.assert_array_equal(again.suggested_labels, result.suggested_labels)


def test_encode_labels_mixed_types() -> None:
    codes, classes = encode_labels([3, "3", None, np.nan, "cat", ""])
    assert classes.tolist() == ["3", "cat"]
    assert codes.tolist() == [0, 0, -1, -1, 1, -1]


def test_encode_labels_matches_a_per_label_lookup_on_many_labels() -> None:
    """The vectorised encoding (no Python object per label) agrees with the plain definition:
    str() of each label, sorted classes, -1 for None, NaN, pandas NA and ""."""
    rng = np.random.default_rng(0)
    pool = np.array([None, np.nan, pd.NA, "", "cat", "dog", 3, "3", 2.5, True, "é"], dtype=object)
    labels = pool[rng.integers(len(pool), size=2000)]
    codes, classes = encode_labels(labels)
    missing = [value is None or value is pd.NA or value != value or value == "" for value in labels]
    texts = [str(value) for value, gone in zip(labels, missing, strict=True) if not gone]
    assert classes.tolist() == sorted(set(texts))
    lookup = {label: code for code, label in enumerate(classes)}
    expected = [-1 if gone else lookup[str(v)] for v, gone in zip(labels, missing, strict=True)]
    assert codes.tolist() == expected and codes.dtype == np.int64


def test_neighbours_without_labels_give_the_prior() -> None:
    x = np.random.default_rng(2).normal(size=(30, 4))
    labels = np.array(["a"] * 10 + [None] * 20, dtype=object)
    result = score_mislabels(labels, embeddings=x, n_neighbors=3)
    assert not result.flagged.any()


def test_mismatched_length() -> None:
    graph = build_knn_graph(np.eye(6), n_neighbors=2)
    with pytest.raises(ValueError, match="labels"):
        score_mislabels(["a"] * 5, graph=graph)


def test_flag_needs_a_labelled_neighbourhood_without_the_label() -> None:
    # Two tight groups; row 0 sits in group "a" but is labelled "b".
    rng = np.random.default_rng(3)
    x = np.r_[rng.normal(size=(12, 4)), rng.normal(size=(12, 4)) + 20.0]
    labels = np.array(["a"] * 12 + ["b"] * 12, dtype=object)
    labels[0] = "b"
    graph = build_knn_graph(x, n_neighbors=6, metric="euclidean", method="exact")
    result = score_mislabels(labels, graph=graph)
    assert result.flagged_indices.tolist() == [0] and result.suggested_labels[0] == "a"
    assert result.params["flag_rule"] == "no_support"
    assert result.params["min_labelled_neighbors"] == 3
    # Mostly unlabelled neighbours: "none of them agrees" is no evidence.
    sparse = labels.copy()
    sparse[1:10] = None
    assert not score_mislabels(sparse, graph=graph).flagged[0]


def test_rules_and_errors() -> None:
    x, clusters = clustered_embeddings(300, dim=16, n_clusters=3, seed=4)
    noisy, _ = flip_labels(clusters, 0.1, seed=4)
    graph = build_knn_graph(x, n_neighbors=10)
    default = score_mislabels(noisy, graph=graph)
    liberal = score_mislabels(noisy, graph=graph, rule="confident_joint")
    assert liberal.params["flag_rule"] == "confident_joint"
    np.testing.assert_array_equal(default.scores, liberal.scores)
    with pytest.raises(ValueError, match="unknown mislabel rule"):
        score_mislabels(noisy, graph=graph, rule="nope")
