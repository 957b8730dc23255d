"""The one k-nearest-neighbour graph per embedding set, and exact flat search against a set.

Every other analysis (projection, outliers, duplicates, mislabels, comparison) reads the graph
built here instead of searching again: it is the only all-pairs step in Shoal.

Distances: ``metric="cosine"`` is ``1 - cos(a, b)`` in [0, 2] (vectors are L2-normalised first);
``metric="euclidean"`` is the plain Euclidean distance in [0, inf). Smaller = more similar.

Example:
    >>> import numpy as np
    >>> graph = build_knn_graph(np.random.default_rng(0).normal(size=(100, 8)), n_neighbors=5)
    >>> graph.indices.shape, graph.method
    ((100, 5), 'exact')
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from shoal.analysis.blocks import BLOCK_ROWS, l2_normalize
from shoal.analysis.pca import BlockPCA
from shoal.analysis.results import ArrayRecord, ids_or_rows
from shoal.analysis.rows import RowSubset

METRICS = ("cosine", "euclidean")
METHODS = ("auto", "exact", "hnsw")

#: ``method="auto"`` searches exactly up to this many samples, then uses HNSW. Exact search costs
#: n² · dim multiply-adds (about 30 s for 50k × 1280 on two cores); HNSW grows like n · log n.
EXACT_MAX_SAMPLES = 20_000

#: HNSW settings: graph degree, build and search beam widths. Wide vectors (dim > 256) are
#: searched in a PCA-reduced copy (``HNSW_REDUCED_DIM`` axes, a tenth of the cost per distance
#: for 1280-d CNN features), for at least ``HNSW_MIN_CANDIDATES`` (or 2k) candidates that are then
#: re-ranked by their exact full-dimensional distance; so every returned distance is exact and
#: recall@10 against exact search stays above 0.95 (tests/analysis/test_knn.py checks it; about
#: 0.998 on real EfficientNet embeddings). The denser the set, the less 128 axes tell its nearest
#: points apart: on 300k real-derived vectors (benchmarks/bench_scale.py's set) 32 candidates gave
#: recall@10 0.967, 48 gave 0.991 and 64 0.995; at 1M, 32 gave 0.86.
HNSW_REDUCED_DIM = 128
HNSW_MIN_CANDIDATES = 48
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
HNSW_EF_SEARCH = 64

#: Threads that re-rank HNSW candidates from gathered copies (a reference whose rows cannot be
#: read in place); the compiled in-place loop uses numba's threads.
RERANK_THREADS = max(1, min(4, os.cpu_count() or 1))
#: A graph over a set that is not in memory searches this many samples at a time, then re-ranks
#: all their candidates in one sequential pass over the set (a 1M set is read 16 times); their
#: prepared rows take 335 MB at 1280-d.
SCAN_QUERY_ROWS = 65_536

#: Query batches up to this size are answered with a numpy product instead of faiss.
SMALL_QUERY_BATCH = 16


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as error:
        raise ImportError("Shoal's neighbour search needs faiss: pip install faiss-cpu") from error
    return faiss


@dataclass(frozen=True)
class KnnGraph(ArrayRecord):
    """Each sample's nearest other samples.

    indices: (n_samples, n_neighbors) int64 row numbers, self excluded, nearest first;
    distances: (n_samples, n_neighbors) float32 in the graph's metric, ascending per row.
    ``n_neighbors`` may be smaller than asked for when the set has fewer than ``n + 1`` samples.
    """

    indices: np.ndarray
    distances: np.ndarray
    metric: str
    method: str
    n_neighbors: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return int(self.indices.shape[0])

    def truncate(self, n_neighbors: int) -> KnnGraph:
        """The same graph keeping only the ``n_neighbors`` nearest (no new search)."""
        if n_neighbors > self.n_neighbors:
            raise ValueError(
                f"graph has {self.n_neighbors} neighbours per sample, cannot give {n_neighbors}; "
                "rebuild it with a larger n_neighbors"
            )
        return replace(
            self,
            indices=self.indices[:, :n_neighbors],
            distances=self.distances[:, :n_neighbors],
            n_neighbors=n_neighbors,
        )

    def to_dict(self, *, sample_ids: np.ndarray | None = None) -> dict[str, Any]:
        """JSON-able summary (the arrays stay in the artefact; use to_frame for edges)."""
        finite = self.distances[np.isfinite(self.distances)]
        return {
            **self.to_meta(),
            "n_samples": self.n_samples,
            "median_neighbor_distance": float(np.median(finite)) if finite.size else None,
        }

    def to_frame(self, *, sample_ids: np.ndarray | None = None) -> Any:
        """Edge list: sample_id, neighbor, rank (1 = nearest), distance."""
        import pandas as pd

        rows = np.repeat(np.arange(self.n_samples), self.n_neighbors)
        names = ids_or_rows(sample_ids, self.n_samples)
        return pd.DataFrame(
            {
                "sample_id": names[rows],
                "neighbor": names[self.indices.ravel()],
                "rank": np.tile(np.arange(1, self.n_neighbors + 1), self.n_samples),
                "distance": self.distances.ravel(),
            }
        )


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def prepare_rows(block: np.ndarray, metric: str) -> np.ndarray:
    """Float32 rows ready for ``metric``: L2-normalised for cosine, as they are for euclidean."""
    if metric == "cosine":
        return l2_normalize(block)
    return np.ascontiguousarray(block, dtype=np.float32)


def _raw_to_distance(raw: np.ndarray, metric: str) -> np.ndarray:
    """faiss returns inner products (cosine) or squared L2 distances; turn either into distances."""
    raw = np.asarray(raw, dtype=np.float32)
    if metric == "cosine":
        return np.clip(1.0 - raw, 0.0, 2.0)
    return np.sqrt(np.maximum(raw, 0.0))


class PreparedRows:
    """Rows of a reference matrix prepared for ``metric`` when read (``rows[a:b]``,
    ``rows[indices]``): what an HNSW index re-ranks with, without a prepared copy of the set."""

    def __init__(self, reference: Any, metric: str):
        self.reference = reference
        self.metric = metric
        self.shape = tuple(int(s) for s in reference.shape)
        self.ndim = 2
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return prepare_rows(np.asarray(self.reference[key])[None, :], self.metric)[0]
        return prepare_rows(np.asarray(self.reference[key]), self.metric)


class NeighborIndex:
    """Search a fixed reference set for the nearest rows to query vectors.

    reference: (n_reference, dim) embeddings: an array, a memory map or the store's block reader.
    ``vectors_[rows]`` gives prepared rows (normalised for cosine, float32). ``method="exact"``
    keeps the prepared matrix in memory and scans every row (faiss flat / BLAS), so repeated
    queries cost one matrix product each. ``"hnsw"`` finds candidates with a faiss HNSW graph
    (over a PCA-reduced copy for wide vectors) and re-ranks them by exact distance, reading the
    candidates' rows from ``reference``: approximate recall, exact distances, and no copy of the
    set in memory, for very large references. An HNSW index is stored and loaded with
    :meth:`to_arrays` / :meth:`from_arrays`.

    Example:
        >>> reference = np.random.default_rng(0).normal(size=(50, 4))
        >>> index = NeighborIndex(reference)
        >>> indices, distances = index.search(reference[:2], 3, exclude=[[0], [1]])
        >>> indices.shape
        (2, 3)
    """

    def __init__(
        self,
        reference: np.ndarray,
        *,
        metric: str = "cosine",
        method: str = "exact",
        random_state: int = 0,
    ):
        self.metric = _check_metric(metric)
        if method not in ("exact", "hnsw"):
            raise ValueError(f"NeighborIndex method must be 'exact' or 'hnsw', got {method!r}")
        self.method = method
        if not hasattr(reference, "shape") or not hasattr(reference, "__getitem__"):
            reference = np.asarray(reference)
        if len(reference.shape) != 2:
            raise ValueError(
                f"reference must be 2-D (n_reference, dim), got shape {reference.shape}"
            )
        self.n_reference, self.dim = (int(s) for s in reference.shape)
        faiss = _faiss()
        self._reducer: BlockPCA | None = None
        self._reference = reference
        if method == "exact":
            faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
            index = faiss.IndexFlat(self.dim, faiss_metric)
            for start in range(0, self.n_reference, BLOCK_ROWS):
                index.add(prepare_rows(reference[start : start + BLOCK_ROWS], metric))
            # A zero-copy view of faiss' own storage: the prepared matrix lives once in memory.
            flat = faiss.downcast_index(index)
            self.vectors_: Any = (
                faiss.rev_swig_ptr(flat.get_xb(), self.n_reference * self.dim).reshape(
                    self.n_reference, self.dim
                )
                if self.n_reference
                else np.empty((0, self.dim), dtype=np.float32)
            )
        else:
            # No prepared copy: rows are read from ``reference`` (a memory map or the store's
            # block reader) and prepared as needed, so the index holds only the search graph
            # over the reduced vectors (about 0.65 GB for 1M rows).
            self.vectors_ = PreparedRows(reference, metric)
            searched_dim = self.dim
            if self.dim > 2 * HNSW_REDUCED_DIM and self.n_reference > HNSW_REDUCED_DIM:
                self._reducer = BlockPCA(HNSW_REDUCED_DIM, random_state=random_state).fit(
                    self.vectors_
                )
                searched_dim = HNSW_REDUCED_DIM
            # Candidates by Euclidean distance: on normalised vectors it orders like cosine.
            index = faiss.IndexHNSWFlat(searched_dim, HNSW_M, faiss.METRIC_L2)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            # Each row's norm, so a re-ranked cosine is one dot product of the raw row.
            self._norms = np.empty(self.n_reference, dtype=np.float32)
            for start in range(0, self.n_reference, BLOCK_ROWS):
                raw = np.asarray(reference[start : start + BLOCK_ROWS], dtype=np.float32)
                self._norms[start : start + len(raw)] = np.sqrt(np.einsum("ij,ij->i", raw, raw))
                index.add(self._reduce(prepare_rows(raw, metric)))
        self._index = index
        self._squared_norms = (
            np.einsum("ij,ij->i", self.vectors_, self.vectors_)
            if metric == "euclidean" and method == "exact"
            else None
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The search structure's small arrays (PCA axes, row norms); its graph is written by
        :meth:`write_graph`. The vectors are in neither."""
        if self.method != "hnsw":
            raise ValueError("only an HNSW index is stored; an exact one is rebuilt from the set")
        arrays = {"norms": self._norms}
        if self._reducer is not None:
            arrays["pca_mean"] = self._reducer.mean_
            arrays["pca_components"] = self._reducer.components_
        return arrays

    def write_graph(self, path: Any) -> None:
        """Write the HNSW graph (with its reduced vectors) to ``path`` in faiss' own format."""
        _faiss().write_index(self._index, str(path))

    def to_meta(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "method": self.method,
            "n_reference": self.n_reference,
            "dim": self.dim,
        }

    @classmethod
    def from_arrays(
        cls, reference: Any, arrays: dict[str, np.ndarray], meta: dict[str, Any], graph: Any
    ) -> NeighborIndex:
        """An HNSW index stored with :meth:`to_arrays` and :meth:`write_graph` (``graph`` is
        that file's path), over the same ``reference`` rows."""
        if tuple(reference.shape) != (meta["n_reference"], meta["dim"]):
            raise ValueError(
                f"the stored index covers {meta['n_reference']} x {meta['dim']} rows, the "
                f"reference is {tuple(reference.shape)}"
            )
        index = cls.__new__(cls)
        index.metric, index.method = meta["metric"], "hnsw"
        index.n_reference, index.dim = int(meta["n_reference"]), int(meta["dim"])
        index._reference = reference
        index.vectors_ = PreparedRows(reference, index.metric)
        index._reducer = None
        if "pca_mean" in arrays:
            index._reducer = BlockPCA.from_axes(arrays["pca_mean"], arrays["pca_components"])
        index._index = _faiss().read_index(str(graph))
        index._squared_norms = None
        index._norms = arrays["norms"]
        return index

    def _reduce(self, block: np.ndarray) -> np.ndarray:
        if self._reducer is None:
            return np.ascontiguousarray(block, dtype=np.float32)
        return self._reducer.transform(block)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest ``k`` reference rows for each query, nearest first.

        queries: (n_queries, dim) or (dim,). exclude: per query, reference rows to leave out (a
        list of lists, or one list applied to every query), e.g. the query's own rows.
        Returns indices (n_queries, k) int64 and distances (n_queries, k) float32; when fewer than
        ``k`` rows are eligible the tail is padded with index -1 and distance inf.
        """
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dim {queries.shape[1]}, reference has {self.dim}")
        excluded = _normalise_exclude(exclude, len(queries))
        extra = max((len(e) for e in excluded), default=0)
        k_search = min(self.n_reference, k + extra)
        n_queries = len(queries)
        indices = np.full((n_queries, k), -1, dtype=np.int64)
        distances = np.full((n_queries, k), np.inf, dtype=np.float32)
        if k <= 0 or k_search == 0:
            return indices, distances
        for start in range(0, n_queries, BLOCK_ROWS):
            block = prepare_rows(queries[start : start + BLOCK_ROWS], self.metric)
            found_idx, found_dist = self._search_block(block, k_search)
            for row in range(len(block)):
                query_row = start + row
                row_idx, row_dist = found_idx[row], found_dist[row]
                keep = row_idx >= 0
                if excluded[query_row].size:
                    keep &= ~np.isin(row_idx, excluded[query_row])
                row_idx, row_dist = row_idx[keep][:k], row_dist[keep][:k]
                indices[query_row, : len(row_idx)] = row_idx
                distances[query_row, : len(row_dist)] = row_dist
        return indices, distances

    def _search_block(self, block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """block: prepared queries. Nearest k (padded with -1 / inf), ascending distance."""
        if self.method == "hnsw":
            return self._hnsw_search(block, k)
        if len(block) <= SMALL_QUERY_BATCH:
            # For a handful of queries one numpy matrix-vector product beats faiss' scalar path.
            return _exact_block_search(block, self.vectors_, k, self.metric, self._squared_norms)
        raw, found = self._index.search(np.ascontiguousarray(block), k)
        return found.astype(np.int64), _raw_to_distance(raw, self.metric)

    def _exact_distances(self, queries: np.ndarray, found: np.ndarray) -> np.ndarray:
        """Exact distances from prepared ``queries`` (q, dim) to their candidate rows ``found``
        (q, c); inf where a candidate is -1."""
        valid = found >= 0
        rows, position = np.unique(np.where(valid, found, 0), return_inverse=True)
        position = position.reshape(found.shape)
        gathered = np.asarray(self._reference[rows], dtype=np.float32)[position]
        if self.metric == "cosine":
            norms = self._norms[rows][position]
            products = np.einsum("ijk,ik->ij", gathered, queries)
            similarity = np.divide(products, norms, out=np.zeros_like(products), where=norms > 0)
            exact = np.clip(1.0 - similarity, 0.0, 2.0)
        else:
            exact = np.sqrt(np.maximum(((gathered - queries[:, None, :]) ** 2).sum(axis=2), 0.0))
        return np.where(valid, exact, np.inf)

    def _hnsw_search(
        self, block: np.ndarray, k: int, *, scan: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """HNSW candidates in the (reduced) search space, then exact distances to re-rank them:
        from the rows in memory, or (``scan``, for a large block of queries over a reference on
        disk) by one pass over the reference's blocks, or from gathered copies."""
        n_candidates = min(self.n_reference, max(HNSW_MIN_CANDIDATES, 2 * k))
        self._index.hnsw.efSearch = max(HNSW_EF_SEARCH, n_candidates)
        _, candidates = self._index.search(self._reduce(block), n_candidates)
        candidates = candidates.astype(np.int64)
        in_memory = _rows_in_memory(self._reference)
        if in_memory is not None:
            distances = self._rerank_in_memory(block, candidates, *in_memory)
        elif scan:
            distances = self._rerank_by_scan(block, candidates)
        else:
            distances = self._rerank_gathered(block, candidates)
        order = np.lexsort((candidates, distances), axis=-1)[:, :k]
        indices = np.take_along_axis(candidates, order, axis=1)
        distances = np.take_along_axis(distances, order, axis=1)
        indices[~np.isfinite(distances)] = -1
        return indices, distances

    def _rerank_in_memory(
        self,
        block: np.ndarray,
        candidates: np.ndarray,
        rows: np.ndarray,
        row_map: np.ndarray | None,
    ) -> np.ndarray:
        """Exact candidate distances by the compiled pair loop, reading ``rows`` in place
        (candidate c is row ``row_map[c]`` of a subset's source matrix)."""
        from shoal.analysis.rerank import pair_distances

        distances = np.full(candidates.shape, np.inf, dtype=np.float32)
        pairs = np.flatnonzero(candidates.ravel() >= 0)
        found = candidates.ravel()[pairs]
        distances.ravel()[pairs] = pair_distances(
            np.ascontiguousarray(block, dtype=np.float32),
            rows,
            pairs // candidates.shape[1],
            found if row_map is None else row_map[found],
            self._norms[found],
            self.metric == "cosine",
        )
        return distances

    def _rerank_by_scan(self, block: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Exact candidate distances by one pass over the reference in blocks of ``BLOCK_ROWS``
        rows (sequential reads of copies: no scattered page of a file gets mapped). Sorting the
        pairs by candidate row gives each block's pairs, which go to the compiled loop."""
        from shoal.analysis.rerank import pair_distances

        distances = np.full(candidates.shape, np.inf, dtype=np.float32)
        flat = candidates.ravel()
        pairs = np.flatnonzero(flat >= 0)
        pairs = pairs[np.argsort(flat[pairs], kind="stable")]
        sorted_rows = flat[pairs]
        queries = np.ascontiguousarray(block, dtype=np.float32)
        bounds = np.searchsorted(
            sorted_rows, np.arange(0, self.n_reference + BLOCK_ROWS, BLOCK_ROWS)
        )
        for number, (first, last) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            if first == last:
                continue
            start = number * BLOCK_ROWS
            rows = np.ascontiguousarray(
                self._reference[start : start + BLOCK_ROWS], dtype=np.float32
            )
            chosen = pairs[first:last]
            found = sorted_rows[first:last]
            distances.ravel()[chosen] = pair_distances(
                queries,
                rows,
                chosen // candidates.shape[1],
                found - start,
                self._norms[found],
                self.metric == "cosine",
            )
        return distances

    def _rerank_gathered(self, block: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Exact candidate distances from gathered copies of the candidates' rows: for a
        reference that is no float32 array (float16 storage, a row subset)."""
        distances = np.full(candidates.shape, np.inf, dtype=np.float32)
        # Query groups whose candidates' vectors come to about 16 MB: each distinct candidate
        # row is read once per group, in ascending order. Groups run on RERANK_THREADS threads
        # (numpy's gathers and products release the GIL): the reads, not the arithmetic, cost.
        step = max(1, (1 << 22) // max(1, candidates.shape[1] * self.dim))
        starts = range(0, len(block), step)

        def rerank(start: int) -> None:
            found = candidates[start : start + step]
            distances[start : start + step] = self._exact_distances(
                block[start : start + step], found
            )

        if len(starts) > 1 and RERANK_THREADS > 1:
            with ThreadPoolExecutor(RERANK_THREADS) as pool:
                list(pool.map(rerank, starts))
        else:
            for start in starts:
                rerank(start)
        return distances


def _rows_in_memory(reference: Any) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``(rows, row_map)`` when ``reference``'s rows are a float32 matrix in memory, or a
    :class:`~shoal.analysis.rows.RowSubset` of one (its source, and ``row_map`` the subset's
    row numbers; else None), which the compiled loop reads in place. None for a memory map or
    the store's reader: scattered reads of a file mapping map whole page-cache folios (about
    370 KB per 5 KB row, measured on ext4 with Linux 6.18), so a few thousand of them would
    leave most of the file in the resident set."""
    row_map = None
    if isinstance(reference, RowSubset):
        row_map, reference = reference.rows, reference.source
    if (
        type(reference) is not np.ndarray
        or reference.dtype != np.float32
        or reference.ndim != 2
        or not reference.flags.c_contiguous
    ):
        return None
    return reference, row_map


def _normalise_exclude(exclude: Any, n_queries: int) -> list[np.ndarray]:
    if exclude is None:
        return [np.empty(0, dtype=np.int64)] * n_queries
    exclude_list = list(exclude)
    if not exclude_list:
        return [np.empty(0, dtype=np.int64)] * n_queries
    if np.ndim(exclude_list[0]) == 0:
        shared = np.asarray(exclude_list, dtype=np.int64)
        return [shared] * n_queries
    if len(exclude_list) != n_queries:
        raise ValueError(f"exclude has {len(exclude_list)} entries for {n_queries} queries")
    return [np.asarray(e, dtype=np.int64).ravel() for e in exclude_list]


def _exact_block_search(
    block: np.ndarray,
    reference: np.ndarray,
    k: int,
    metric: str,
    reference_squared_norms: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of a query block against a prepared reference, in reference chunks."""
    n_reference = len(reference)
    best_idx = np.empty((len(block), 0), dtype=np.int64)
    best_dist = np.empty((len(block), 0), dtype=np.float32)
    # Chunk the reference so the similarity block stays around 256 MB at most.
    chunk = max(k, (1 << 26) // max(1, len(block)))
    block_norms = np.einsum("ij,ij->i", block, block) if metric == "euclidean" else None
    for start in range(0, n_reference, chunk):
        part = reference[start : start + chunk]
        products = block @ part.T
        if metric == "cosine":
            dist = np.clip(1.0 - products, 0.0, 2.0)
        else:
            assert reference_squared_norms is not None and block_norms is not None
            squared = block_norms[:, None] + reference_squared_norms[start : start + chunk][None, :]
            dist = np.sqrt(np.maximum(squared - 2.0 * products, 0.0))
        kk = min(k, dist.shape[1])
        if kk < dist.shape[1]:
            part_idx = np.argpartition(dist, kk - 1, axis=1)[:, :kk]
        else:
            part_idx = np.broadcast_to(np.arange(dist.shape[1]), dist.shape).copy()
        part_dist = np.take_along_axis(dist, part_idx, axis=1)
        best_idx = np.concatenate([best_idx, part_idx + start], axis=1)
        best_dist = np.concatenate([best_dist, part_dist.astype(np.float32)], axis=1)
        if best_idx.shape[1] > k:
            keep = np.argpartition(best_dist, k - 1, axis=1)[:, :k]
            best_idx = np.take_along_axis(best_idx, keep, axis=1)
            best_dist = np.take_along_axis(best_dist, keep, axis=1)
    # Sort ascending, ties broken by row number so results are deterministic.
    order = np.lexsort((best_idx, best_dist), axis=-1) if best_idx.size else best_idx
    return np.take_along_axis(best_idx, order, axis=1), np.take_along_axis(best_dist, order, axis=1)


def build_knn_graph(
    embeddings: np.ndarray,
    *,
    n_neighbors: int = 15,
    metric: str = "cosine",
    method: str = "auto",
    random_state: int = 0,
    index: NeighborIndex | None = None,
) -> KnnGraph:
    """The k nearest other samples of every sample.

    embeddings: (n_samples, dim), may be a memory map or the store's block reader; it is read in
    blocks. An exact search holds a normalised copy of the set; HNSW holds only its search graph
    over reduced vectors. ``method="auto"`` is exact up to ``EXACT_MAX_SAMPLES`` samples and HNSW
    beyond. ``index``: a NeighborIndex over ``embeddings`` already built (to keep it). Self-matches are removed, including when exact
    duplicates tie with the sample itself. With fewer than ``n_neighbors + 1`` samples the graph
    holds all ``n_samples - 1`` others.

    Example:
        >>> x = np.eye(4)
        >>> build_knn_graph(x, n_neighbors=2).distances[0]
        array([1., 1.], dtype=float32)
    """
    _check_metric(metric)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}")
    if getattr(embeddings, "ndim", 2) != 2:
        raise ValueError("embeddings must be 2-D (n_samples, dim)")
    n_samples = len(embeddings)
    k = min(n_neighbors, max(0, n_samples - 1))
    if method == "auto":
        method = "exact" if n_samples <= EXACT_MAX_SAMPLES else "hnsw"
    # faiss seeds HNSW level assignment itself (fixed seed); random_state seeds the PCA.
    params: dict[str, Any] = {"requested_n_neighbors": n_neighbors, "random_state": random_state}
    if method == "hnsw":
        params.update(
            M=HNSW_M,
            ef_construction=HNSW_EF_CONSTRUCTION,
            ef_search=HNSW_EF_SEARCH,
            reduced_dim=HNSW_REDUCED_DIM if embeddings.shape[1] > 2 * HNSW_REDUCED_DIM else None,
            min_candidates=HNSW_MIN_CANDIDATES,
        )
    if k == 0:
        empty_idx = np.zeros((n_samples, 0), dtype=np.int64)
        return KnnGraph(empty_idx, np.zeros((n_samples, 0), np.float32), metric, method, 0, params)

    if index is None:
        index = NeighborIndex(embeddings, metric=metric, method=method, random_state=random_state)
    elif (index.metric, index.method, index.n_reference) != (metric, method, n_samples):
        raise ValueError(
            f"the given index is {index.method} {index.metric} over {index.n_reference} rows, "
            f"not {method} {metric} over {n_samples}"
        )
    indices = np.empty((n_samples, k), dtype=np.int64)
    distances = np.empty((n_samples, k), dtype=np.float32)
    scan = method == "hnsw" and _rows_in_memory(index._reference) is None
    step = SCAN_QUERY_ROWS if scan else BLOCK_ROWS
    # One extra neighbour: the sample itself, removed below.
    for start in range(0, n_samples, step):
        stop = min(n_samples, start + step)
        block = index.vectors_[start:stop]
        if scan:
            found_idx, found_dist = index._hnsw_search(block, k + 1, scan=True)
        else:
            found_idx, found_dist = index._search_block(block, k + 1)
        indices[start:stop], distances[start:stop] = drop_self_matches(
            found_idx, found_dist, np.arange(start, stop), k
        )
    return KnnGraph(indices, distances, metric, method, k, params)


def drop_self_matches(
    found_idx: np.ndarray, found_dist: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own index (wherever exact ties put it), else its farthest neighbour.

    Approximate search can also return -1 (not enough candidates); those become the farthest
    real neighbour found so the graph never points nowhere.
    """
    is_self = found_idx == rows[:, None]
    # Rows where self is missing drop their last column instead.
    missing_self = ~is_self.any(axis=1)
    is_self[missing_self, -1] = True
    # Keep exactly one dropped entry per row (the first self occurrence).
    first = np.argmax(is_self, axis=1)
    keep = np.ones_like(is_self)
    keep[np.arange(len(rows)), first] = False
    out_idx = found_idx[keep].reshape(len(rows), -1)[:, :k]
    out_dist = found_dist[keep].reshape(len(rows), -1)[:, :k].astype(np.float32)
    invalid = out_idx < 0
    if invalid.any():
        for row in np.flatnonzero(invalid.any(axis=1)):
            valid = ~invalid[row]
            if valid.any():
                last = np.flatnonzero(valid)[-1]
                out_idx[row, ~valid] = out_idx[row, last]
                out_dist[row, ~valid] = out_dist[row, last]
            else:
                # No neighbour at all: point at self at infinite distance.
                out_idx[row] = rows[row]
                out_dist[row] = np.inf
    return out_idx, out_dist


def recall_at_k(approximate: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    """Mean share of each row's exact k nearest that the approximate graph also found (0..1)."""
    approximate, exact = approximate[:, :k], exact[:, :k]
    hits = sum(len(np.intersect1d(a, e)) for a, e in zip(approximate, exact, strict=True))
    return hits / exact.size if exact.size else 1.0
