"""UMAP's fuzzy neighbour graph (McInnes et al. 2018, umap-learn 0.5.12), in vectorised numpy.

umap-learn builds this graph with numba functions that are compiled again in every new process
(``parallel=True`` kernels are never cached): about 9 s of a `shoal project` run on a 50k set,
longer than the layout itself. The arithmetic is a per-row binary search and one exponential per
edge, which numpy does in well under a second for a million edges, so the projection builds the
graph here and hands it to umap-learn's layout. tests/analysis/test_fuzzy.py checks every value
against umap-learn's own functions.

Example:
    >>> import numpy as np
    >>> indices = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0]])
    >>> distances = np.array([[0, 1, 2], [0, 1, 1.5], [0, 1.5, 2]], dtype=np.float32)
    >>> graph = fuzzy_simplicial_set(indices, distances)
    >>> graph.shape, float(graph[0, 1])
    ((3, 3), 1.0)
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

#: umap-learn's constants (umap/umap_.py).
SMOOTH_K_TOLERANCE = 1e-5
MIN_K_DIST_SCALE = 1e-3
FLOAT32_MAX = float(np.finfo(np.float32).max)


def smooth_knn_dist(
    distances: np.ndarray,
    k: float,
    *,
    n_iter: int = 64,
    local_connectivity: float = 1.0,
    bandwidth: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's kernel width ``sigma`` and its distance to the nearest neighbour ``rho``:
    umap-learn's ``smooth_knn_dist``, all rows at once.

    distances: (n, width) float, each row's neighbour distances with the point itself first (its
    column is skipped in the sum, as in umap-learn). ``sigma`` is found by bisection so that
    ``sum_j exp(-(d_ij - rho_i) / sigma_i) = log2(k) * bandwidth``; rows stop once within
    ``SMOOTH_K_TOLERANCE``. Returns (sigmas, rhos), float32 (n,).
    """
    distances = np.asarray(distances, dtype=np.float32)
    n_rows = len(distances)
    target = np.float32(np.log2(k) * bandwidth)
    rho = _nearest_positive(distances, local_connectivity)

    low = np.zeros(n_rows, dtype=np.float32)
    high = np.full(n_rows, FLOAT32_MAX, dtype=np.float32)
    mid = np.ones(n_rows, dtype=np.float32)
    tail = distances[:, 1:]
    active = np.arange(n_rows)
    for _ in range(n_iter):
        if not len(active):
            break
        excess = tail[active] - rho[active, None]
        with np.errstate(over="ignore"):
            terms = np.where(excess > 0, np.exp(-(excess / mid[active, None])), np.float32(1.0))
        total = terms.sum(axis=1, dtype=np.float32)
        searching = np.abs(total - target) >= SMOOTH_K_TOLERANCE
        over = total > target
        shrink = active[searching & over]
        high[shrink] = mid[shrink]
        mid[shrink] = (low[shrink] + high[shrink]) / 2
        grow = active[searching & ~over]
        low[grow] = mid[grow]
        unbounded = high[grow] >= FLOAT32_MAX
        mid[grow[unbounded]] *= 2
        bounded = grow[~unbounded]
        mid[bounded] = (low[bounded] + high[bounded]) / 2
        active = active[searching]

    floor = np.where(
        rho > 0,
        MIN_K_DIST_SCALE * distances.mean(axis=1),
        MIN_K_DIST_SCALE * distances.mean(),
    ).astype(np.float32)
    return np.maximum(mid, floor), rho


def _nearest_positive(distances: np.ndarray, local_connectivity: float) -> np.ndarray:
    """umap-learn's ``rho``: the ``local_connectivity``-th smallest positive distance of each row
    (interpolated for a fractional value; the largest positive one when a row has fewer)."""
    positive = distances > 0
    n_positive = positive.sum(axis=1)
    rank = np.cumsum(positive, axis=1)

    def nth(n: int) -> np.ndarray:
        # The n-th positive entry in row order, as umap-learn's ``distances[distances > 0][n-1]``.
        return np.where(positive & (rank == n), distances, 0).sum(axis=1, dtype=np.float32)

    rho = np.zeros(len(distances), dtype=np.float32)
    enough = n_positive >= local_connectivity
    whole = int(np.floor(local_connectivity))
    fraction = local_connectivity - whole
    if whole > 0:
        rho[enough] = nth(whole)[enough]
        if fraction > SMOOTH_K_TOLERANCE:
            rho[enough] += fraction * (nth(whole + 1) - nth(whole))[enough]
    else:
        rho[enough] = fraction * nth(1)[enough]
    fewer = ~enough & (n_positive > 0)
    if fewer.any():
        rho[fewer] = np.where(positive[fewer], distances[fewer], 0).max(axis=1)
    return rho


def membership_strengths(
    indices: np.ndarray,
    distances: np.ndarray,
    sigmas: np.ndarray,
    rhos: np.ndarray,
    *,
    bipartite: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edge weights ``exp(-(d - rho) / sigma)`` (1 within ``rho``): umap-learn's
    ``compute_membership_strengths``. Missing neighbours (index -1) give no edge; unless
    ``bipartite``, a point's edge to itself weighs 0. Returns (rows, cols, vals) of the edges."""
    n_rows, width = indices.shape
    excess = np.asarray(distances, dtype=np.float32) - rhos[:, None]
    sigma = sigmas[:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        vals = np.exp(-(excess / sigma))
    vals = np.where((excess <= 0) | (sigma == 0), np.float32(1.0), vals).astype(np.float32)
    rows = np.broadcast_to(np.arange(n_rows, dtype=np.int32)[:, None], (n_rows, width))
    if not bipartite:
        vals[indices == rows] = 0.0
    present = indices != -1
    return rows[present], indices[present].astype(np.int32), vals[present]


def fuzzy_simplicial_set(
    indices: np.ndarray,
    distances: np.ndarray,
    *,
    local_connectivity: float = 1.0,
    set_op_mix_ratio: float = 1.0,
) -> scipy.sparse.csr_matrix:
    """The symmetric fuzzy graph UMAP lays out, from each point's neighbours.

    indices, distances: (n, k), each row the point itself first (distance 0) then its
    neighbours, -1 for a missing one: what umap-learn's ``fuzzy_simplicial_set`` takes as
    ``knn_indices`` / ``knn_dists``. The union (``set_op_mix_ratio=1``) of the directed weights
    and their transpose, as an (n, n) CSR matrix without explicit zeros.
    """
    n_rows, width = indices.shape
    sigmas, rhos = smooth_knn_dist(
        distances, float(width), local_connectivity=float(local_connectivity)
    )
    rows, cols, vals = membership_strengths(indices, distances, sigmas, rhos)
    directed = scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(n_rows, n_rows))
    directed.eliminate_zeros()
    transpose = directed.transpose().tocsr()
    both = directed.multiply(transpose)
    graph = set_op_mix_ratio * (directed + transpose - both) + (1.0 - set_op_mix_ratio) * both
    graph = scipy.sparse.csr_matrix(graph)
    graph.eliminate_zeros()
    return graph
