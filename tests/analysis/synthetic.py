"""Seeded synthetic embeddings for analysis tests and benchmarks (real data lives in fixtures)."""

from __future__ import annotations

import numpy as np


def clustered_embeddings(
    n_samples: int,
    *,
    dim: int = 128,
    n_clusters: int = 10,
    intrinsic_dim: int = 16,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (n_samples, dim) float32 >= 0, cluster labels): Gaussian clusters in a random
    low-dimensional subspace, lifted, noised and rectified like CNN pre-logits."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.5, size=(n_clusters, intrinsic_dim))
    labels = rng.integers(0, n_clusters, n_samples)
    latent = centres[labels] + rng.normal(size=(n_samples, intrinsic_dim))
    lift = rng.normal(size=(intrinsic_dim, dim)) / np.sqrt(intrinsic_dim)
    noise = 0.3 * rng.normal(size=(n_samples, dim))
    return np.maximum(latent @ lift + noise, 0.0).astype(np.float32), labels


def shifted_gaussians(
    n_reference: int, n_current: int, *, shift: float = 0.0, dim: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(reference, current) float32 Gaussian clouds; current moved by ``shift`` along axis 0."""
    rng = np.random.default_rng(seed)
    # An offset keeps the cloud away from the origin, so L2 normalisation does not erase it.
    offset = np.full(dim, 3.0)
    reference = rng.normal(size=(n_reference, dim)) + offset
    current = rng.normal(size=(n_current, dim)) + offset
    current[:, 0] += shift
    return reference.astype(np.float32), current.astype(np.float32)
