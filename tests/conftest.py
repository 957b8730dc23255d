"""Fixtures shared across the suite: an empty workspace and the bundled real sample images."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.store import Workspace

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = REPO / "sample_data" / "tuxpaint"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws")


@pytest.fixture(scope="session")
def sample_images() -> Path:
    return SAMPLE_IMAGES


@pytest.fixture(scope="session")
def embedded_sample(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace holding the bundled sample dataset with real EfficientNet-Lite0 embeddings."""
    from shoal.demo import ensure_sample_dataset

    workspace = Workspace(tmp_path_factory.mktemp("sample-ws"))
    ensure_sample_dataset(workspace)
    return workspace
