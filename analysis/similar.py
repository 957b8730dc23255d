"""Similarity search: the samples nearest to one or several samples, or to a query vector.

Several query rows are combined as the mean of their L2-normalised vectors (the direction "in
between" them); the query rows themselves are left out of the answer. A query vector (for
example an uploaded image embedded by the caller with the same model) is used as it is.

The search is exact: one matrix-vector product against the prepared matrix that
:class:`shoal.analysis.knn.NeighborIndex` keeps, so build the index once and reuse it across queries.

Example:
    >>> import numpy as np
    >>> from shoal.analysis.knn import NeighborIndex
    >>> index = NeighborIndex(np.random.default_rng(0).normal(size=(100, 8)))
    >>> result = search_similar(index, rows=[3, 7], k=5)
    >>> len(result.indices), 3 in result.indices
    (5, False)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from shoal.analysis.blocks import l2_normalize
from shoal.analysis.knn import NeighborIndex
from shoal.analysis.results import jsonable


@dataclass(frozen=True)
class SimilarResult:
    """The ``k`` nearest samples to a query, nearest first.

    indices: (k,) int64 rows; distances: (k,) float32 in the index's metric (cosine: 0 = same
    direction, up to 2). query_rows: the rows the query was built from (excluded), may be empty.
    """

    indices: np.ndarray
    distances: np.ndarray
    query_rows: tuple[int, ...]
    metric: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_frame(self, *, sample_ids: np.ndarray | None = None) -> pd.DataFrame:
        """One row per hit: rank (1 = nearest), sample_id (or row), row, distance."""
        names = (
            self.indices if sample_ids is None else np.asarray(sample_ids).astype(str)[self.indices]
        )
        return pd.DataFrame(
            {
                "rank": np.arange(1, len(self.indices) + 1),
                "sample_id": names,
                "row": self.indices,
                "distance": self.distances,
            }
        )

    def to_dict(self, *, sample_ids: np.ndarray | None = None) -> dict[str, Any]:
        def name(row: int) -> Any:
            return str(sample_ids[row]) if sample_ids is not None else int(row)

        return jsonable(
            {
                "metric": self.metric,
                "query": [name(r) for r in self.query_rows],
                "params": self.params,
                "results": [
                    {"sample": name(int(i)), "distance": float(d)}
                    for i, d in zip(self.indices, self.distances, strict=True)
                ],
            }
        )


def query_vector(index: NeighborIndex, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """(dim,) float32 query for several rows: the mean of their normalised vectors."""
    positions = np.asarray(rows, dtype=np.int64)
    if positions.size == 0:
        raise ValueError("rows is empty")
    if positions.min() < 0 or positions.max() >= index.n_reference:
        raise IndexError(
            f"rows must lie in [0, {index.n_reference}), got {positions.min()}..{positions.max()}"
        )
    vectors = index.vectors_[positions]
    if index.metric == "cosine":
        vectors = l2_normalize(vectors)
    return vectors.mean(axis=0)


def search_similar(
    index: NeighborIndex,
    *,
    rows: Sequence[int] | np.ndarray | None = None,
    vector: np.ndarray | None = None,
    k: int = 50,
    exclude: Sequence[int] | np.ndarray | None = None,
) -> SimilarResult:
    """Top-``k`` samples nearest to ``rows`` (their mean direction) or to ``vector`` (dim,).

    Exactly one of ``rows`` and ``vector`` is given. The query rows and any ``exclude`` rows are
    left out; fewer than ``k`` results come back only when the set is that small.
    """
    if (rows is None) == (vector is None):
        raise ValueError("give exactly one of rows= or vector=")
    query_rows: tuple[int, ...] = ()
    if rows is not None:
        query_rows = tuple(int(r) for r in np.unique(np.asarray(rows, dtype=np.int64)))
        query = query_vector(index, query_rows)
    else:
        query = np.asarray(vector, dtype=np.float32).ravel()
        if query.shape[0] != index.dim:
            raise ValueError(f"query vector has dim {query.shape[0]}, the index has {index.dim}")
        if not np.isfinite(query).all():
            raise ValueError("query vector contains NaN or inf")
    excluded = np.unique(
        np.r_[
            np.asarray(query_rows, np.int64),
            np.asarray([] if exclude is None else exclude, np.int64),
        ]
    )
    k = int(max(0, min(k, index.n_reference - len(excluded))))
    indices, distances = index.search(query, k, exclude=excluded)
    return SimilarResult(
        indices=indices[0],
        distances=distances[0],
        query_rows=query_rows,
        metric=index.metric,
        params={"k": k, "query": "rows" if rows is not None else "vector"},
    )
