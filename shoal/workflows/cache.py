"""The one cache contract of every workflow: results stored as artefacts, keyed by what made them.

A workflow's result is a typed record (an ``analysis`` result class with ``to_arrays`` /
``to_meta`` / ``from_arrays``) wrapped in :class:`Computed`, which says which rows it describes
and whether it came from the cache. The key of a result is :func:`result_key`: the embedding set
and its version, the kind of result, :data:`CACHE_VERSION` and every parameter (with a digest of
the labels, splits or ids it read, via ``shoal.store.digest_values``). So a repeated call is a file
read, and any change to the vectors, the parameters or the metadata it used recomputes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import pandas as pd

from shoal.analysis.results import jsonable
from shoal.store import Dataset, EmbeddingSet, artefact_key

#: Bumped when a stored result's layout changes, so old artefacts are recomputed, never misread.
CACHE_VERSION = 2


ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class Computed(Generic[ResultT]):
    """A result plus where it came from. Row ``i`` of the result is ``sample_ids[i]`` (object ids
    for an object-level set; for a comparison, the current side's ids)."""

    result: ResultT
    sample_ids: np.ndarray
    dataset: str
    embedding: str
    key: str
    cached: bool

    def to_dict(self, **options: Any) -> dict[str, Any]:
        body = self.result.to_dict(sample_ids=self.sample_ids, **options)  # type: ignore[attr-defined]
        return jsonable(
            {"dataset": self.dataset, "embedding": self.embedding, "key": self.key, **body}
        )

    def to_frame(self) -> pd.DataFrame:
        return self.result.to_frame(sample_ids=self.sample_ids)  # type: ignore[attr-defined]


def result_key(embeddings: EmbeddingSet, kind: str, **params: Any) -> str:
    """The artefact key of a ``kind`` result computed from ``embeddings`` with ``params``."""
    return artefact_key(embeddings.info, kind=kind, cache_version=CACHE_VERSION, **params)


def cached(
    ds: Dataset,
    embeddings: EmbeddingSet,
    kind: str,
    params: dict[str, Any],
    result_type: Any,
    compute: Callable[[], Any],
    *,
    recompute: bool = False,
    sample_ids: np.ndarray | None = None,
) -> Computed[Any]:
    """The stored ``kind`` result for ``params``, or ``compute()`` stored under its key.

    ``result_type.from_arrays(arrays, meta)`` reads a stored result back. ``sample_ids``
    (default: the embedding set's ids) names the result's rows.
    """
    key = result_key(embeddings, kind, **params)
    ids = embeddings.ids if sample_ids is None else sample_ids
    stored = None if recompute else ds.load_artefact(kind, key)
    if stored is not None:
        return Computed(
            result_type.from_arrays(*stored), ids, ds.name, embeddings.info.name, key, True
        )
    result = compute()
    ds.save_artefact(kind, key, result.to_arrays(), result.to_meta())
    return Computed(result, ids, ds.name, embeddings.info.name, key, False)
