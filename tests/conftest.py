"""Fixtures shared across the suite: an empty workspace, the bundled real sample images, and the
real embeddings fixture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.real_data import load_real
from shoal.store import Workspace

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = REPO / "sample_data" / "tuxpaint"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REAL_EMBEDDINGS = FIXTURES / "real_embeddings.npz"


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws")


@pytest.fixture(scope="session")
def sample_images() -> Path:
    return SAMPLE_IMAGES


@pytest.fixture(scope="session")
def embedded_sample(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace holding the bundled sample dataset with real EfficientNet-Lite0 embeddings."""
    from shoal.cli.demo import ensure_sample_dataset

    workspace = Workspace(tmp_path_factory.mktemp("sample-ws"))
    ensure_sample_dataset(workspace)
    return workspace


@pytest.fixture(scope="session")
def real() -> dict[str, np.ndarray]:
    """Real EfficientNet-Lite0 embeddings (float32) of Fashion-MNIST, photos and digits."""
    if not REAL_EMBEDDINGS.exists():
        pytest.skip(f"{REAL_EMBEDDINGS} is missing; build it with scripts/make_fixtures.py")
    return load_real(REAL_EMBEDDINGS)


@pytest.fixture(scope="session")
def street(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Any, list[Any]]:
    """The detection fixture (4 real VOC photos, 31 labelled boxes, 15 predictions) imported
    with its predictions, every box embedded by a real 'embed-objects' job: (workspace, the
    job's record, the progress it reported)."""
    from shoal import jobs
    from tests.shoal.ingest.detection_fixture import import_street

    ws = Workspace(tmp_path_factory.mktemp("street-ws"))
    import_street(ws)
    seen: list[Any] = []
    record = jobs.run_inline(
        ws,
        "embed-objects",
        dataset="street",
        params={"model": "efficientnet_lite0"},
        observer=seen.append,
    )
    assert record.state == "done", record.error
    return ws, record, seen
