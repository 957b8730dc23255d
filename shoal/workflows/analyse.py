"""The analyses of a stored embedding set: kNN graph, map, outliers, duplicates, mislabels, similar.

Every function takes a :class:`shoal.store.Dataset` and an embedding-set name (None = the
dataset's default) and returns a :class:`~shoal.workflows.cache.Computed` (the typed result, the
row → sample id mapping, and whether it came from the cache), stored under the one cache contract
of :mod:`shoal.workflows.cache`. One kNN graph per embedding set is built, at
:data:`GRAPH_NEIGHBORS` (the most any default needs), and every analysis reads it, truncated to its
own neighbour count; only a request for more neighbours than it holds rebuilds it, once, larger.

Example:
    >>> from shoal.store import Workspace                                  # doctest: +SKIP
    >>> ds = Workspace().open("fmnist")                                    # doctest: +SKIP
    >>> found = outliers(ds)                                               # doctest: +SKIP
    >>> found.to_frame().sort_values("score").tail()                       # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from shoal.analysis.duplicates import DuplicateResult, find_duplicates
from shoal.analysis.knn import EXACT_MAX_SAMPLES, KnnGraph, NeighborIndex, build_knn_graph
from shoal.analysis.mislabels import MislabelResult, score_mislabels
from shoal.analysis.outliers import DEFAULT_FDR, DEFAULT_METHOD, OutlierResult, score_outliers
from shoal.analysis.projection import Projection
from shoal.analysis.projection import project as project_embeddings
from shoal.analysis.similar import SimilarResult, search_similar
from shoal.store import Dataset, EmbeddingSet, StoreError, digest_values
from shoal.store.vectors import in_memory_if_small
from shoal.workflows.cache import Computed, cached, result_key

#: Neighbours per sample of the one shared graph: the most any default needs (outliers,
#: duplicates and mislabels use 15; UMAP's default 15 counts the point itself, so 14).
GRAPH_NEIGHBORS = 15
#: Maps of more samples than this are laid out on all cores unless a seed is given; smaller ones
#: take seconds either way and stay bit-reproducible.
PARALLEL_LAYOUT_MIN_SAMPLES = 20_000
#: The shared graph's search settings (cosine distance; exact or HNSW by size; seed).
GRAPH_PARAMS: dict[str, Any] = {"metric": "cosine", "method": "auto", "random_state": 0}


# --------------------------------------------------------------------------- graph


def knn_graph(
    ds: Dataset,
    embedding: str | None = None,
    *,
    n_neighbors: int = GRAPH_NEIGHBORS,
    recompute: bool = False,
) -> Computed[KnnGraph]:
    """The shared kNN graph of an embedding set (artefact 'knn'), truncated to ``n_neighbors``."""
    return _graph(ds, ds.load_embeddings(embedding), n_neighbors, recompute=recompute)


def _graph(
    ds: Dataset,
    embeddings: EmbeddingSet,
    n_neighbors: int,
    *,
    recompute: bool = False,
    vectors: Any = None,
) -> Computed[KnnGraph]:
    """``vectors``: the set's rows if the caller has read them (:func:`in_memory_if_small`)."""
    key = _graph_key(embeddings)
    stored = None if recompute else ds.load_artefact("knn", key)
    graph = None if stored is None else KnnGraph.from_arrays(*stored)
    wanted = max(GRAPH_NEIGHBORS, n_neighbors)
    # A set of n samples has at most n - 1 neighbours per sample: a small graph may be complete.
    if graph is not None and graph.n_neighbors < min(wanted, len(embeddings.ids) - 1):
        graph = None
    cached_graph = graph is not None
    if graph is None:
        if vectors is None:
            vectors = in_memory_if_small(embeddings.vectors)
        # An HNSW index is kept: the Similar page and `shoal similar` search it.
        index = (
            _hnsw_index(ds, embeddings, vectors)
            if search_method(len(embeddings.ids)) == "hnsw"
            else None
        )
        graph = build_knn_graph(vectors, n_neighbors=wanted, index=index, **GRAPH_PARAMS)
        ds.save_artefact("knn", key, graph.to_arrays(), graph.to_meta())
    truncated = graph.truncate(min(n_neighbors, graph.n_neighbors))
    return Computed(truncated, embeddings.ids, ds.name, embeddings.info.name, key, cached_graph)


class _GraphRef:
    """The shared graph an analysis is keyed by, loaded (or built) only when the analysis
    computes: a cached result needs the graph's key and size, not its arrays (at 1M samples
    loading them costs 0.4 s of every page that opens a stored result)."""

    def __init__(self, ds: Dataset, embeddings: EmbeddingSet, n_neighbors: int):
        self._ds, self._embeddings, self._wanted = ds, embeddings, n_neighbors
        self.key = _graph_key(embeddings)
        # What _graph returns: a graph of at least max(GRAPH_NEIGHBORS, n) neighbours (or every
        # other sample) truncated to n, so min(n, samples - 1) whether stored or built.
        self.n_neighbors = min(n_neighbors, max(0, len(embeddings.ids) - 1))
        self._result: KnnGraph | None = None

    @property
    def result(self) -> KnnGraph:
        return self.get()

    def get(self, vectors: Any = None) -> KnnGraph:
        """The graph; ``vectors``: the set's rows if the analysis has read them already, so
        that building the graph does not read them again."""
        if self._result is None:
            self._result = _graph(self._ds, self._embeddings, self._wanted, vectors=vectors).result
        return self._result


# --------------------------------------------------------------------------- analyses


def project(
    ds: Dataset,
    embedding: str | None = None,
    *,
    n_components: int = 2,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    random_state: int | None = None,
    method: str = "umap",
    recompute: bool = False,
    **options: Any,
) -> Computed[Projection]:
    """A map of an embedding set from its shared graph (artefact 'projection'): ``method``
    "umap" (default), "tsne" or "pca" (see :func:`shoal.analysis.projection.project`).

    ``random_state``: a seed makes the map bit-reproducible (single-threaded layout); without
    one (as ``umap.UMAP()``) the layout of more than ``PARALLEL_LAYOUT_MIN_SAMPLES`` samples runs
    on all cores, seeded with 0 otherwise."""
    embeddings = ds.load_embeddings(embedding)
    graph = _GraphRef(ds, embeddings, max(GRAPH_NEIGHBORS, n_neighbors - 1))
    params = projection_params(
        graph.key,
        graph.n_neighbors,
        n_components=n_components,
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        random_state=random_state,
        method=method,
        **options,
    )

    def compute() -> Projection:
        vectors = in_memory_if_small(embeddings.vectors)
        # The graph first: building it stores the HNSW index, whose PCA axes the map reuses.
        shared = graph.get(vectors)
        return project_embeddings(
            vectors,
            pca_axes=_index_pca_axes(ds, embeddings),
            graph=shared,
            n_components=n_components,
            n_neighbors=n_neighbors,
            min_dist=min_dist,
            random_state=0 if random_state is None else random_state,
            method=method,
            parallel=random_state is None and len(embeddings.ids) > PARALLEL_LAYOUT_MIN_SAMPLES,
            **options,
        )

    return cached(ds, embeddings, "projection", params, Projection, compute, recompute=recompute)


def projection_params(
    graph_key: str,
    graph_neighbors: int,
    *,
    n_components: int = 2,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    random_state: int | None = None,
    method: str = "umap",
    **options: Any,
) -> dict[str, Any]:
    """What a stored map's key is made of (:func:`project`'s defaults are the app's)."""
    return {
        "n_components": n_components,
        "n_neighbors": n_neighbors,
        "min_dist": min_dist,
        "random_state": random_state,
        "graph": graph_key,
        "graph_neighbors": graph_neighbors,
        **({} if method == "umap" else {"method": method}),  # UMAP keeps its earlier key
        **options,
    }


def outliers(
    ds: Dataset,
    embedding: str | None = None,
    *,
    method: str = DEFAULT_METHOD,
    n_neighbors: int = GRAPH_NEIGHBORS,
    threshold: float | None = None,
    fdr: float = DEFAULT_FDR,
    z_threshold: float | None = None,
    random_state: int = 0,
    recompute: bool = False,
) -> Computed[OutlierResult]:
    """Outlier scores and flags (artefact 'outliers'); see shoal.analysis.outliers for the rule:
    by default a false-discovery rate ``fdr``; a ``z_threshold`` gives the fixed robust-z rule,
    a ``threshold`` a fixed score cut."""
    embeddings = ds.load_embeddings(embedding)
    graph = _GraphRef(ds, embeddings, n_neighbors)
    params = {
        "method": method,
        "threshold": threshold,
        "fdr": fdr,
        "z_threshold": z_threshold,
        "random_state": random_state,
        "graph": graph.key,
        "graph_neighbors": graph.n_neighbors,
    }

    def compute() -> OutlierResult:
        vectors = in_memory_if_small(embeddings.vectors)
        return score_outliers(
            vectors,
            graph=graph.get(vectors),
            method=method,
            threshold=threshold,
            fdr=fdr,
            z_threshold=z_threshold,
            random_state=random_state,
        )

    return cached(ds, embeddings, "outliers", params, OutlierResult, compute, recompute=recompute)


def duplicates(
    ds: Dataset,
    embedding: str | None = None,
    *,
    threshold: float | None = None,
    n_neighbors: int = GRAPH_NEIGHBORS,
    recompute: bool = False,
) -> Computed[DuplicateResult]:
    """Near-duplicate pairs, groups and cross-split leaks (artefact 'duplicates')."""
    embeddings = ds.load_embeddings(embedding)
    graph = _GraphRef(ds, embeddings, n_neighbors)
    splits = _column(ds, embeddings, "split")
    params = {
        "threshold": threshold,
        "graph": graph.key,
        "graph_neighbors": graph.n_neighbors,
        "splits": digest_values(splits),
    }

    def compute() -> DuplicateResult:
        vectors = in_memory_if_small(embeddings.vectors)
        return find_duplicates(
            vectors,
            graph=graph.get(vectors),
            threshold=threshold,
            splits=splits,
        )

    return cached(
        ds, embeddings, "duplicates", params, DuplicateResult, compute, recompute=recompute
    )


def mislabels(
    ds: Dataset,
    embedding: str | None = None,
    *,
    n_neighbors: int = GRAPH_NEIGHBORS,
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
    graph = _GraphRef(ds, embeddings, n_neighbors)
    params = {
        "graph": graph.key,
        "graph_neighbors": graph.n_neighbors,
        "labels": digest_values(labels),
        "label_column": label_column,
        "rule": "no_support",  # shoal.analysis.mislabels' default since the calibrated flags
    }

    def compute() -> MislabelResult:
        return score_mislabels(labels, graph=graph.result)

    return cached(ds, embeddings, "mislabels", params, MislabelResult, compute, recompute=recompute)


def similar(
    ds: Dataset,
    embedding: str | None = None,
    *,
    sample_ids: Sequence[str] | None = None,
    vector: np.ndarray | None = None,
    k: int = 50,
    among: np.ndarray | None = None,
) -> Computed[SimilarResult]:
    """The ``k`` samples nearest to ``sample_ids`` (their mean direction) or to ``vector``;
    only rows where the boolean mask ``among`` (n_rows,) is True, when given (a collection).

    The prepared search index is kept in memory per embedding version (a few most recent), so
    only the first query of a session pays for loading the matrix.
    """
    embeddings = ds.load_embeddings(embedding)
    index = neighbor_index(ds, embeddings)
    rows = None
    if sample_ids is not None:
        rows = rows_of(embeddings, sample_ids)
    outside = None if among is None else np.flatnonzero(~np.asarray(among, dtype=bool))
    result = search_similar(index, rows=rows, vector=vector, k=k, exclude=outside)
    key = result_key(embeddings, "similar")
    return Computed(result, embeddings.ids, ds.name, embeddings.info.name, key, False)


#: The stored analyses of an embedding set by name, each ``f(ds, embedding, **params)``: what
#: the 'analyse' job runs and the CLI's analysis commands call.
ANALYSES: dict[str, Callable[..., Computed[Any]]] = {
    "knn_graph": knn_graph,
    "project": project,
    "outliers": outliers,
    "duplicates": duplicates,
    "mislabels": mislabels,
}


# --------------------------------------------------------------------------- helpers

_INDEX_CACHE: OrderedDict[tuple[str, str, str], NeighborIndex] = OrderedDict()
_INDEX_CACHE_SIZE = 2
_INDEX_LOCK = threading.Lock()


def search_method(n_samples: int) -> str:
    """How a set of ``n_samples`` is searched: exactly while that is fast, else with HNSW."""
    return "exact" if n_samples <= EXACT_MAX_SAMPLES else "hnsw"


def _graph_key(embeddings: EmbeddingSet) -> str:
    return result_key(embeddings, "knn", **GRAPH_PARAMS)


def _index_key(embeddings: EmbeddingSet) -> str:
    return result_key(embeddings, "search-index", **GRAPH_PARAMS)


def _hnsw_index(ds: Dataset, embeddings: EmbeddingSet, vectors: Any = None) -> NeighborIndex:
    """Build the HNSW index of the shared graph's settings and store it (artefact 'search-index').
    ``vectors``: the set's rows if already read (:func:`in_memory_if_small`)."""
    index = NeighborIndex(
        embeddings.vectors if vectors is None else vectors,
        metric=GRAPH_PARAMS["metric"],
        method="hnsw",
        random_state=GRAPH_PARAMS["random_state"],
    )
    ds.save_artefact(
        "search-index",
        _index_key(embeddings),
        index.to_arrays(),
        index.to_meta(),
        files={"faiss": index.write_graph},
    )
    return index


def _index_pca_axes(ds: Dataset, embeddings: EmbeddingSet) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, components) of the stored HNSW index's PCA (fitted on the normalised rows), or
    None: the projection takes its leading axes instead of fitting its own."""
    if search_method(len(embeddings.ids)) != "hnsw":
        return None
    stored = ds.load_artefact("search-index", _index_key(embeddings))
    if stored is None or "pca_mean" not in stored[0]:
        return None
    return stored[0]["pca_mean"], stored[0]["pca_components"]


def neighbor_index(ds: Dataset, embeddings: EmbeddingSet | None = None) -> NeighborIndex:
    """The search index of an embedding set, cached in memory by embedding version.

    Up to ``EXACT_MAX_SAMPLES`` samples: an exact index (the prepared vectors in memory). Larger
    sets: the HNSW index stored with the shared graph (built with the graph when there is none
    yet), which holds no copy of the vectors: at 1M x 1280 it is 0.65 GB instead of 4.9 GB.
    """
    embeddings = embeddings or ds.load_embeddings()
    cache_key = (str(ds.root), embeddings.info.name, embeddings.info.version)
    with _INDEX_LOCK:
        if cache_key in _INDEX_CACHE:
            _INDEX_CACHE.move_to_end(cache_key)
            return _INDEX_CACHE[cache_key]
    if search_method(len(embeddings.ids)) == "exact":
        index = NeighborIndex(embeddings.vectors, metric="cosine")
    else:
        stored = ds.load_artefact("search-index", _index_key(embeddings))
        graph = ds.artefact_file("search-index", _index_key(embeddings), "faiss")
        if stored is not None and graph is not None:
            index = NeighborIndex.from_arrays(embeddings.vectors, *stored, graph)
        else:  # the graph was built before indexes were kept, or the file is damaged
            index = _hnsw_index(ds, embeddings)
    with _INDEX_LOCK:
        _INDEX_CACHE[cache_key] = index
        while len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
            _INDEX_CACHE.popitem(last=False)
    return index


def rows_of(embeddings: EmbeddingSet, sample_ids: Sequence[str]) -> np.ndarray:
    """Row numbers of ``sample_ids`` in an embedding set; unknown ids raise StoreError."""
    position = _id_index(embeddings)
    wanted = [str(s) for s in sample_ids]
    rows = position.get_indexer(wanted)
    if (rows < 0).any():
        missing = [w for w, r in zip(wanted, rows, strict=True) if r < 0]
        raise StoreError(
            f"unknown sample id(s) {missing[:5]} in embedding set {embeddings.info.name!r}"
        )
    return rows.astype(np.int64)


_ID_INDEXES: OrderedDict[tuple[str, str], pd.Index] = OrderedDict()


def _id_index(embeddings: EmbeddingSet) -> pd.Index:
    """id -> row of an embedding set, kept per version for a few sets: building it over a
    million ids takes longer than a search."""
    key = (embeddings.info.name, embeddings.info.version)
    with _INDEX_LOCK:
        if key in _ID_INDEXES:
            _ID_INDEXES.move_to_end(key)
            return _ID_INDEXES[key]
    position = pd.Index(embeddings.ids.astype(str))
    with _INDEX_LOCK:
        _ID_INDEXES[key] = position
        while len(_ID_INDEXES) > _INDEX_CACHE_SIZE:
            _ID_INDEXES.popitem(last=False)
    return position


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
