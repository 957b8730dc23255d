"""Near-duplicate pairs and groups, and duplicates that leak across splits.

Default threshold (``threshold=None``): a pair is a near-duplicate when its distance is
anomalously small for this data set, by the same robust rule the outlier flags use, on the low
side: the log nearest-neighbour distances of all samples have median m and robust SD s
(1.4826 · MAD), and the threshold is exp(m - 3.5 s). Scale-free, so it works for any model and
metric, and it follows the data's density. On real EfficientNet-Lite0 embeddings it comes out
near 0.04 (cosine) for 5,000 Fashion-MNIST images, whose closest distinct pair sits at 0.035, and
near 0.23 for 100 diverse photos, where re-encoded (JPEG 40-70), rescaled, 5%-cropped or
brightened copies of real photos land at 0.005-0.2. A float ``threshold`` overrides it.

Candidates come from the shared kNN graph (every edge within the threshold); each candidate's
distance is then recomputed exactly in float64 from the vectors, and groups are the connected
components of the verified pairs. Inside a group of at most ``MAX_GROUP_FOR_ALL_PAIRS`` members
every pair is checked exactly, so a group with more members than the graph has neighbours still
lists all its pairs.

A pair *leaks* when its two samples sit in different splits (e.g. a test image whose near-copy is
in train): a model evaluated on that test image has seen it.

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(50, 8)); x[1] = x[0]
    >>> result = find_duplicates(x, threshold=0.01, splits=["train"] * 25 + ["test"] * 25)
    >>> result.pairs.tolist(), result.cross_split.tolist()
    ([[0, 1]], [False])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from shoal.analysis.knn import KnnGraph, build_knn_graph
from shoal.analysis.results import (
    ArrayRecord,
    ids_or_rows,
    jsonable,
    log_with_floor,
    robust_threshold,
)

#: Robust z below which a nearest-neighbour distance counts as a near-duplicate (the outlier
#: flag's Iglewicz & Hoaglin cut-off, applied to the low side).
DEFAULT_Z = 3.5
#: Groups up to this size get every pair checked exactly (size² distance evaluations).
MAX_GROUP_FOR_ALL_PAIRS = 256
#: Vector entries (float64) read per block of pairs when distances are verified: 32 MB.
PAIR_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class DuplicateResult(ArrayRecord):
    """Verified near-duplicate pairs and their groups.

    pairs: (n_pairs, 2) int64 rows ``i < j``, closest first. distances: (n_pairs,) float32 exact
    distances in the graph's metric (cosine: 0 = identical direction, threshold and below = near
    duplicate). group_labels: (n_samples,) int64 group number, -1 for samples without a
    duplicate; group 0 is the largest. cross_split: (n_pairs,) bool, members in different splits.
    """

    pairs: np.ndarray
    distances: np.ndarray
    group_labels: np.ndarray
    cross_split: np.ndarray
    threshold: float
    metric: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_groups(self) -> int:
        return int(self.group_labels.max() + 1) if self.group_labels.size else 0

    def groups(self) -> list[np.ndarray]:
        """Row numbers of each group, largest group first."""
        order = np.argsort(self.group_labels, kind="stable")
        labels = self.group_labels[order]
        start = np.searchsorted(labels, 0)
        bounds = np.flatnonzero(np.diff(labels[start:])) + 1
        return np.split(order[start:], bounds) if start < len(order) else []

    @property
    def leakage_pairs(self) -> np.ndarray:
        """(n_leaks, 2) the pairs whose members are in different splits."""
        return self.pairs[self.cross_split]

    def leaked_samples(self) -> np.ndarray:
        """Rows with a near-duplicate in another split (both sides of each leaking pair)."""
        return np.unique(self.leakage_pairs.ravel())

    def to_frame(self, *, sample_ids: np.ndarray | None = None) -> pd.DataFrame:
        """One row per pair: a, b (sample ids or rows), distance, cross_split, group."""
        names = ids_or_rows(sample_ids, len(self.group_labels))
        return pd.DataFrame(
            {
                "a": names[self.pairs[:, 0]],
                "b": names[self.pairs[:, 1]],
                "distance": self.distances,
                "cross_split": self.cross_split,
                "group": self.group_labels[self.pairs[:, 0]],
            }
        )

    def to_dict(self, *, sample_ids: np.ndarray | None = None) -> dict[str, Any]:
        names = ids_or_rows(sample_ids, len(self.group_labels))
        return jsonable(
            {
                **self.to_meta(),
                "n_pairs": len(self.pairs),
                "n_groups": self.n_groups,
                "n_leaking_pairs": int(self.cross_split.sum()),
                "pairs": [
                    {"a": names[i], "b": names[j], "distance": d, "cross_split": c}
                    for (i, j), d, c in zip(
                        self.pairs, self.distances, self.cross_split, strict=True
                    )
                ],
                "groups": [names[group] for group in self.groups()],
            }
        )


def find_duplicates(
    embeddings: np.ndarray,
    *,
    graph: KnnGraph | None = None,
    threshold: float | None = None,
    z: float = DEFAULT_Z,
    splits: Any = None,
    metric: str = "cosine",
    n_neighbors: int = 15,
    random_state: int = 0,
) -> DuplicateResult:
    """Near-duplicate pairs (distance <= threshold), groups and cross-split leaks.

    embeddings: (n_samples, dim), used for exact verification (rows are read, never all pairs).
    graph: the shared kNN graph (built if None). threshold: a distance, or None for the
    data-relative default (module docstring). splits: (n_samples,) split names or None;
    missing values count as "no split" and never leak.
    """
    n_samples = len(embeddings)
    if graph is None:
        graph = build_knn_graph(
            embeddings, n_neighbors=n_neighbors, metric=metric, random_state=random_state
        )
    metric = graph.metric
    threshold_rule: dict[str, Any] = {"rule": "user"}
    if threshold is None:
        threshold, threshold_rule = auto_threshold(graph, z=z)
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    split_codes = _split_codes(splits, n_samples)

    # Candidates: graph edges within the threshold, plus float32 slack so verification decides.
    slack = 1e-5
    rows, cols = np.nonzero(graph.distances <= threshold + slack)
    first, second = rows.astype(np.int64), graph.indices[rows, cols]
    keep = first != second
    pairs = np.stack([np.minimum(first, second), np.maximum(first, second)], axis=1)[keep]
    pairs = np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)
    distances = _exact_distances(embeddings, pairs, metric)
    verified = distances <= threshold
    pairs, distances = pairs[verified], distances[verified]

    group_labels = _components(pairs, n_samples)
    pairs, distances = _complete_small_groups(
        embeddings, pairs, distances, group_labels, threshold, metric
    )
    order = np.lexsort((pairs[:, 1], pairs[:, 0], distances)) if len(pairs) else np.empty(0, int)
    pairs, distances = pairs[order], distances[order]
    cross = (
        (split_codes[pairs[:, 0]] >= 0)
        & (split_codes[pairs[:, 1]] >= 0)
        & (split_codes[pairs[:, 0]] != split_codes[pairs[:, 1]])
        if len(pairs)
        else np.zeros(0, dtype=bool)
    )
    return DuplicateResult(
        pairs=pairs.astype(np.int64).reshape(-1, 2),
        distances=distances.astype(np.float32),
        group_labels=group_labels,
        cross_split=cross,
        threshold=float(threshold),
        metric=metric,
        params={
            "n_neighbors": graph.n_neighbors,
            "graph_method": graph.method,
            "has_splits": splits is not None,
            **threshold_rule,
        },
    )


def auto_threshold(graph: KnnGraph, *, z: float = DEFAULT_Z) -> tuple[float, dict[str, Any]]:
    """Data-relative near-duplicate distance: exp(median - z · robust SD) of log NN distances."""
    if graph.n_neighbors == 0:
        return 0.0, {"rule": "auto", "z": z}
    nearest = graph.distances[:, 0].astype(np.float64)
    logs, floor = log_with_floor(nearest[np.isfinite(nearest)])
    # Mirror the values so the low side becomes the high side of the shared robust rule.
    cut, centre, spread = robust_threshold(-logs, z=z)
    threshold = 0.0 if not np.isfinite(cut) else max(0.0, float(np.exp(-cut) - floor))
    return threshold, {
        "rule": "auto: exp(median - z * robust_sd) of log nearest-neighbour distances",
        "z": z,
        "median_nearest_distance": float(np.exp(-centre) - floor) if np.isfinite(centre) else None,
    }


def _split_codes(splits: Any, n_samples: int) -> np.ndarray:
    if splits is None:
        return np.full(n_samples, -1, dtype=np.int64)
    series = pd.Series(list(splits) if not hasattr(splits, "__len__") else splits)
    if len(series) != n_samples:
        raise ValueError(f"splits has {len(series)} entries for {n_samples} samples")
    codes, _ = pd.factorize(series.astype("object").where(series.notna(), None))
    return np.asarray(codes, dtype=np.int64)


def _exact_distances(embeddings: np.ndarray, pairs: np.ndarray, metric: str) -> np.ndarray:
    """Float64 distance of each pair, in blocks of about ``PAIR_BLOCK_ELEMENTS`` vector entries:
    each distinct row of a block is read once, in ascending order."""
    if len(pairs) == 0:
        return np.zeros(0, dtype=np.float64)
    out = np.empty(len(pairs), dtype=np.float64)
    step = max(1, PAIR_BLOCK_ELEMENTS // (2 * embeddings.shape[1]))
    for start in range(0, len(pairs), step):
        block = pairs[start : start + step]
        rows, position = np.unique(block, return_inverse=True)
        vectors = np.asarray(embeddings[rows], dtype=np.float64)
        if metric == "cosine":
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-300)
        position = position.reshape(block.shape)
        a, b = vectors[position[:, 0]], vectors[position[:, 1]]
        if metric == "cosine":
            out[start : start + len(block)] = np.clip(1.0 - np.einsum("ij,ij->i", a, b), 0.0, 2.0)
        else:
            out[start : start + len(block)] = np.linalg.norm(a - b, axis=1)
    return out


def _components(pairs: np.ndarray, n_samples: int) -> np.ndarray:
    """Connected components of the pair graph; -1 for singletons, 0 = largest group."""
    labels = np.full(n_samples, -1, dtype=np.int64)
    if len(pairs) == 0:
        return labels
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    adjacency = coo_matrix(
        (np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])),
        shape=(n_samples, n_samples),
    )
    _, component = connected_components(adjacency, directed=False)
    members = np.unique(pairs.ravel())
    sizes = np.bincount(component[members])
    # Number the groups by size (largest first), ties by their smallest member.
    group_ids, first_member = np.unique(component[members], return_index=True)
    order = np.lexsort((members[first_member], -sizes[group_ids]))
    renumber = np.full(component.max() + 1, -1, dtype=np.int64)
    renumber[group_ids[order]] = np.arange(len(order))
    labels[members] = renumber[component[members]]
    return labels


def _complete_small_groups(
    embeddings: np.ndarray,
    pairs: np.ndarray,
    distances: np.ndarray,
    group_labels: np.ndarray,
    threshold: float,
    metric: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Add within-group pairs the graph missed (groups bigger than the neighbour count)."""
    if len(pairs) == 0:
        return pairs.reshape(0, 2), distances
    sizes = np.bincount(group_labels[group_labels >= 0])
    pair_counts = np.bincount(group_labels[pairs[:, 0]], minlength=len(sizes))
    # A group of size s can hold s(s-1)/2 pairs; only groups with fewer listed need a check.
    incomplete = np.flatnonzero(
        (pair_counts < sizes * (sizes - 1) // 2) & (sizes <= MAX_GROUP_FOR_ALL_PAIRS)
    )
    extra_pairs = [pairs]
    extra_distances = [distances]
    # Members of every group from one sort, not one scan of all samples per group.
    order = np.argsort(group_labels, kind="stable")
    bounds = np.searchsorted(group_labels[order], np.stack([incomplete, incomplete + 1]))
    for low, high in bounds.T:
        members = order[low:high]
        upper_i, upper_j = np.triu_indices(len(members), k=1)
        candidate = np.stack([members[upper_i], members[upper_j]], axis=1)
        candidate_distances = _exact_distances(embeddings, candidate, metric)
        close = candidate_distances <= threshold
        extra_pairs.append(candidate[close])
        extra_distances.append(candidate_distances[close])
    all_pairs = np.concatenate(extra_pairs)
    all_distances = np.concatenate(extra_distances)
    all_pairs, unique_rows = np.unique(all_pairs, axis=0, return_index=True)
    return all_pairs, all_distances[unique_rows]
