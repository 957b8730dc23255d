"""A directory of datasets: list, open, create (published in one rename), delete, and sweep
what crashed or finished work left behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from shoal.store.dataset import Dataset
from shoal.store.errors import DatasetNotFoundError, StoreError, validate_name
from shoal.store.files import (
    fsync_directory,
    make_dirs,
    replace_durably,
    utc_now,
    write_json,
)
from shoal.store.locks import exclusive, hold, release, unless_held

DEFAULT_WORKSPACE = "shoal-workspace"
WORKSPACE_ENV = "SHOAL_WORKSPACE"

DAY = 24 * 3600.0
#: A staging or upload folder nobody holds and nothing was written into for this long is removed.
SCRATCH_MAX_AGE = 1 * DAY
#: Query images (``.cache/queries/``, the Similar page's uploads) are kept this long.
QUERY_MAX_AGE = 30 * DAY
#: A folder younger than this is never swept: its creator may not hold it yet.
MIN_SWEEP_AGE = 60.0
#: The folders of scratch work, under the workspace root.
SCRATCH_AREAS = (".staging", ".uploads")


class Workspace:
    """A directory of datasets. ``root=None`` uses $SHOAL_WORKSPACE, else ./shoal-workspace."""

    def __init__(self, root: str | os.PathLike[str] | None = None):
        self.root = (
            Path(root or os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE).expanduser().resolve()
        )

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    def list_datasets(self) -> list[str]:
        if not self.datasets_dir.exists():
            return []
        return sorted(p.name for p in self.datasets_dir.iterdir() if (p / "dataset.json").exists())

    def exists(self, name: str) -> bool:
        return (self.datasets_dir / validate_name(name) / "dataset.json").exists()

    def open(self, name: str) -> Dataset:
        if not self.exists(name):
            known = ", ".join(self.list_datasets()) or "none"
            raise DatasetNotFoundError(
                f"no dataset {name!r} in workspace {self.root} (datasets: {known}); "
                "create one with `shoal import SOURCE --dataset NAME`"
            )
        try:
            uid = Dataset(self.datasets_dir / name).meta.get("uid")
        except StoreError:  # damaged metadata: still listed, described and deletable
            uid = None
        return Dataset(self.datasets_dir / name, uid=uid)

    def create(
        self, name: str, samples: pd.DataFrame, *, has_images: bool, staged: Path | None = None
    ) -> Dataset:
        """Create a dataset from a samples table.

        ``staged`` is a directory prepared by an importer (images already stored under it): it is
        moved into place in one rename, so a half-built dataset is never visible.
        """
        validate_name(name)
        with self._name_lock(name):  # two imports under one name: one wins, none is removed
            if self.exists(name):
                raise StoreError(
                    f"dataset {name!r} already exists; choose another name or `shoal delete {name}`"
                )
            staging = Path(staged) if staged is not None else self.staging_dir(name)
            target = self.datasets_dir / name
            uid = uuid.uuid4().hex
            try:
                Dataset(staging).write_samples(samples)
                write_json(
                    staging / "dataset.json",
                    {"name": name, "created_at": utc_now(), "has_images": has_images, "uid": uid},
                )
                if target.exists():  # leftover without dataset.json: a crashed earlier attempt
                    shutil.rmtree(target)
                make_dirs(target.parent)
                replace_durably(staging, target)
            except BaseException:
                if staged is None:  # our own staging folder: the importer's is its to remove
                    shutil.rmtree(staging, ignore_errors=True)
                raise
            finally:
                release(staging)
        return Dataset(target, uid=uid)

    def staging_dir(self, name: str) -> Path:
        """A fresh private directory on the same filesystem, for building a dataset before
        publishing; this process holds it (the sweep leaves it alone) until it is published."""
        return self.scratch_dir(".staging", f"{validate_name(name)}-")

    def scratch_dir(self, area: str, prefix: str) -> Path:
        """A fresh folder under ``area`` (``.staging`` or ``.uploads``) that this process holds
        while it lives, so :meth:`sweep` never removes it from under a running import.

        >>> folder = Workspace("/tmp/ws").scratch_dir(".uploads", "upload-")   # doctest: +SKIP
        """
        if area not in SCRATCH_AREAS:
            raise StoreError(f"unknown scratch area {area!r}; use one of {SCRATCH_AREAS}")
        base = self.root / area
        make_dirs(base)
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        hold(folder)
        fsync_directory(base)
        return folder

    def sweep(
        self, *, max_age: float = SCRATCH_MAX_AGE, query_max_age: float = QUERY_MAX_AGE
    ) -> list[Path]:
        """Remove what crashed or finished work left behind; returns what was removed.

        - folders in ``.staging/`` and ``.uploads/`` that no live process holds (see
          :meth:`scratch_dir`) and that nothing was written into for ``max_age`` seconds (an
          import killed half-way leaves one; one being filled is never touched);
        - leftovers in ``.trash/`` of deletes that were interrupted;
        - folders in ``datasets/`` without a ``dataset.json``, untouched for ``max_age``: what a
          job that outlived a delete recreated (``Dataset.check_current`` makes that rare);
        - query images in ``.cache/queries/`` older than ``query_max_age`` seconds.

        Finished job records are swept by the job runner (``shoal.jobs.runner.sweep``).

        >>> Workspace("/tmp/ws").sweep(max_age=3600)                           # doctest: +SKIP
        """
        now = time.time()
        removed: list[Path] = []
        for area in SCRATCH_AREAS:
            for entry in _entries(self.root / area):
                with unless_held(entry) if entry.is_dir() else _no_holder() as unused:
                    if unused and now - _last_written(entry) >= max(max_age, MIN_SWEEP_AGE):
                        if entry.is_dir():
                            shutil.rmtree(entry, ignore_errors=True)
                        else:
                            entry.unlink(missing_ok=True)
                        removed.append(entry)
        for leftover in _entries(self.root / ".trash"):
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
        for folder in _entries(self.datasets_dir):
            if (folder / "dataset.json").exists() or not folder.is_dir():
                continue
            if now - _last_written(folder) < max(max_age, MIN_SWEEP_AGE):
                continue
            with (
                contextlib.suppress(StoreError),
                self._name_lock(folder.name, wait=False),
            ):
                if not (folder / "dataset.json").exists():  # not created meanwhile
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
        for image in _entries(self.root / ".cache" / "queries"):
            with contextlib.suppress(OSError):
                if image.is_file() and now - image.stat().st_mtime > query_max_age:
                    image.unlink()
                    removed.append(image)
        return removed

    def delete(self, name: str) -> None:
        with self._name_lock(name):
            dataset = self.open(name)
            trash = self.root / ".trash" / f"{name}-{uuid.uuid4().hex[:8]}"
            make_dirs(trash.parent)
            replace_durably(dataset.root, trash)  # atomic: the dataset disappears at once
        shutil.rmtree(trash, ignore_errors=True)

    def _name_lock(
        self, name: str, *, wait: bool = True
    ) -> contextlib.AbstractContextManager[None]:
        return exclusive(
            self.root / ".locks" / f"dataset-{validate_name(name)}.lock", what=name, wait=wait
        )


@contextlib.contextmanager
def _no_holder() -> Iterator[bool]:
    yield True  # a stray file: nobody holds it


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []


def _last_written(path: Path) -> float:
    """The newest modification time of ``path`` and everything under it (0 when gone)."""
    try:
        newest = path.lstat().st_mtime
    except OSError:
        return 0.0
    if path.is_dir() and not path.is_symlink():
        for folder, subfolders, files in os.walk(path):
            for name in (*subfolders, *files):
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
    return newest
