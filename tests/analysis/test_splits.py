"""shoal.analysis.splits: duplicate groups from byte-identical content and from near-duplicate pairs of
REAL embeddings (planted copies across splits), the leaks, and the cleaned assignment."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.analysis.duplicates import find_duplicates
from shoal.analysis.splits import LeakFreeSplits, duplicate_groups, leak_free_splits

SPLITS = np.array(["train", "val", "test"], dtype=object)


def spanning_groups(result: LeakFreeSplits, codes: np.ndarray) -> int:
    """Groups whose members (with a split) sit in more than one split under ``codes``."""
    spanning = 0
    for group in range(result.n_groups):
        members = codes[(result.group_labels == group) & (codes >= 0)]
        spanning += len(np.unique(members)) > 1
    return spanning


def check_only_leaks_move(result: LeakFreeSplits) -> None:
    assert spanning_groups(result, result.codes) == 0
    leaking_members = np.isin(result.group_labels, result.leaking_groups)
    assert not result.moved[~leaking_members].any()
    # Each leaking group landed in a split it already touched.
    for group, target in zip(result.leaking_groups, result.targets, strict=True):
        touched = np.unique(result.original_codes[result.group_labels == group])
        assert target in touched


# --------------------------------------------------------------------------- exact content


@pytest.fixture(scope="module")
def files() -> tuple[list[bytes], np.ndarray, dict[str, list[int]]]:
    """300 random 'files' in a 70/15/15 split, with byte-identical copies planted: two copies
    of a test file in train, a val file copied into test, a train file copied into val and
    test (a triple), and copies inside one split (no leak)."""
    rng = np.random.default_rng(0)
    contents = [rng.bytes(256) for _ in range(300)]
    splits = rng.choice(SPLITS, size=300, p=[0.7, 0.15, 0.15])
    train = np.flatnonzero(splits == "train")
    val = np.flatnonzero(splits == "val")
    test = np.flatnonzero(splits == "test")
    planted: dict[str, list[int]] = {}

    def copy(row: int, split: str, name: str) -> None:
        contents.append(contents[row])
        planted.setdefault(name, [row]).append(len(contents) - 1)
        nonlocal splits
        splits = np.append(splits, split)

    copy(int(test[0]), "train", "test-in-train")
    copy(int(test[0]), "train", "test-in-train")
    copy(int(val[0]), "test", "val-in-test")
    copy(int(train[0]), "val", "triple")
    copy(int(train[0]), "test", "triple")
    copy(int(train[1]), "train", "inside-train")
    return contents, splits.astype(object), planted


def test_byte_identical_copies_across_splits_are_found_and_cleaned(files):
    contents, splits, planted = files
    hashes = [hashlib.sha256(content).hexdigest() for content in contents]
    result = leak_free_splits(splits, hashes=hashes, priority=["train", "val", "test"])

    assert result.split_names == ("train", "val", "test")
    assert result.n_groups == 4 and result.n_leaking_groups == 3
    leaking = {frozenset(np.flatnonzero(result.group_labels == g)) for g in result.leaking_groups}
    expected = {frozenset(planted[name]) for name in ("test-in-train", "val-in-test", "triple")}
    assert leaking == expected
    check_only_leaks_move(result)
    # Priority moves every leaking group to the first split it touches: train, train, val.
    assert result.n_moved == 1 + 2 + 1
    moves = result.moves_frame().set_index(["source", "target"])
    assert moves["n_samples"].to_dict() == {
        ("test", "train"): 2,  # one from test-in-train, one from the triple
        ("test", "val"): 1,  # val-in-test never touched train: val comes next
        ("val", "train"): 1,
    }
    assert moves.loc[("test", "train"), "n_groups"] == 2
    leaks = result.leaks_frame()
    triple = leaks[leaks["n_val"] == 1].iloc[0]
    assert triple[["size", "n_train", "n_test", "target", "n_moved"]].tolist() == [
        3,
        1,
        1,
        "train",
        2,
    ]

    # Majority: test-in-train stays in train (2 of 3 there); the 1-1 tie of val-in-test and
    # the 1-1-1 triple go by the priority order, here train, test, val.
    majority = leak_free_splits(
        splits, hashes=hashes, policy="majority", priority=["train", "test", "val"]
    )
    check_only_leaks_move(majority)
    targets = {
        frozenset(np.flatnonzero(majority.group_labels == group)): majority.split_names[target]
        for group, target in zip(majority.leaking_groups, majority.targets, strict=True)
    }
    assert targets == {
        frozenset(planted["test-in-train"]): "train",
        frozenset(planted["val-in-test"]): "test",
        frozenset(planted["triple"]): "train",
    }


def test_groups_join_exact_and_near_edges_transitively():
    hashes = np.array(["h0", "h1", "h0", None, "", "h9", "h1"], dtype=object)
    pairs = np.array([[2, 3], [5, 5]])
    labels = duplicate_groups(7, hashes=hashes, pairs=pairs)
    # {0, 2, 3} (hash + pair), {1, 6} (hash); "" and None match nothing; a self pair is no edge.
    assert labels.tolist() == [0, 1, 0, 0, -1, -1, 1]
    assert duplicate_groups(3).tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="outside"):
        duplicate_groups(3, pairs=np.array([[0, 3]]))


# --------------------------------------------------------------------------- real embeddings


@pytest.fixture(scope="module")
def planted_leaks(real: dict[str, np.ndarray]):
    """The 5,000 real Fashion-MNIST vectors in a seeded 80/10/10 split, plus planted copies
    with tiny noise (cosine ~1e-3) in another split: 15 test vectors copied into train, 5 val
    vectors into test, and one train vector into both val and test."""
    rng = np.random.default_rng(1)
    x = real["fmnist"].astype(np.float32)
    splits = rng.choice(SPLITS, size=len(x), p=[0.8, 0.1, 0.1]).astype(object)
    sources = {
        "test": rng.choice(np.flatnonzero(splits == "test"), 15, replace=False),
        "val": rng.choice(np.flatnonzero(splits == "val"), 5, replace=False),
        "train": rng.choice(np.flatnonzero(splits == "train"), 1),
    }
    destinations = {"test": ["train"], "val": ["test"], "train": ["val", "test"]}
    extra, extra_splits, planted = [], [], []
    for source_split, rows in sources.items():
        for row in rows:
            group = [int(row)]
            for target in destinations[source_split]:
                noise = rng.normal(size=x.shape[1]).astype(np.float32)
                extra.append(x[row] + 0.03 * x[row].std() * noise)
                extra_splits.append(target)
                group.append(len(x) + len(extra) - 1)
            planted.append(group)
    data = np.concatenate([x, np.stack(extra)])
    return data, np.r_[splits, np.array(extra_splits, dtype=object)], planted


def test_leaks_planted_in_real_embeddings_are_cleaned(planted_leaks):
    data, splits, planted = planted_leaks
    duplicates = find_duplicates(data, splits=splits)
    # Exact duplicates by content hash too (here: the vectors' bytes).
    hashes = [hashlib.sha256(row.tobytes()).hexdigest() for row in data]
    result = leak_free_splits(splits, hashes=hashes, pairs=duplicates.pairs)

    leaking_rows = set(np.flatnonzero(np.isin(result.group_labels, result.leaking_groups)))
    for group in planted:
        assert set(group) <= leaking_rows
        assert len(np.unique(result.group_labels[group])) == 1
    # Every leak the duplicates kernel reports is inside a leaking group.
    assert set(duplicates.leaked_samples().tolist()) <= leaking_rows
    check_only_leaks_move(result)
    assert result.split_names[0] == "train"  # the largest split comes first by default
    # Each planted group goes to the first split it touches in the default priority (train,
    # then the held-out sets by size): train when it touched train.
    for group in planted:
        touched = set(splits[group])
        first = next(name for name in result.split_names if name in touched)
        assert set(result.splits[group]) == {first}
        assert ("train" in touched) == (first == "train")
    shares = result.proportions_frame().set_index("split")
    assert (shares["share_after"] - shares["share_before"]).abs().max() < 0.01

    balanced = leak_free_splits(splits, hashes=hashes, pairs=duplicates.pairs, policy="balanced")
    check_only_leaks_move(balanced)
    before = balanced.proportions_frame()
    drift = (before["share_after"] - before["share_before"]).abs().sum()
    assert drift <= (shares["share_after"] - shares["share_before"]).abs().sum()

    back = LeakFreeSplits.from_arrays(result.to_arrays(), result.to_meta())
    np.testing.assert_array_equal(back.splits, result.splits)
    assert back.moves == result.moves
    assert result.to_dict()["n_moved"] == result.n_moved


# --------------------------------------------------------------------------- invariants


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n_samples=st.integers(1, 40),
    policy=st.sampled_from(["priority", "majority", "balanced"]),
)
def test_cleaning_invariants(data, n_samples, policy):
    splits = data.draw(
        st.lists(
            st.sampled_from(["train", "val", "test", None]), min_size=n_samples, max_size=n_samples
        )
    )
    pairs = data.draw(
        st.lists(
            st.tuples(st.integers(0, n_samples - 1), st.integers(0, n_samples - 1)), max_size=30
        )
    )
    hashes = data.draw(
        st.lists(st.sampled_from(["a", "b", "c", None]), min_size=n_samples, max_size=n_samples)
    )
    pair_array = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    result = leak_free_splits(splits, hashes=hashes, pairs=pair_array, policy=policy)
    check_only_leaks_move(result)
    # Samples without a split keep none; the fewest samples move under "majority".
    assert (result.codes[result.original_codes < 0] == -1).all()
    fewest = leak_free_splits(splits, hashes=hashes, pairs=pair_array, policy="majority")
    assert fewest.n_moved <= result.n_moved
    assert sum(move.n_samples for move in result.moves) == result.n_moved


def test_bad_arguments():
    with pytest.raises(ValueError, match="policy"):
        leak_free_splits(["train"], policy="drop")
    with pytest.raises(ValueError, match="hashes"):
        leak_free_splits(["train", "test"], hashes=["a"])
    empty = leak_free_splits([])
    assert empty.n_groups == 0 and empty.n_moved == 0 and empty.moves_frame().empty
