"""A full disk under the workspace (a small tmpfs): import, embed and publish until it fills.
The user gets one clear "no space left" line naming what failed, nothing half-written is
visible, what was published before stays readable, and once space is freed the next run works."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from shoal import jobs
from shoal.ingest.images import import_source
from shoal.store import Workspace
from tests.faults.harness import SmallDisk, shoal_command

pytestmark = pytest.mark.faults

LITE0 = "efficientnet_lite0"


def _clear_failure(result, *, naming: str) -> str:
    """The one-line message of a command that failed for lack of space."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert "error: no space left to write" in message, message
    assert naming in message and "free some disk space" in message.lower(), message
    return message


def _published_before(workspace: Workspace, photos: Path) -> np.ndarray:
    """A dataset 'kept' with an embedding set, published while there was room."""
    import_source(workspace, photos, dataset="kept")
    ds = workspace.open("kept")
    vectors = np.random.default_rng(0).normal(size=(16, 32)).astype(np.float32)
    ds.publish_embeddings("old", vectors, ds.samples()["sample_id"], model="m")
    return vectors


def _still_readable(workspace: Workspace, vectors: np.ndarray) -> None:
    ds = workspace.open("kept")
    assert len(ds.samples()) == 16
    np.testing.assert_array_equal(ds.load_embeddings("old").vectors, vectors)
    assert all(ds.image_file(p).is_file() for p in ds.samples()["path"])


def test_import_into_a_full_disk(small_disk: SmallDisk, photos_16: Path) -> None:
    workspace = Workspace(small_disk.root / "ws")
    kept = _published_before(workspace, photos_16)
    command = shoal_command(
        "import", str(photos_16), "--dataset", "pets", "--workspace", str(workspace.root)
    )
    with small_disk.full(leave=64 << 10):
        failed = small_disk.run(command)
        _clear_failure(failed, naming="pets")
        assert workspace.list_datasets() == ["kept"]  # nothing half-imported is visible
        assert not any((workspace.root / ".staging").iterdir())  # and nothing is left behind
        _still_readable(workspace, kept)
    again = small_disk.run(command)
    assert again.returncode == 0, again.stderr
    assert len(workspace.open("pets").samples()) == 16


def test_embed_into_a_full_disk(small_disk: SmallDisk, photos_16: Path) -> None:
    workspace = Workspace(small_disk.root / "ws")
    kept = _published_before(workspace, photos_16)
    command = shoal_command(
        "embed", "kept", "--batch-size", "2", "--workspace", str(workspace.root)
    )
    with small_disk.full(leave=48 << 10):
        failed = small_disk.run(command)
        _clear_failure(failed, naming="kept")
        ds = workspace.open("kept")
        assert ds.embedding_names() == ["old"]  # no half-written set
        _still_readable(workspace, kept)
        [record] = jobs.list_jobs(workspace, dataset="kept")
        assert record.state == "failed" and "no space left" in (record.error or "")
    seen: list[jobs.JobProgress] = []
    again = jobs.run_inline(
        workspace, "embed", dataset="kept", params={"batch_size": 2}, observer=seen.append
    )
    assert again.state == "done", again.error
    if small_disk.mounted:
        assert seen[0].done > 0  # the batches that fitted were kept
    assert workspace.open("kept").load_embeddings(LITE0).vectors.shape == (16, 1280)
    _still_readable(workspace, kept)


PUBLISH = """
import sys
import numpy as np
from shoal.cli import main
from shoal.store import StoreError, Workspace
ds = Workspace(sys.argv[1]).open("kept")
vectors = np.ones((16, int(sys.argv[2])), np.float32)
try:
    ds.publish_embeddings("old", vectors, ds.samples()["sample_id"], model="new")
except StoreError as error:
    print(f"publish: error: {error}", file=sys.stderr)
    sys.exit(2)
"""


@pytest.mark.parametrize("width", [64 << 10, 512])
def test_publish_into_a_full_disk(small_disk: SmallDisk, photos_16: Path, width: int) -> None:
    """A new version of a set that does not fit (``width`` 64Ki: the matrix; 512: only the
    ids or the pointer after it) leaves the published version as it was, and no stray files."""
    workspace = Workspace(small_disk.root / "ws")
    kept = _published_before(workspace, photos_16)
    embeddings = workspace.open("kept").root / "embeddings"
    before = sorted(p.name for p in embeddings.iterdir())
    command = [sys.executable, "-c", PUBLISH, str(workspace.root), str(width)]
    with small_disk.full(leave=(16 * width * 4 + 8192) if width == 512 else 64 << 10):
        failed = small_disk.run(command)
        _clear_failure(failed, naming="old")
        _still_readable(workspace, kept)
        assert sorted(p.name for p in embeddings.iterdir()) == before
    again = small_disk.run(command)
    assert again.returncode == 0, again.stderr
    assert workspace.open("kept").load_embeddings("old").info.model == "new"
