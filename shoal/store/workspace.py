"""A directory of datasets: list, open, create (published in one rename), delete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pandas as pd

from shoal.store.dataset import Dataset
from shoal.store.errors import DatasetNotFoundError, StoreError, validate_name
from shoal.store.files import utc_now, write_json
from shoal.store.locks import exclusive

DEFAULT_WORKSPACE = "shoal-workspace"
WORKSPACE_ENV = "SHOAL_WORKSPACE"


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
        return Dataset(
            self.datasets_dir / name, uid=Dataset(self.datasets_dir / name).meta.get("uid")
        )

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
            staging_ds = Dataset(staging)
            staging_ds.write_samples(samples)
            uid = uuid.uuid4().hex
            write_json(
                staging / "dataset.json",
                {"name": name, "created_at": utc_now(), "has_images": has_images, "uid": uid},
            )
            if target.exists():  # leftover without dataset.json: a crashed earlier attempt
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, target)
        return Dataset(target, uid=uid)

    def staging_dir(self, name: str) -> Path:
        """A fresh private directory on the same filesystem, for building a dataset before publishing."""
        base = self.root / ".staging"
        base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{validate_name(name)}-", dir=base))

    def delete(self, name: str) -> None:
        with self._name_lock(name):
            dataset = self.open(name)
            trash = self.root / ".trash" / f"{name}-{uuid.uuid4().hex[:8]}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.replace(dataset.root, trash)  # atomic: the dataset disappears at once
        shutil.rmtree(trash, ignore_errors=True)

    def _name_lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        return exclusive(self.root / ".locks" / f"dataset-{validate_name(name)}.lock", what=name)
