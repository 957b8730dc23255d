"""The one PCA of the analysis kernels, streamed in row blocks so it runs on memory maps.

The kNN index searches wide vectors in a reduced copy (:mod:`shoal.analysis.knn`), the projection
lays out UMAP from PCA scores (:mod:`shoal.analysis.projection`), the comparison runs its two-sample
tests and clusters on them (:mod:`shoal.analysis.two_sample`, :mod:`shoal.analysis.compare`) and Isolation
Forest scores in them (:mod:`shoal.analysis.outliers`).

Fit: at most ``max_fit_rows`` seeded random rows, gathered in ascending order and in blocks
(a memory map is read sequentially and never converted whole; the fit holds at most
``max_fit_rows`` x dim float32), centred, then a randomised SVD (Halko et al. 2011; the steps of
sklearn's ``randomized_svd``, in :func:`randomized_axes`) with ``POWER_ITERATIONS`` power
iterations: on real 1280-d embeddings its 50 axes keep 99.9 % of the variance of the exact top
50, at a third of the cost of an exact decomposition. ``transform`` projects any number of rows block by block. Each axis' sign is fixed
(largest entry positive), so the same data and ``random_state`` give the same axes.

Example:
    >>> x = np.random.default_rng(0).normal(size=(500, 20)) * np.arange(1, 21)
    >>> pca = BlockPCA(n_components=3).fit(x)
    >>> pca.transform(x).shape, np.abs(pca.components_).argmax(axis=1).tolist()
    ((500, 3), [19, 18, 17])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shoal.analysis.blocks import BLOCK_ROWS, l2_normalize, sample_rows, take_rows

#: Axes are fitted on at most this many rows (plenty for 50 axes), then every row is projected.
MAX_FIT_ROWS = 20_000
#: Power iterations of the randomised SVD: 4 keeps 99.9 % of the exact axes' variance on real
#: embeddings (2 kept 99.7 %, 7 costs 60 % more for the last 0.05 %).
POWER_ITERATIONS = 4


class BlockPCA:
    """Principal axes of (n_samples, dim) embeddings; ``transform`` gives float32 scores.

    normalize: L2-normalise rows first (fit and transform), so Euclidean geometry of the scores
    follows cosine geometry of the input. ``n_components`` is capped at ``dim`` and at
    ``n_fit_rows - 1`` (centred rows span no more). Fitted: ``mean_`` (dim,) and
    ``components_`` (n_components_, dim), float32, as in sklearn's PCA.
    """

    def __init__(
        self,
        n_components: int = 50,
        *,
        normalize: bool = False,
        max_fit_rows: int = MAX_FIT_ROWS,
        random_state: int = 0,
    ):
        self.n_components = n_components
        self.normalize = normalize
        self.max_fit_rows = max_fit_rows
        self.random_state = random_state

    def fit(self, embeddings: np.ndarray) -> BlockPCA:
        n_samples, dim = embeddings.shape
        if n_samples == 0:
            raise ValueError("cannot fit a PCA on 0 samples")
        rows = sample_rows(n_samples, self.max_fit_rows, np.random.default_rng(self.random_state))
        fit_rows = take_rows(embeddings, rows)
        for start in range(0, len(fit_rows), BLOCK_ROWS):
            fit_rows[start : start + BLOCK_ROWS] = self._prepare(
                fit_rows[start : start + BLOCK_ROWS]
            )
        mean = fit_rows.mean(axis=0, dtype=np.float64).astype(np.float32)
        fit_rows -= mean
        n_components = max(1, min(self.n_components, dim, len(rows) - 1))
        with single_threaded():
            components = randomized_axes(
                fit_rows, n_components, n_iter=POWER_ITERATIONS, random_state=self.random_state
            )
        components = np.ascontiguousarray(components, dtype=np.float32)
        signs = np.sign(components[np.arange(n_components), np.abs(components).argmax(axis=1)])
        components *= np.where(signs == 0, 1, signs).astype(np.float32)[:, None]
        self.mean_ = mean
        self.components_ = components
        self.n_components_ = n_components
        return self

    @classmethod
    def from_axes(
        cls, mean: np.ndarray, components: np.ndarray, *, normalize: bool = False
    ) -> BlockPCA:
        """A fitted PCA from stored axes: ``mean_`` (dim,) and ``components_`` (k, dim)."""
        pca = cls(len(components), normalize=normalize)
        pca.mean_ = np.asarray(mean, dtype=np.float32)
        pca.components_ = np.ascontiguousarray(components, dtype=np.float32)
        pca.n_components_ = len(components)
        return pca

    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        """(n_samples, n_components_) float32 scores, computed block by block."""
        scores = np.empty((len(embeddings), self.n_components_), dtype=np.float32)
        for start in range(0, len(embeddings), BLOCK_ROWS):
            block = self._prepare(embeddings[start : start + BLOCK_ROWS])
            scores[start : start + len(block)] = (block - self.mean_) @ self.components_.T
        return scores

    def fit_transform(self, embeddings: np.ndarray) -> np.ndarray:
        return self.fit(embeddings).transform(embeddings)

    def _prepare(self, block: np.ndarray) -> np.ndarray:
        if self.normalize:
            return l2_normalize(block)
        return np.asarray(block, dtype=np.float32)


#: Extra random directions of the randomised SVD (sklearn's ``n_oversamples``).
OVERSAMPLES = 10


def randomized_axes(
    matrix: np.ndarray, n_components: int, *, n_iter: int, random_state: int = 0
) -> np.ndarray:
    """(n_components, dim): the leading right singular vectors of ``matrix`` (n_rows, dim), by
    sklearn's ``randomized_svd`` (Halko et al. 2011: LU-normalised power iterations, the narrower
    side transposed), the same steps on the same random start, so the same axes up to sign.

    Here rather than imported: scikit-learn costs 1 to 1.6 s to import, in every process that
    builds a search index or a map.
    """
    from scipy import linalg

    transpose = matrix.shape[0] < matrix.shape[1]
    if transpose:
        matrix = matrix.T
    start = np.random.RandomState(random_state).normal(
        size=(matrix.shape[1], n_components + OVERSAMPLES)
    )
    basis = start.astype(matrix.dtype, copy=False) if matrix.dtype == np.float32 else start
    for _ in range(n_iter):
        basis, _ = linalg.lu(matrix @ basis, permute_l=True, check_finite=False)
        basis, _ = linalg.lu(matrix.T @ basis, permute_l=True, check_finite=False)
    basis, _ = linalg.qr(matrix @ basis, mode="economic", check_finite=False)
    left, _, right = linalg.svd(basis.T @ matrix, full_matrices=False, check_finite=False)
    if transpose:
        return (basis @ left)[:, :n_components].T
    return right[:n_components]


def single_threaded() -> Any:
    """Context manager: BLAS, LAPACK and OpenMP on one thread. For bounded-size steps (the PCA
    fit, KMeans on a subsample) whose many mid-sized calls gain little from threads and stall
    badly when the cores are shared: a 2000 x 1280 fit took 0.06 s on one thread and 0.2 to
    0.9 s on two busy cores."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)
