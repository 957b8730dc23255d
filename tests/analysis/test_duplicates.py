from __future__ import annotations

import numpy as np
import pytest

from shoal.analysis import duplicates
from shoal.analysis.blocks import l2_normalize
from shoal.analysis.duplicates import DuplicateResult, auto_threshold, find_duplicates
from shoal.analysis.knn import build_knn_graph
from tests.analysis.readers import StrictReader
from tests.analysis.synthetic import clustered_embeddings


def near_copy(vector: np.ndarray, distance: float, rng: np.random.Generator) -> np.ndarray:
    """A vector at about ``distance`` cosine distance from ``vector`` (same norm)."""
    unit = vector / np.linalg.norm(vector)
    noise = rng.normal(size=vector.shape)
    noise -= noise @ unit * unit
    noise /= np.linalg.norm(noise)
    angle = np.arccos(1.0 - distance)
    return (np.cos(angle) * unit + np.sin(angle) * noise) * np.linalg.norm(vector)


def all_pairs_within(x: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    unit = l2_normalize(x).astype(np.float64)
    distances = 1.0 - unit @ unit.T
    i, j = np.nonzero(np.triu(distances <= threshold, k=1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


@pytest.fixture(scope="module")
def planted(real: dict[str, np.ndarray]):
    """Fashion-MNIST train + test with planted copies: exact, near, a cross-split triple and a
    group of 21 (more members than the graph has neighbours)."""
    rng = np.random.default_rng(0)
    train, test = real["fmnist"], real["fmnist_test"]
    x = np.concatenate([train, test]).astype(np.float32)
    splits = np.array(["train"] * len(train) + ["test"] * len(test), dtype=object)
    extra, extra_splits, expected = [], [], []
    n = len(x)

    def add(vector: np.ndarray, split: str, twin_of: int) -> None:
        nonlocal n
        extra.append(vector.astype(np.float32))
        extra_splits.append(split)
        expected.append((twin_of, n))
        n += 1

    for row in range(10):  # exact copies of train rows, stored as train
        add(x[row], "train", row)
    for row in range(
        10, 20
    ):  # near copies (cosine 0.002-0.01) of train rows, stored as test: leaks
        add(near_copy(x[row], rng.uniform(0.002, 0.01), rng), "test", row)
    add(near_copy(x[100], 0.003, rng), "test", 100)  # a triple across splits
    add(near_copy(x[100], 0.004, rng), "val", 100)
    for _ in range(20):  # 21 near-identical copies of one image
        add(near_copy(x[200], 0.001, rng), "train", 200)
    data = np.concatenate([x, np.stack(extra)])
    return data, np.r_[splits, np.array(extra_splits, dtype=object)], expected


def test_planted_copies_match_the_all_pairs_oracle(planted) -> None:
    data, splits, expected = planted
    threshold = 0.012
    result = find_duplicates(data, threshold=threshold, splits=splits)
    found = set(map(tuple, result.pairs.tolist()))
    assert set(expected) <= found
    oracle = all_pairs_within(data, threshold)
    # Same pairs as the brute-force oracle, except float32 ties right at the threshold.
    unit = l2_normalize(data).astype(np.float64)
    borderline = {
        pair for pair in oracle ^ found if abs(1 - unit[pair[0]] @ unit[pair[1]] - threshold) < 1e-5
    }
    assert oracle ^ found == borderline
    # Exact distances, sorted.
    assert (np.diff(result.distances) >= 0).all()
    recomputed = 1 - np.einsum("ij,ij->i", unit[result.pairs[:, 0]], unit[result.pairs[:, 1]])
    np.testing.assert_allclose(result.distances, recomputed, atol=1e-6)


def test_groups_and_leakage(planted) -> None:
    data, splits, expected = planted
    result = find_duplicates(data, threshold=0.012, splits=splits)
    groups = result.groups()
    big = groups[0]
    assert len(big) == 21 and 200 in big
    # Every pair of the 21 is listed although the graph holds only 15 neighbours per sample.
    in_big = np.isin(result.pairs, big).all(axis=1)
    assert in_big.sum() == 21 * 20 // 2
    triple = groups[[i for i, g in enumerate(groups) if 100 in g][0]]
    assert len(triple) == 3
    leaks = set(map(tuple, result.leakage_pairs.tolist()))
    for twin_of, copy in expected:
        pair = (min(twin_of, copy), max(twin_of, copy))
        assert (pair in leaks) == (splits[twin_of] != splits[copy])
    assert result.cross_split.sum() == len(leaks)
    assert set(result.leaked_samples()) >= {10, 100}


def test_auto_threshold_finds_planted_copies_and_few_others(planted, real) -> None:
    data, splits, expected = planted
    result = find_duplicates(data, splits=splits)
    assert result.params["rule"].startswith("auto")
    assert 0.01 < result.threshold < 0.1
    found = set(map(tuple, result.pairs.tolist()))
    assert set(expected) <= found
    planted_rows = {row for pair in expected for row in pair}
    unplanted = [p for p in found if not set(p) <= planted_rows]
    assert len(unplanted) <= 0.005 * len(data)


def test_no_duplicates_in_clean_random_data_and_round_trip() -> None:
    x, _ = clustered_embeddings(500, dim=32, seed=1)
    result = find_duplicates(x)
    assert len(result.pairs) == 0 and result.n_groups == 0 and result.groups() == []
    x[7] = x[3]
    result = find_duplicates(x, splits=None)
    assert result.pairs.tolist() == [[3, 7]] and not result.cross_split.any()
    again = DuplicateResult.from_arrays(result.to_arrays(), result.to_meta())
    assert again.pairs.tolist() == [[3, 7]] and again.threshold == result.threshold
    frame = result.to_frame(sample_ids=np.array([f"id{i}" for i in range(500)]))
    assert frame.loc[0, "a"] == "id3" and frame.loc[0, "b"] == "id7"


def test_tiny_and_degenerate_sets() -> None:
    assert len(find_duplicates(np.ones((1, 4))).pairs) == 0
    same = find_duplicates(np.ones((5, 4)))
    assert same.n_groups == 1 and len(same.pairs) == 10
    graph = build_knn_graph(np.eye(3), n_neighbors=2)
    threshold, _ = auto_threshold(graph)
    assert threshold >= 0.0


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_verification_in_small_blocks_of_a_reader_equals_one_block_in_memory(
    planted, monkeypatch: pytest.MonkeyPatch, metric: str
) -> None:
    """Pairs verified 5 at a time (the group of 21 alone has 210), reading rows from the
    store-like reader, give the same pairs, distances and groups as one in-memory block."""
    data, splits, _ = planted
    graph = build_knn_graph(data, n_neighbors=15, metric=metric)
    # The copies keep their vector's norm: Euclidean distance = norm * sqrt(2 * cosine distance).
    norm = float(np.median(np.linalg.norm(data, axis=1)))
    threshold = 0.012 if metric == "cosine" else norm * np.sqrt(2 * 0.012)
    whole = find_duplicates(data, graph=graph, threshold=threshold, splits=splits)
    monkeypatch.setattr(duplicates, "PAIR_BLOCK_ELEMENTS", 10 * data.shape[1])
    reader = StrictReader(data)
    blocked = find_duplicates(reader, graph=graph, threshold=threshold, splits=splits)
    assert len(whole.pairs) >= 210 + 20
    assert reader.largest_read <= 10
    np.testing.assert_array_equal(blocked.pairs, whole.pairs)
    np.testing.assert_array_equal(blocked.distances, whole.distances)
    np.testing.assert_array_equal(blocked.group_labels, whole.group_labels)
    np.testing.assert_array_equal(blocked.cross_split, whole.cross_split)
