"""Leak-free splits: every group of duplicates sits in one split.

A *group* is a connected set of samples joined by exact duplicates (equal content hashes, e.g. the
SHA-256 of each file's bytes) and near-duplicate pairs (``find_duplicates(...).pairs`` from
:mod:`shoal.analysis.duplicates`), transitively: a ~ b and b ~ c put a, b and c in one group (the
connected components of the union of both edge sets). A group *leaks* when its members sit in
more than one split: a model evaluated on a test image whose copy it trained on has seen it.

The cleaned assignment moves every member of a leaking group into one split, chosen among the
splits the group already touches (no group is moved anywhere it had no member), by ``policy``:

* ``"priority"`` (default): the first of the splits in ``priority`` order, e.g. ``["train",
  "val", "test"]`` moves each leaking group into train, so the held-out sets keep only images
  train has never seen (they lose the leaked copies).
* ``"majority"``: the split holding most of the group (ties to the priority order): the fewest
  samples move.
* ``"balanced"``: the leaking groups, largest first, each into the split it touches that has
  fallen furthest below its original size (relative to it; ties to the priority order): split
  sizes stay as close to the original proportions as whole groups allow.

Only members of leaking groups ever move; samples without a split (None, NaN) never move and never
leak. ``priority=None`` orders the splits by size, largest first (train, then the held-out sets,
for the usual proportions); splits not named in ``priority`` come after it, largest first.

Example:
    >>> result = leak_free_splits(
    ...     ["train", "test", "test", "val"], hashes=["a", "a", "b", "c"], priority=["train", "test"]
    ... )
    >>> result.splits.tolist(), result.n_moved
    (['train', 'train', 'test', 'val'], 1)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from shoal.analysis.results import ArrayRecord, ids_or_rows, jsonable

if TYPE_CHECKING:
    import pandas as pd

POLICIES = ("priority", "majority", "balanced")


@dataclass(frozen=True)
class SplitMove:
    """Samples moved from one split to another by the cleaning, and the groups they belong to."""

    source: str
    target: str
    n_samples: int
    n_groups: int


@dataclass(frozen=True)
class LeakFreeSplits(ArrayRecord):
    """Duplicate groups, the leaks among them, and a split assignment without leaks.

    split_names: every split, in the priority order used. original_codes / codes: (n_samples,)
    int64 index into ``split_names`` before and after cleaning, -1 for no split (``splits`` and
    ``original_splits`` give the names). group_labels: (n_samples,) int64 duplicate group,
    -1 for samples without a duplicate; group 0 is the largest. leaking_groups:
    (n_leaking,) int64 groups that touched more than one split, largest first; leak_counts:
    (n_leaking, n_splits) int64 their members per split before cleaning; targets: (n_leaking,)
    int64 the split each went to. moves: samples per (source, target) pair.
    """

    split_names: tuple[str, ...]
    original_codes: np.ndarray
    codes: np.ndarray
    group_labels: np.ndarray
    leaking_groups: np.ndarray
    leak_counts: np.ndarray
    targets: np.ndarray
    moves: tuple[SplitMove, ...]
    policy: str
    params: dict[str, Any] = field(default_factory=dict)

    nested_records: ClassVar[Mapping[str, type]] = {"moves": SplitMove}

    @property
    def splits(self) -> np.ndarray:
        """(n_samples,) object: the cleaned split of each sample, None where it has none."""
        return _names(self.codes, self.split_names)

    @property
    def original_splits(self) -> np.ndarray:
        return _names(self.original_codes, self.split_names)

    @property
    def moved(self) -> np.ndarray:
        """(n_samples,) bool: the samples whose split changed."""
        return np.asarray(self.codes != self.original_codes)

    @property
    def n_moved(self) -> int:
        return int(self.moved.sum())

    @property
    def n_groups(self) -> int:
        return int(self.group_labels.max() + 1) if self.group_labels.size else 0

    @property
    def n_leaking_groups(self) -> int:
        return int(len(self.leaking_groups))

    @property
    def n_leaking_samples(self) -> int:
        """Samples (with a split) in a group that touched more than one split."""
        return int(self.leak_counts.sum())

    def leaks_frame(self, *, sample_ids: np.ndarray | None = None) -> pd.DataFrame:
        """One row per leaking group, largest first: group, size, n_<split> per split before
        cleaning, target, n_moved, samples (ids or rows of its members)."""
        import pandas as pd

        names = ids_or_rows(sample_ids, len(self.codes))
        members = _members(self.group_labels, self.leaking_groups)
        columns: dict[str, Any] = {
            "group": self.leaking_groups,
            "size": [len(m) for m in members],
        }
        for column, split in enumerate(self.split_names):
            columns[f"n_{split}"] = self.leak_counts[:, column]
        columns["target"] = [self.split_names[t] for t in self.targets]
        moved = self.moved  # once: it compares every sample's codes
        columns["n_moved"] = [int(moved[m].sum()) for m in members]
        columns["samples"] = [names[m].tolist() for m in members]
        return pd.DataFrame(columns)

    def moves_frame(self) -> pd.DataFrame:
        """One row per (source, target) pair: n_samples, n_groups."""
        import pandas as pd

        return pd.DataFrame(
            [vars(move) for move in self.moves],
            columns=["source", "target", "n_samples", "n_groups"],
        )

    def proportions_frame(self) -> pd.DataFrame:
        """One row per split: n_before, n_after and the shares of samples with a split."""
        import pandas as pd

        n_splits = len(self.split_names)
        before = np.bincount(self.original_codes[self.original_codes >= 0], minlength=n_splits)
        after = np.bincount(self.codes[self.codes >= 0], minlength=n_splits)
        total = max(int(before.sum()), 1)
        return pd.DataFrame(
            {
                "split": list(self.split_names),
                "n_before": before,
                "n_after": after,
                "share_before": before / total,
                "share_after": after / total,
            }
        )

    def to_dict(self, *, sample_ids: np.ndarray | None = None) -> dict[str, Any]:
        return jsonable(
            {
                **self.to_meta(),
                "n_groups": self.n_groups,
                "n_leaking_groups": self.n_leaking_groups,
                "n_leaking_samples": self.n_leaking_samples,
                "n_moved": self.n_moved,
                "proportions": self.proportions_frame().to_dict(orient="records"),
                "leaks": self.leaks_frame(sample_ids=sample_ids).to_dict(orient="records"),
            }
        )


def duplicate_groups(
    n_samples: int,
    *,
    hashes: Sequence[Any] | np.ndarray | None = None,
    pairs: np.ndarray | None = None,
) -> np.ndarray:
    """(n_samples,) int64 group of each sample, -1 for samples without a duplicate; group 0 is
    the largest (ties: the group with the smallest row first).

    hashes: (n_samples,) content hashes; equal hashes are exact duplicates, missing ones (None,
    NaN, "") match nothing. pairs: (n_pairs, 2) rows of near-duplicate pairs, e.g.
    ``find_duplicates(embeddings).pairs``. Groups are the connected components of both edge
    sets together.

    Example:
        >>> duplicate_groups(5, hashes=["x", "y", "x", None, None], pairs=np.array([[1, 2]])).tolist()
        [0, 0, 0, -1, -1]
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = [_hash_edges(hashes, n_samples)] if hashes is not None else []
    if pairs is not None:
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        if len(pairs) and (pairs.min() < 0 or pairs.max() >= n_samples):
            raise ValueError(f"pairs hold rows outside 0..{n_samples - 1}")
        edges.append(pairs)
    all_edges = np.concatenate(edges) if edges else np.empty((0, 2), dtype=np.int64)
    all_edges = all_edges[all_edges[:, 0] != all_edges[:, 1]]
    labels = np.full(n_samples, -1, dtype=np.int64)
    if len(all_edges) == 0:
        return labels
    adjacency = coo_matrix(
        (np.ones(len(all_edges), dtype=np.int8), (all_edges[:, 0], all_edges[:, 1])),
        shape=(n_samples, n_samples),
    )
    _, component = connected_components(adjacency, directed=False)
    sizes = np.bincount(component)
    in_group = sizes[component] > 1
    members = np.flatnonzero(in_group)
    group_ids, first_member = np.unique(component[members], return_index=True)
    order = np.lexsort((members[first_member], -sizes[group_ids]))
    renumber = np.full(len(sizes), -1, dtype=np.int64)
    renumber[group_ids[order]] = np.arange(len(order))
    labels[members] = renumber[component[members]]
    return labels


def leak_free_splits(
    splits: Sequence[Any] | np.ndarray,
    *,
    hashes: Sequence[Any] | np.ndarray | None = None,
    pairs: np.ndarray | None = None,
    policy: str = "priority",
    priority: Sequence[str] | None = None,
) -> LeakFreeSplits:
    """The leaks (duplicate groups spanning splits) and a cleaned split assignment.

    splits: (n_samples,) split name of each sample (None / NaN: none). hashes, pairs: the
    duplicates, as for :func:`duplicate_groups`. policy, priority: where each leaking group goes
    (module docstring).

    Example:
        >>> result = leak_free_splits(["train", "test", "train"], pairs=np.array([[0, 1]]))
        >>> result.n_leaking_groups, result.splits.tolist(), result.moves_frame().n_samples.tolist()
        (1, ['train', 'train', 'train'], [1])
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    original_codes, split_names = _split_codes(splits, priority)
    n_samples, n_splits = len(original_codes), len(split_names)
    if hashes is not None and len(hashes) != n_samples:
        raise ValueError(f"hashes has {len(hashes)} entries for {n_samples} samples")
    group_labels = duplicate_groups(n_samples, hashes=hashes, pairs=pairs)
    n_groups = int(group_labels.max() + 1) if n_samples else 0

    with_split = (group_labels >= 0) & (original_codes >= 0)
    counts = np.zeros((n_groups, n_splits), dtype=np.int64)
    np.add.at(counts, (group_labels[with_split], original_codes[with_split]), 1)
    leaking = np.flatnonzero((counts > 0).sum(axis=1) > 1)
    leak_counts = counts[leaking]
    targets = _targets(policy, leak_counts, original_codes, group_labels, leaking, n_splits)

    codes = original_codes.copy()
    # One extra slot for "no group" (-1 indexes it).
    target_of_group = np.full(n_groups + 1, -1, dtype=np.int64)
    target_of_group[leaking] = targets
    target = target_of_group[group_labels]
    members = with_split & (target >= 0)
    codes[members] = target[members]
    moves = _moves(original_codes, codes, group_labels, split_names)
    return LeakFreeSplits(
        split_names=split_names,
        original_codes=original_codes,
        codes=codes,
        group_labels=group_labels,
        leaking_groups=leaking.astype(np.int64),
        leak_counts=leak_counts,
        targets=targets,
        moves=moves,
        policy=policy,
        params={
            "priority_given": list(priority) if priority is not None else None,
            "has_hashes": hashes is not None,
            "n_pairs": 0 if pairs is None else int(np.asarray(pairs).reshape(-1, 2).shape[0]),
        },
    )


# --------------------------------------------------------------------------- helpers


def _targets(
    policy: str,
    leak_counts: np.ndarray,
    original_codes: np.ndarray,
    group_labels: np.ndarray,
    leaking: np.ndarray,
    n_splits: int,
) -> np.ndarray:
    """Target split code per leaking group; split codes are already in priority order, so the
    first maximum (or first touched column) is the priority choice."""
    if len(leaking) == 0:
        return np.empty(0, dtype=np.int64)
    touched = leak_counts > 0
    if policy == "priority":
        return np.argmax(touched, axis=1).astype(np.int64)
    if policy == "majority":
        return np.argmax(leak_counts, axis=1).astype(np.int64)
    # balanced: fix everything outside the leaking groups, then place groups largest first.
    original = np.bincount(original_codes[original_codes >= 0], minlength=n_splits)
    in_leak = np.isin(group_labels, leaking) & (original_codes >= 0)
    current = original - np.bincount(original_codes[in_leak], minlength=n_splits)
    targets = np.empty(len(leaking), dtype=np.int64)
    sizes = leak_counts.sum(axis=1)
    for index in np.lexsort((leaking, -sizes)):
        deficit = (original - current) / np.maximum(original, 1)
        candidates = np.flatnonzero(touched[index])
        target = int(candidates[np.argmax(deficit[candidates])])
        targets[index] = target
        current[target] += sizes[index]
    return targets


def _moves(
    original_codes: np.ndarray,
    codes: np.ndarray,
    group_labels: np.ndarray,
    split_names: tuple[str, ...],
) -> tuple[SplitMove, ...]:
    moved = np.flatnonzero(codes != original_codes)
    if len(moved) == 0:
        return ()
    n_splits = len(split_names)
    pair_code = original_codes[moved] * n_splits + codes[moved]
    moves = []
    for code in np.unique(pair_code):
        rows = moved[pair_code == code]
        source, target = divmod(int(code), n_splits)
        moves.append(
            SplitMove(
                source=split_names[source],
                target=split_names[target],
                n_samples=len(rows),
                n_groups=len(np.unique(group_labels[rows])),
            )
        )
    return tuple(moves)


def _split_codes(
    splits: Sequence[Any] | np.ndarray, priority: Sequence[str] | None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """(codes, names): split names in priority order and each sample's index into them."""
    import pandas as pd

    series = pd.Series(np.asarray(splits, dtype=object))
    present = series.notna()
    names = series[present].astype(str)
    sizes = names.value_counts()
    by_size = sorted(sizes.index, key=lambda name: (-sizes[name], name))
    given = [str(name) for name in (priority or []) if str(name) in sizes.index]
    order = tuple(dict.fromkeys(given + by_size))
    codes = np.full(len(series), -1, dtype=np.int64)
    lookup = {name: code for code, name in enumerate(order)}
    codes[present.to_numpy()] = names.map(lookup).to_numpy(dtype=np.int64)
    return codes, order


def _hash_edges(hashes: Sequence[Any] | np.ndarray, n_samples: int) -> np.ndarray:
    """Edges from every sample to the first sample with the same (non-missing) hash."""
    import pandas as pd

    if len(hashes) != n_samples:
        raise ValueError(f"hashes has {len(hashes)} entries for {n_samples} samples")
    series = pd.Series(np.asarray(hashes, dtype=object))
    series = series.where(series.notna() & (series.astype(str) != ""), None)
    codes, _ = pd.factorize(series)
    rows = np.flatnonzero(codes >= 0)
    if len(rows) == 0:
        return np.empty((0, 2), dtype=np.int64)
    # Rows ascend, so each hash's first occurrence is its smallest row.
    unique_codes, first = np.unique(codes[rows], return_index=True)
    first_row = np.full(int(codes.max()) + 1, -1, dtype=np.int64)
    first_row[unique_codes] = rows[first]
    return np.stack([rows, first_row[codes[rows]]], axis=1).astype(np.int64)


def _members(group_labels: np.ndarray, groups: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(group_labels, kind="stable")
    sorted_labels = group_labels[order]
    return [
        order[np.searchsorted(sorted_labels, g) : np.searchsorted(sorted_labels, g, side="right")]
        for g in groups
    ]


def _names(codes: np.ndarray, split_names: tuple[str, ...]) -> np.ndarray:
    names = np.array([*split_names, None], dtype=object)
    return names[np.where(np.asarray(codes) >= 0, codes, len(split_names))]
