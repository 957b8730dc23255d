"""The workspace store: one directory of datasets, every write atomic.

Layout::

    <workspace>/
      datasets/<name>/
        dataset.json              name, created_at, has_images
        samples.parquet           one row per sample (sample_id, source, path, split, label, ...)
        objects.parquet           optional, one row per labelled or predicted box
        import_report.json        what the import accepted and rejected, and why
        images/<ab>/<sha256>.<ext> content-addressed copies of the uploaded images
        embeddings/<name>.json    pointer to the current version + model, dim, preprocessing
        embeddings/<name>-<version>.npy / .ids.npy   the matrix (memory-mappable) and its row ids
        embeddings/.partial-<name>/                  resumable per-batch checkpoints
        artefacts/<kind>/<key>.npz + .json           kNN graph, projection, scores, ...
      jobs/                       the job runner's records

Writers go through a temporary file in the same directory and ``os.replace``, so a crash at any
moment leaves the previous state readable, and a reader sees either the old or the new file.
An embedding set is published by replacing only its small JSON pointer: the matrix it names is
written in full first, under a fresh version name.

Example:
    >>> ws = Workspace("/tmp/ws")                                        # doctest: +SKIP
    >>> ds = ws.open("flowers"); ds.samples().head()                     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_WORKSPACE = "shoal-workspace"
WORKSPACE_ENV = "SHOAL_WORKSPACE"
MAX_NAME_LENGTH = 64
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
REQUIRED_COLUMNS = ("sample_id", "source", "path", "split", "label")


class StoreError(Exception):
    """A store operation failed for a reason the user can act on."""


class DatasetNotFoundError(StoreError):
    pass


class InvalidNameError(StoreError):
    pass


def validate_name(name: str, *, what: str = "dataset") -> str:
    """Return ``name`` if it is safe as a single path component, else raise InvalidNameError."""
    if not isinstance(name, str) or not name:
        raise InvalidNameError(f"{what} name must be a non-empty string")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"{what} name {name[:20]!r}... is longer than {MAX_NAME_LENGTH} characters"
        )
    if name in (".", "..") or not _NAME_PATTERN.match(name) or ".." in name:
        raise InvalidNameError(
            f"{what} name {name!r} is not allowed: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (no path separators, no '..')"
        )
    return name


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(target: Path, payload: Any) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=_json_default))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_parquet(target: Path, frame: pd.DataFrame) -> None:
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)


def write_npy(target: Path, array: np.ndarray) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------- embeddings


@dataclass(frozen=True)
class EmbeddingInfo:
    """What an embedding set is: where it came from and how it was made."""

    name: str
    model: str
    dim: int
    count: int
    level: str = "sample"  # 'sample' rows align to samples.sample_id, 'object' to objects.object_id
    preprocessing: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    version: str = ""
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EmbeddingSet:
    """vectors: (count, dim) float32, possibly memory-mapped; ids: (count,) str, row for row."""

    vectors: np.ndarray
    ids: np.ndarray
    info: EmbeddingInfo


def artefact_key(info: EmbeddingInfo, **params: Any) -> str:
    """A stable key for an artefact computed from one embedding version with these parameters."""
    payload = json.dumps(
        {"embedding": info.name, "version": info.version, "params": params},
        sort_keys=True,
        default=_json_default,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


# --------------------------------------------------------------------------- dataset


class Dataset:
    """One dataset directory. Cheap to construct; reads happen on demand."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.name = self.root.name

    def __repr__(self) -> str:
        return f"Dataset({self.name!r})"

    # -- metadata
    @property
    def meta(self) -> dict[str, Any]:
        return dict(read_json(self.root / "dataset.json"))

    def update_meta(self, **changes: Any) -> None:
        meta = self.meta
        meta.update(changes)
        write_json(self.root / "dataset.json", meta)

    @property
    def has_images(self) -> bool:
        return bool(self.meta.get("has_images", False))

    # -- samples
    def samples(self) -> pd.DataFrame:
        return pd.read_parquet(self.root / "samples.parquet")

    def write_samples(self, frame: pd.DataFrame) -> None:
        write_parquet(self.root / "samples.parquet", _check_samples(frame))

    def image_file(self, stored_path: str) -> Path:
        """Absolute path of a stored image, given the samples table's ``path`` value."""
        if (
            not stored_path
            or stored_path.startswith(("/", "\\"))
            or ".." in Path(stored_path).parts
        ):
            raise StoreError(f"invalid stored image path {stored_path!r}")
        return self.root / stored_path

    def store_image(self, source_file: Path, suffix: str) -> str:
        """Copy an image file in, content-addressed; return its ``path`` relative to the dataset."""
        digest = _sha256_file(source_file)
        relative = f"images/{digest[:2]}/{digest}{suffix.lower()}"
        target = self.root / relative
        if not target.exists():
            with atomic_path(target) as tmp:
                shutil.copyfile(source_file, tmp)
        return relative

    # -- objects (detection datasets)
    def objects(self) -> pd.DataFrame | None:
        path = self.root / "objects.parquet"
        return pd.read_parquet(path) if path.exists() else None

    def write_objects(self, frame: pd.DataFrame) -> None:
        write_parquet(self.root / "objects.parquet", frame)

    # -- import report
    def import_report(self) -> dict[str, Any] | None:
        path = self.root / "import_report.json"
        return read_json(path) if path.exists() else None

    def write_import_report(self, report: dict[str, Any]) -> None:
        write_json(self.root / "import_report.json", report)

    # -- embeddings
    @property
    def _embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    def embedding_names(self) -> list[str]:
        if not self._embeddings_dir.exists():
            return []
        return sorted(
            p.stem for p in self._embeddings_dir.glob("*.json") if not p.name.startswith(".")
        )

    def default_embedding(self, *, level: str = "sample") -> str | None:
        names = [n for n in self.embedding_names() if self.embedding_info(n).level == level]
        preferred = self.meta.get("default_embedding")
        if preferred in names:
            return str(preferred)
        return names[0] if names else None

    def embedding_info(self, name: str) -> EmbeddingInfo:
        validate_name(name, what="embedding")
        pointer = self._embeddings_dir / f"{name}.json"
        if not pointer.exists():
            available = ", ".join(self.embedding_names()) or "none yet"
            raise StoreError(
                f"dataset {self.name!r} has no embedding set {name!r} (available: {available}); "
                f"run `shoal embed {self.name}` or `shoal add-embeddings {self.name} FILE`"
            )
        return EmbeddingInfo(**read_json(pointer))

    def resolve_embedding(self, name: str | None, *, level: str = "sample") -> str:
        if name:
            return name
        default = self.default_embedding(level=level)
        if default is None:
            raise StoreError(
                f"dataset {self.name!r} has no {level}-level embeddings yet; run `shoal embed {self.name}`"
                + ("" if level == "sample" else " --objects")
                + f" or `shoal add-embeddings {self.name} FILE`"
            )
        return default

    def load_embeddings(
        self, name: str | None = None, *, mmap: bool = True, level: str = "sample"
    ) -> EmbeddingSet:
        resolved = self.resolve_embedding(name, level=level)
        for attempt in range(5):
            info = self.embedding_info(resolved)
            base = self._embeddings_dir / f"{info.name}-{info.version}"
            try:
                vectors = np.load(
                    f"{base}.npy", mmap_mode="r" if mmap else None, allow_pickle=False
                )
                ids = np.load(f"{base}.ids.npy", allow_pickle=False)
            except FileNotFoundError:
                # A writer published a newer version and removed this one between our two reads.
                if attempt == 4:
                    raise
                time.sleep(0.05)
                continue
            return EmbeddingSet(vectors=vectors, ids=ids, info=info)
        raise AssertionError("unreachable")

    def save_embeddings(
        self,
        name: str,
        vectors: np.ndarray,
        ids: np.ndarray | list[str],
        *,
        model: str,
        preprocessing: dict[str, Any] | None = None,
        level: str = "sample",
    ) -> EmbeddingInfo:
        """Publish an embedding set atomically; earlier versions are removed after the switch."""
        validate_name(name, what="embedding")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids_array = np.asarray([str(i) for i in ids], dtype=str)
        if vectors.ndim != 2:
            raise StoreError(f"embeddings must be a 2-D matrix, got shape {vectors.shape}")
        if len(ids_array) != len(vectors):
            raise StoreError(f"{len(vectors)} embedding rows but {len(ids_array)} ids")
        if not np.isfinite(vectors).all():
            raise StoreError("embeddings contain NaN or inf")
        version = f"{int(time.time())}{uuid.uuid4().hex[:6]}"
        base = self._embeddings_dir / f"{name}-{version}"
        write_npy(Path(f"{base}.npy"), vectors)
        write_npy(Path(f"{base}.ids.npy"), ids_array)
        info = EmbeddingInfo(
            name=name,
            model=model,
            dim=int(vectors.shape[1]),
            count=int(vectors.shape[0]),
            level=level,
            preprocessing=dict(preprocessing or {}),
            created_at=utc_now(),
            version=version,
        )
        write_json(self._embeddings_dir / f"{name}.json", info.to_dict())
        for stale in self._embeddings_dir.glob(f"{name}-*.npy"):
            # Readers that already mapped an old version keep its inode alive until they close it.
            if not stale.name.startswith(f"{name}-{version}") and _version_of(stale.name, name):
                stale.unlink(missing_ok=True)
        shutil.rmtree(self.partial_dir(name), ignore_errors=True)
        return info

    def delete_embeddings(self, name: str) -> None:
        validate_name(name, what="embedding")
        (self._embeddings_dir / f"{name}.json").unlink(missing_ok=True)
        for stale in self._embeddings_dir.glob(f"{name}-*.npy"):
            if _version_of(stale.name, name):
                stale.unlink(missing_ok=True)

    def partial_dir(self, name: str) -> Path:
        validate_name(name, what="embedding")
        return self._embeddings_dir / f".partial-{name}"

    # -- artefacts
    def _artefact_base(self, kind: str, key: str) -> Path:
        validate_name(kind, what="artefact kind")
        validate_name(key, what="artefact key")
        return self.root / "artefacts" / kind / key

    def save_artefact(
        self, kind: str, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]
    ) -> None:
        """Store arrays (npz, no pickles) and JSON metadata; the JSON is written last and marks completion."""
        base = self._artefact_base(kind, key)
        with atomic_path(base.with_suffix(".npz")) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
        write_json(base.with_suffix(".json"), {"saved_at": utc_now(), **meta})

    def load_artefact(
        self, kind: str, key: str
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        base = self._artefact_base(kind, key)
        meta_path, data_path = base.with_suffix(".json"), base.with_suffix(".npz")
        if not meta_path.exists() or not data_path.exists():
            return None
        meta = read_json(meta_path)
        with np.load(data_path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        return arrays, meta

    def describe(self) -> dict[str, Any]:
        samples = self.samples()
        embeddings = [self.embedding_info(n).to_dict() for n in self.embedding_names()]
        objects = self.objects()
        report = self.import_report() or {}
        return {
            "name": self.name,
            "created_at": self.meta.get("created_at"),
            "has_images": self.has_images,
            "samples": int(len(samples)),
            "columns": list(samples.columns),
            "splits": _counts(samples, "split"),
            "labels": _counts(samples, "label"),
            "objects": None if objects is None else int(len(objects)),
            "embeddings": embeddings,
            "rejected": len(report.get("rejected", [])),
        }


def _version_of(file_name: str, name: str) -> bool:
    rest = file_name[len(name) + 1 :]
    return file_name.startswith(f"{name}-") and bool(
        re.match(r"^\d+[0-9a-f]{6}(\.ids)?\.npy$", rest)
    )


def _counts(frame: pd.DataFrame, column: str) -> dict[str, int]:
    if column not in frame or frame[column].isna().all():
        return {}
    return {str(k): int(v) for k, v in frame[column].value_counts(dropna=True).sort_index().items()}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_samples(frame: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise StoreError(f"samples table lacks column(s) {missing}")
    ids = frame["sample_id"].astype(str)
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise StoreError(
            f"duplicate sample_id {duplicated.iloc[0]!r} ({len(duplicated)} duplicates)"
        )
    frame = frame.copy()
    frame["sample_id"] = ids
    return frame.reset_index(drop=True)


# --------------------------------------------------------------------------- workspace


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
        return Dataset(self.datasets_dir / name)

    def create(
        self, name: str, samples: pd.DataFrame, *, has_images: bool, staged: Path | None = None
    ) -> Dataset:
        """Create a dataset from a samples table.

        ``staged`` is a directory prepared by an importer (images already stored under it): it is
        moved into place in one rename, so a half-built dataset is never visible.
        """
        validate_name(name)
        if self.exists(name):
            raise StoreError(
                f"dataset {name!r} already exists; choose another name or `shoal delete {name}`"
            )
        target = self.datasets_dir / name
        staging = Path(staged) if staged is not None else self.staging_dir(name)
        staging_ds = Dataset(staging)
        staging_ds.write_samples(samples)
        write_json(
            staging / "dataset.json",
            {"name": name, "created_at": utc_now(), "has_images": has_images},
        )
        if target.exists():  # leftover without dataset.json: a crashed earlier attempt
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
        return Dataset(target)

    def staging_dir(self, name: str) -> Path:
        """A fresh private directory on the same filesystem, for building a dataset before publishing."""
        base = self.root / ".staging"
        base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{validate_name(name)}-", dir=base))

    def delete(self, name: str) -> None:
        dataset = self.open(name)
        trash = self.root / ".trash" / f"{name}-{uuid.uuid4().hex[:8]}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.replace(dataset.root, trash)  # atomic: the dataset disappears at once, cleanup follows
        shutil.rmtree(trash, ignore_errors=True)
