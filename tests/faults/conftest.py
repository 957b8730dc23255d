"""Fixtures of the fault-injection suite: real photos, a fresh workspace, and a small disk of
its own (see harness.py for the helpers that freeze and kill real processes)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.store import Workspace
from tests.faults.harness import SmallDisk, copy_images, mount_tmpfs


@pytest.fixture(scope="session")
def photos_16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_images(tmp_path_factory.mktemp("photos16"), 16)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 24 MiB tmpfs mounted for this test and unmounted after it (where mounting is not
    allowed, a plain folder whose writers get a file size limit: see SmallDisk)."""
    root = tmp_path / "disk"
    mounted = mount_tmpfs(root, "24m")
    try:
        yield SmallDisk(root, mounted=mounted)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", root], check=False)


@pytest.fixture
def fresh_workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws")
