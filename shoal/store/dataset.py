"""One dataset directory: samples, objects, images, embedding sets and cached artefacts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shoal.store.checkpoints import BatchCheckpoints
from shoal.store.errors import StoreError, validate_name
from shoal.store.files import (
    atomic_path,
    json_default,
    read_json,
    sha256_file,
    utc_now,
    write_json,
    write_npy,
    write_parquet,
)
from shoal.store.locks import exclusive

REQUIRED_COLUMNS = ("sample_id", "source", "path", "split", "label")
#: The longest sample or object id, in characters. Ids are stored as a fixed-width array beside
#: the vectors, so one huge id would make every row that wide (50k characters x 200k rows = 40 GB).
MAX_ID_LENGTH = 256


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
        default=json_default,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def digest_values(values: Any) -> str | None:
    """A short digest of a column of values (labels, splits, ids) for an artefact key; None stays None."""
    if values is None:
        return None
    text = "\x1f".join("\x00" if v is None else str(v) for v in values)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- dataset


class Dataset:
    """One dataset directory. Cheap to construct; reads happen on demand.

    ``uid`` (from ``Workspace.open``/``create``) names this dataset for good: every write checks
    that the directory still holds it, so a job that outlives a delete (or a delete and a
    re-import under the same name) writes nothing instead of an orphan folder or stray vectors.
    """

    def __init__(self, root: Path, *, uid: str | None = None):
        self.root = Path(root)
        self.name = self.root.name
        self.uid = uid

    def check_current(self) -> None:
        """Raise StoreError when this dataset was deleted or replaced since it was opened."""
        if self.uid is None:
            return
        meta_file = self.root / "dataset.json"
        current = read_json(meta_file).get("uid") if meta_file.exists() else None
        if current != self.uid:
            raise StoreError(
                f"dataset {self.name!r} was deleted"
                + (" and created again" if current else "")
                + " while this was running; nothing was written"
            )

    def __repr__(self) -> str:
        return f"Dataset({self.name!r})"

    # -- metadata
    @property
    def meta(self) -> dict[str, Any]:
        return dict(read_json(self.root / "dataset.json"))

    def update_meta(self, **changes: Any) -> None:
        self.check_current()
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
        self.check_current()
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
        digest = sha256_file(source_file)
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
        self.check_current()
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

    def publish_embeddings(
        self,
        name: str,
        vectors: np.ndarray,
        ids: np.ndarray | list[str],
        *,
        model: str,
        preprocessing: dict[str, Any] | None = None,
        level: str = "sample",
        make_default: bool = False,
    ) -> EmbeddingInfo:
        """Publish an embedding set atomically; earlier versions are removed after the switch.

        ``make_default``: when the dataset has no default embedding set yet, this one becomes it.
        """
        validate_name(name, what="embedding")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        texts = [str(i) for i in ids]
        longest = max(range(len(texts)), key=lambda row: len(texts[row]), default=None)
        if longest is not None and len(texts[longest]) > MAX_ID_LENGTH:
            raise StoreError(
                f"id at row {longest} has {len(texts[longest]):,} characters; ids are at most "
                f"{MAX_ID_LENGTH}"
            )
        ids_array = np.asarray(texts, dtype=str)
        if vectors.ndim != 2:
            raise StoreError(f"embeddings must be a 2-D matrix, got shape {vectors.shape}")
        if len(ids_array) != len(vectors):
            raise StoreError(f"{len(vectors)} embedding rows but {len(ids_array)} ids")
        if not np.isfinite(vectors).all():
            raise StoreError("embeddings contain NaN or inf")
        self.check_current()
        with exclusive(self._lock_file(f"publish-{name}"), what=f"embedding set {name!r}"):
            version = f"{int(time.time())}{uuid.uuid4().hex[:6]}"
            base = self._embeddings_dir / f"{name}-{version}"
            files = [Path(f"{base}.npy"), Path(f"{base}.ids.npy")]
            write_npy(files[0], vectors)
            write_npy(files[1], ids_array)
            try:
                self.check_current()  # deleted while the matrix was written: leave nothing behind
            except StoreError:
                for file in files:
                    file.unlink(missing_ok=True)
                for folder in (self._embeddings_dir, self.root):
                    with contextlib.suppress(OSError):
                        folder.rmdir()  # only when empty: a folder our write recreated
                raise
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
            if make_default and self.meta.get("default_embedding") is None:
                self.update_meta(default_embedding=name)
        return info

    def _lock_file(self, what: str) -> Path:
        return self._embeddings_dir / f".lock-{what}"

    def computing(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Held by a job for the whole computation of embedding set ``name`` (checkpoints,
        then publishing): a second job on the same set is refused at once, not mixed in."""
        validate_name(name, what="embedding")
        return exclusive(
            self._lock_file(f"compute-{name}"),
            what=f"embedding set {name!r} of dataset {self.name!r}",
            wait=False,
        )

    def partial_dir(self, name: str) -> Path:
        validate_name(name, what="embedding")
        return self._embeddings_dir / f".partial-{name}"

    def batch_checkpoints(self, name: str, manifest: dict[str, Any]) -> BatchCheckpoints:
        """Resumable per-batch checkpoints of embedding set ``name`` (removed when it is published)."""
        return BatchCheckpoints(self.partial_dir(name), manifest)

    # -- artefacts
    def _artefact_base(self, kind: str, key: str) -> Path:
        validate_name(kind, what="artefact kind")
        validate_name(key, what="artefact key")
        return self.root / "artefacts" / kind / key

    def save_artefact(
        self, kind: str, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]
    ) -> None:
        """Store arrays (npz, no pickles) and JSON metadata; the JSON is written last and marks completion."""
        self.check_current()
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
