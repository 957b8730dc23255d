"""Fixtures for the analysis tests: the real embeddings fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REAL_EMBEDDINGS = Path(__file__).resolve().parents[1] / "fixtures" / "real_embeddings.npz"


@pytest.fixture(scope="session")
def real() -> dict[str, np.ndarray]:
    """Real EfficientNet-Lite0 embeddings (float32) of Fashion-MNIST, photos and digits."""
    if not REAL_EMBEDDINGS.exists():
        pytest.skip(f"{REAL_EMBEDDINGS} is missing; build it with scripts/make_fixtures.py")
    with np.load(REAL_EMBEDDINGS, allow_pickle=False) as data:
        return {
            key: data[key].astype(np.float32) if data[key].dtype == np.float16 else data[key]
            for key in data.files
        }
