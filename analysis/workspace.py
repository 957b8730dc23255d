"""Thin orchestrators: load an embedding set from a dataset, run a kernel, cache the result.

Every function takes a :class:`shoal.store.Dataset` and an embedding-set name (None = the
dataset's default) and returns a :class:`Computed` (the typed result, the row → sample id
mapping, and whether it came from the cache). Results are stored as workspace artefacts keyed by
the embedding version and every parameter (plus a digest of labels or splits where they matter),
so a repeated call is a file read. The kNN graph is computed once per embedding set and parameter
set, and every other analysis reads it.

Example:
    >>> from shoal.store import Workspace                                  # doctest: +SKIP
    >>> ds = Workspace().open("fmnist")                                    # doctest: +SKIP
    >>> found = outliers(ds)                                               # doctest: +SKIP
    >>> found.to_frame().sort_values("score").tail()                       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import pandas as pd

from analysis.duplicates import DuplicateResult, find_duplicates
from analysis.knn import KnnGraph, NeighborIndex, build_knn_graph
from analysis.mislabels import MislabelResult, score_mislabels
from analysis.outliers import DEFAULT_Z_THRESHOLD, OutlierResult, score_outliers
from analysis.projection import Projection
from analysis.projection import project as project_embeddings
from analysis.results import jsonable
from analysis.similar import SimilarResult, search_similar
from shoal.store import Dataset, EmbeddingSet, StoreError, artefact_key

ResultT = TypeVar("ResultT")

#: Neighbour count of the shared graph. Outliers use all of it (see analysis.outliers), UMAP 15
#: including the point itself.
DEFAULT_GRAPH_NEIGHBORS = 15


@dataclass(frozen=True)
class Computed(Generic[ResultT]):
    """A result plus where it came from. Row ``i`` of the result is sample ``sample_ids[i]``."""

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


# --------------------------------------------------------------------------- graph


def knn_graph(
    ds: Dataset,
    embedding: str | None = None,
    *,
    n_neighbors: int = DEFAULT_GRAPH_NEIGHBORS,
    metric: str = "cosine",
    method: str = "auto",
    random_state: int = 0,
    recompute: bool = False,
) -> Computed[KnnGraph]:
    """The shared kNN graph of an embedding set, computed once and cached as artefact 'knn'."""
    embeddings = ds.load_embeddings(embedding)
    return _graph(ds, embeddings, n_neighbors, metric, method, random_state, recompute)


def _graph(
    ds: Dataset,
    embeddings: EmbeddingSet,
    n_neighbors: int,
    metric: str,
    method: str,
    random_state: int,
    recompute: bool,
) -> Computed[KnnGraph]:
    params = {
        "n_neighbors": n_neighbors,
        "metric": metric,
        "method": method,
        "random_state": random_state,
    }
    key = artefact_key(embeddings.info, kind="knn", **params)
    stored = None if recompute else ds.load_artefact("knn", key)
    if stored is not None:
        graph, cached = KnnGraph.from_arrays(*stored), True
    else:
        graph = build_knn_graph(
            embeddings.vectors,
            n_neighbors=n_neighbors,
            metric=metric,
            method=method,
            random_state=random_state,
        )
        ds.save_artefact("knn", key, graph.to_arrays(), graph.to_meta())
        cached = False
    return Computed(graph, embeddings.ids, ds.name, embeddings.info.name, key, cached)


def _cached(
    ds: Dataset,
    kind: str,
    key: str,
    embeddings: EmbeddingSet,
    result_type: Any,
    compute: Any,
    recompute: bool,
) -> Computed[Any]:
    stored = None if recompute else ds.load_artefact(kind, key)
    if stored is not None:
        return Computed(
            result_type.from_arrays(*stored),
            embeddings.ids,
            ds.name,
            embeddings.info.name,
            key,
            True,
        )
    result = compute()
    ds.save_artefact(kind, key, result.to_arrays(), result.to_meta())
    return Computed(result, embeddings.ids, ds.name, embeddings.info.name, key, False)


# --------------------------------------------------------------------------- analyses


def project(
    ds: Dataset,
    embedding: str | None = None,
    *,
    n_components: int = 2,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    random_state: int = 0,
    recompute: bool = False,
    **options: Any,
) -> Computed[Projection]:
    """UMAP map of an embedding set from its shared graph (artefact 'projection')."""
    embeddings = ds.load_embeddings(embedding)
    graph = _graph(
        ds, embeddings, max(DEFAULT_GRAPH_NEIGHBORS, n_neighbors - 1), "cosine", "auto", 0, False
    )
    params = {
        "n_components": n_components,
        "n_neighbors": n_neighbors,
        "min_dist": min_dist,
        "random_state": random_state,
        "graph": graph.key,
        **options,
    }
    key = artefact_key(embeddings.info, kind="projection", **params)

    def compute() -> Projection:
        return project_embeddings(
            embeddings.vectors,
            graph=graph.result,
            n_components=n_components,
            n_neighbors=n_neighbors,
            min_dist=min_dist,
            random_state=random_state,
            **options,
        )

    return _cached(ds, "projection", key, embeddings, Projection, compute, recompute)


def outliers(
    ds: Dataset,
    embedding: str | None = None,
    *,
    method: str = "knn",
    n_neighbors: int = DEFAULT_GRAPH_NEIGHBORS,
    threshold: float | None = None,
    z_threshold: float = DEFAULT_Z_THRESHOLD,
    random_state: int = 0,
    recompute: bool = False,
) -> Computed[OutlierResult]:
    """Outlier scores and flags (artefact 'outliers'); see analysis.outliers for the rule."""
    embeddings = ds.load_embeddings(embedding)
    graph = _graph(ds, embeddings, n_neighbors, "cosine", "auto", 0, False)
    params = {
        "method": method,
        "threshold": threshold,
        "z_threshold": z_threshold,
        "random_state": random_state,
        "graph": graph.key,
    }
    key = artefact_key(embeddings.info, kind="outliers", **params)

    def compute() -> OutlierResult:
        return score_outliers(
            embeddings.vectors,
            graph=graph.result,
            method=method,
            threshold=threshold,
            z_threshold=z_threshold,
            random_state=random_state,
        )

    return _cached(ds, "outliers", key, embeddings, OutlierResult, compute, recompute)


def duplicates(
    ds: Dataset,
    embedding: str | None = None,
    *,
    threshold: float | None = None,
    n_neighbors: int = DEFAULT_GRAPH_NEIGHBORS,
    recompute: bool = False,
) -> Computed[DuplicateResult]:
    """Near-duplicate pairs, groups and cross-split leaks (artefact 'duplicates')."""
    embeddings = ds.load_embeddings(embedding)
    graph = _graph(ds, embeddings, n_neighbors, "cosine", "auto", 0, False)
    splits = _column(ds, embeddings, "split")
    params = {"threshold": threshold, "graph": graph.key, "splits": _digest(splits)}
    key = artefact_key(embeddings.info, kind="duplicates", **params)

    def compute() -> DuplicateResult:
        return find_duplicates(
            embeddings.vectors, graph=graph.result, threshold=threshold, splits=splits
        )

    return _cached(ds, "duplicates", key, embeddings, DuplicateResult, compute, recompute)


def mislabels(
    ds: Dataset,
    embedding: str | None = None,
    *,
    n_neighbors: int = DEFAULT_GRAPH_NEIGHBORS,
    label_column: str | None = None,
    recompute: bool = False,
) -> Computed[MislabelResult]:
    """Label-vs-neighbours disagreement (artefact 'mislabels'); needs a label column.

    ``label_column=None`` checks ``label`` for images and each box's ``category`` for objects.
    """
    embeddings = ds.load_embeddings(embedding)
    if label_column is None:
        label_column = "category" if embeddings.info.level == "object" else "label"
    labels = _column(ds, embeddings, label_column)
    if labels is None or pd.isna(pd.Series(labels, dtype=object)).all():
        raise StoreError(f"dataset {ds.name!r} has no {label_column!r} values to check")
    graph = _graph(ds, embeddings, n_neighbors, "cosine", "auto", 0, False)
    params = {"graph": graph.key, "labels": _digest(labels), "label_column": label_column}
    key = artefact_key(embeddings.info, kind="mislabels", **params)

    def compute() -> MislabelResult:
        return score_mislabels(labels, graph=graph.result)

    return _cached(ds, "mislabels", key, embeddings, MislabelResult, compute, recompute)


def similar(
    ds: Dataset,
    embedding: str | None = None,
    *,
    sample_ids: Sequence[str] | None = None,
    vector: np.ndarray | None = None,
    k: int = 50,
) -> Computed[SimilarResult]:
    """The ``k`` samples nearest to ``sample_ids`` (their mean direction) or to ``vector``.

    The prepared search index is kept in memory per embedding version (a few most recent), so
    only the first query of a session pays for loading the matrix.
    """
    embeddings = ds.load_embeddings(embedding)
    index = neighbor_index(ds, embeddings)
    rows = None
    if sample_ids is not None:
        rows = rows_of(embeddings, sample_ids)
    result = search_similar(index, rows=rows, vector=vector, k=k)
    key = artefact_key(embeddings.info, kind="similar")
    return Computed(result, embeddings.ids, ds.name, embeddings.info.name, key, False)


# --------------------------------------------------------------------------- helpers

_INDEX_CACHE: OrderedDict[tuple[str, str, str], NeighborIndex] = OrderedDict()
_INDEX_CACHE_SIZE = 2
_INDEX_LOCK = threading.Lock()


def neighbor_index(ds: Dataset, embeddings: EmbeddingSet | None = None) -> NeighborIndex:
    """The exact search index of an embedding set, cached in memory by embedding version."""
    embeddings = embeddings or ds.load_embeddings()
    cache_key = (str(ds.root), embeddings.info.name, embeddings.info.version)
    with _INDEX_LOCK:
        if cache_key in _INDEX_CACHE:
            _INDEX_CACHE.move_to_end(cache_key)
            return _INDEX_CACHE[cache_key]
    index = NeighborIndex(embeddings.vectors, metric="cosine")
    with _INDEX_LOCK:
        _INDEX_CACHE[cache_key] = index
        while len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
            _INDEX_CACHE.popitem(last=False)
    return index


def rows_of(embeddings: EmbeddingSet, sample_ids: Sequence[str]) -> np.ndarray:
    """Row numbers of ``sample_ids`` in an embedding set; unknown ids raise StoreError."""
    position = pd.Index(embeddings.ids.astype(str))
    wanted = [str(s) for s in sample_ids]
    rows = position.get_indexer(wanted)
    if (rows < 0).any():
        missing = [w for w, r in zip(wanted, rows, strict=True) if r < 0]
        raise StoreError(
            f"unknown sample id(s) {missing[:5]} in embedding set {embeddings.info.name!r}"
        )
    return rows.astype(np.int64)


def row_metadata(ds: Dataset, embeddings: EmbeddingSet) -> pd.DataFrame:
    """The metadata table of an embedding set, row ``i`` describing embedding row ``i``.

    Sample-level sets: the samples table. Object-level sets: the objects table (``object_id``
    first, its ``sample_id`` the image it is in) with the columns of its sample that the objects
    table does not have (split, path, user metadata). Ids missing from the table give empty rows.
    """
    ids = embeddings.ids.astype(str)
    if embeddings.info.level == "object":
        objects = ds.objects()
        if objects is None:
            raise StoreError(f"dataset {ds.name!r} has an object-level set but no objects table")
        samples = ds.samples()
        extra = ["sample_id", *(c for c in samples.columns if c not in objects.columns)]
        table = objects.merge(samples[extra], on="sample_id", how="left")
        id_column = "object_id"
    else:
        table, id_column = ds.samples(), "sample_id"
    aligned = table.set_index(table[id_column].astype(str)).reindex(ids)
    aligned[id_column] = ids
    return aligned.reset_index(drop=True)


def _column(ds: Dataset, embeddings: EmbeddingSet, column: str) -> np.ndarray | None:
    """A samples-table (or objects-table) column aligned to the embedding rows; None if absent."""
    try:
        table = row_metadata(ds, embeddings)
    except StoreError:
        return None
    if column not in table.columns:
        return None
    aligned = table[column]
    return aligned.astype(object).where(aligned.notna(), None).to_numpy()


def _digest(values: np.ndarray | None) -> str | None:
    if values is None:
        return None
    text = "\x1f".join("\x00" if v is None else str(v) for v in values)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
