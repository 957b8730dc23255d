"""Exact distances between query rows and reference rows, pair by pair, compiled.

The HNSW index (:mod:`shoal.analysis.knn`) proposes candidates in a reduced space; each returned
distance is then computed exactly from the full rows. Gathering those rows with numpy copies
``queries x candidates x dim`` floats (12 GB for a 50k graph with 48 candidates of 1280-d); this
compiled loop reads each pair's two rows where they lie and keeps one number per pair: 0.8 s
instead of 4.3 s for the 50k graph on two cores. The rows are an in-memory matrix, or one block
of a stored set read in turn (the graph of a set on disk re-ranks by passes over its blocks, so
no scattered page of the file is mapped).

Compiled once per machine: numba keeps the machine code on disk (``cache=True``).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, fastmath=True, cache=True)
def pair_distances(
    queries: np.ndarray,
    rows: np.ndarray,
    query_of_pair: np.ndarray,
    row_of_pair: np.ndarray,
    norm_of_pair: np.ndarray,
    cosine: bool,
) -> np.ndarray:  # pragma: no cover - compiled; tests/analysis/test_knn.py checks it against numpy
    """(n_pairs,) float32 distances between ``queries[query_of_pair[p]]`` and
    ``rows[row_of_pair[p]]``: cosine ``1 - q.x / |x|`` (queries already unit length,
    ``norm_of_pair`` the rows' norms; a zero row is at distance 1) or Euclidean.

    queries: (n_queries, dim) float32; rows: (n_rows, dim) float32, raw; the rest (n_pairs,).
    """
    n_pairs = len(query_of_pair)
    dim = queries.shape[1]
    out = np.empty(n_pairs, dtype=np.float32)
    for p in numba.prange(n_pairs):
        i = query_of_pair[p]
        row = row_of_pair[p]
        total = np.float32(0.0)
        if cosine:
            for d in range(dim):
                total += queries[i, d] * rows[row, d]
            norm = norm_of_pair[p]
            similarity = total / norm if norm > 0 else np.float32(0.0)
            out[p] = min(max(np.float32(1.0) - similarity, np.float32(0.0)), np.float32(2.0))
        else:
            for d in range(dim):
                diff = queries[i, d] - rows[row, d]
                total += diff * diff
            out[p] = np.sqrt(total)
    return out
