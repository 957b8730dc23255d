"""Crash consistency of the store's writes: a rename (an atomic write, a dataset published or
deleted, an embedding set switched) is followed by an fsync of its directory, and a folder
created on the way is fsynced into its parent, so the rename survives a power cut."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shoal.store import Workspace, write_json

pytestmark = pytest.mark.faults


@pytest.fixture
def syscalls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every os.replace and os.fsync of the store, in order, with the path each one touched."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_mkdir = os.fsync, os.replace, os.mkdir

    def fsync(descriptor: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def replace(source, target, **options) -> None:
        real_replace(source, target, **options)
        events.append(("replace", os.path.realpath(target)))

    def mkdir(path, *args, **options) -> None:
        real_mkdir(path, *args, **options)
        events.append(("mkdir", os.path.realpath(path)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "mkdir", mkdir)
    return events


def _durable(events: list[tuple[str, str]]) -> None:
    """After each rename or new folder, its directory is fsynced before the next rename."""
    for position, (kind, path) in enumerate(events):
        if kind not in ("replace", "mkdir"):
            continue
        parent = str(Path(path).parent)
        following = []
        for later in events[position + 1 :]:
            if later[0] == "replace":
                break
            following.append(later)
        assert ("fsync", parent) in following, (kind, path, following)


def test_renames_and_new_folders_are_fsynced_into_their_directory(
    tmp_path: Path, syscalls: list[tuple[str, str]]
) -> None:
    root = tmp_path.resolve()
    write_json(root / "new" / "folders" / "file.json", {"a": 1})
    workspace = Workspace(root / "ws")
    samples = pd.DataFrame(
        {"sample_id": ["s0", "s1"], "source": ["a", "b"], "path": [None] * 2}
        | {"split": [None] * 2, "label": [None] * 2}
    )
    ds = workspace.create("pets", samples, has_images=False)
    ds.publish_embeddings("e", np.ones((2, 3), np.float32), ["s0", "s1"], model="m")
    workspace.delete("pets")

    replaced = [path for kind, path in syscalls if kind == "replace"]
    assert str(root / "new" / "folders" / "file.json") in replaced
    assert str(root / "ws" / "datasets" / "pets") in replaced  # the dataset published
    assert str(root / "ws" / "datasets" / "pets" / "embeddings" / "e.json") in replaced
    assert any(path.startswith(str(root / "ws" / ".trash")) for path in replaced)  # deleted
    assert ("mkdir", str(root / "new")) in syscalls
    _durable(syscalls)
