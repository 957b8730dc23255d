"""One dataset directory: samples, objects, images, embedding sets and cached artefacts."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import shutil
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa

from shoal.store.checkpoints import BatchCheckpoints
from shoal.store.errors import CorruptFileError, StoreError, validate_name
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
from shoal.store.vectors import NonFiniteRowError, VectorFile, VectorWriter

REQUIRED_COLUMNS = ("sample_id", "source", "path", "split", "label")
#: What reading a damaged .npy, .npz or .parquet file raises (truncated, garbage, empty).
UNREADABLE = (
    OSError,
    ValueError,
    EOFError,
    KeyError,
    zipfile.BadZipFile,
    zlib.error,
    pa.ArrowException,
)
#: The longest sample or object id, in characters. Ids are stored as a fixed-width array beside
#: the vectors, so one huge id would make every row that wide (50k characters x 200k rows = 40 GB).
MAX_ID_LENGTH = 256
#: Rows per block when an in-memory matrix is written out.
WRITE_BLOCK_ROWS = 16384


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

    @property
    def unit(self) -> str:
        """What its rows are, for messages: "boxes" (object level) or "samples"."""
        return "boxes" if self.level == "object" else "samples"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EmbeddingSet:
    """vectors: (count, dim) float32, a :class:`VectorFile` (read in block copies) or an array;
    ids: (count,) str, row for row."""

    vectors: Any
    ids: np.ndarray
    info: EmbeddingInfo


class EmbeddingDraft:
    """An embedding set being written (see :meth:`Dataset.writing_embeddings`)."""

    def __init__(self, writer: VectorWriter):
        self.writer = writer
        self.ids: Any = None
        self.info: EmbeddingInfo | None = None

    def write(
        self, block: np.ndarray, *, rows: np.ndarray | None = None, first_row: int = 0
    ) -> None:
        """Write a block of rows (next in order, or at ``rows``). ``first_row`` numbers the
        block's rows in the messages: a NaN or inf is refused naming its row."""
        try:
            self.writer.write(block, rows=rows)
        except NonFiniteRowError as error:
            raise StoreError(
                f"embeddings contain NaN or inf (row {first_row + error.row})"
            ) from error

    def finish(self) -> None:
        missing = self.writer.missing()
        if len(missing):
            raise StoreError(
                f"no vector was written for {len(missing):,} of {self.writer.count:,} rows "
                f"(first: row {int(missing[0])})"
            )
        if self.ids is None or len(self.ids) != self.writer.count:
            given = "no" if self.ids is None else f"{len(self.ids):,}"
            raise StoreError(f"{self.writer.count:,} embedding rows but {given} ids")

    def ids_array(self) -> np.ndarray:
        texts = pd.Series(self.ids, dtype=object).astype(str)
        lengths = texts.str.len().to_numpy()
        longest = int(lengths.argmax()) if len(lengths) else None
        if longest is not None and lengths[longest] > MAX_ID_LENGTH:
            raise StoreError(
                f"id at row {longest} has {int(lengths[longest]):,} characters; ids are at most "
                f"{MAX_ID_LENGTH}"
            )
        return texts.to_numpy().astype(str)


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
        try:
            current = read_json(meta_file).get("uid")
        except FileNotFoundError:
            current = None
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
        path = self.root / "dataset.json"
        try:
            return dict(read_json(path))
        except (CorruptFileError, TypeError, ValueError) as error:
            raise CorruptFileError(
                f"dataset {self.name!r} is damaged: {path} cannot be read ({error}). Restore the "
                f"file from a backup, or delete the dataset with `shoal delete {self.name}` and "
                "import it again"
            ) from error

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
        return self._read_table("samples.parquet")

    def _read_table(self, file_name: str) -> pd.DataFrame:
        path = self.root / file_name
        try:
            return pd.read_parquet(path)
        except FileNotFoundError:
            raise
        except UNREADABLE as error:
            raise CorruptFileError(
                f"dataset {self.name!r} is damaged: {path} cannot be read ({error}). Delete the "
                f"dataset with `shoal delete {self.name}` and import it again"
            ) from error

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
        return (
            self._read_table("objects.parquet")
            if (self.root / "objects.parquet").exists()
            else None
        )

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
        """The dataset's default set of ``level``; a set whose pointer is damaged is passed over."""
        names = []
        for name in self.embedding_names():
            with contextlib.suppress(CorruptFileError):
                if self.embedding_info(name).level == level:
                    names.append(name)
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
        try:
            return EmbeddingInfo(**read_json(pointer))
        except (CorruptFileError, TypeError) as error:
            raise CorruptFileError(
                f"embedding set {name!r} of dataset {self.name!r} is damaged: {pointer} cannot "
                f"be read ({error}). {self._recompute_hint(name)}"
            ) from error

    def _recompute_hint(self, name: str) -> str:
        return (
            f"Compute it again with `shoal embed {self.name} --embedding {name}` (or add it "
            f"again with `shoal add-embeddings`), or delete {self._embeddings_dir / name}.json"
        )

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
                vectors = self._load_matrix(Path(f"{base}.npy"), info, mmap=mmap)
                ids = self._load_matrix(Path(f"{base}.ids.npy"), info, mmap=False)
            except FileNotFoundError:
                # A writer published a newer version and removed this one between our two reads.
                if attempt == 4:
                    raise
                time.sleep(0.05)
                continue
            return EmbeddingSet(vectors=vectors, ids=ids, info=info)
        raise AssertionError("unreachable")

    def _load_matrix(self, path: Path, info: EmbeddingInfo, *, mmap: bool) -> Any:
        """The vectors (count, dim) or the ids (count,) of a set; CorruptFileError when damaged.

        ``mmap``: the vectors as a :class:`VectorFile` (read in blocks, never resident whole)."""
        try:
            array = (
                VectorFile(path)
                if mmap and not path.name.endswith(".ids.npy")
                else np.load(path, allow_pickle=False)
            )
        except FileNotFoundError:
            raise
        except UNREADABLE as error:
            problem = f"cannot be read ({error})"
        else:
            ids = path.name.endswith(".ids.npy")
            expected = (info.count,) if ids else (info.count, info.dim)
            if array.shape == expected:
                return array
            problem = f"holds {array.shape}, not {expected} ({'ids' if ids else 'vectors'})"
        raise CorruptFileError(
            f"embedding set {info.name!r} of dataset {self.name!r} is damaged: {path} "
            f"{problem}. {self._recompute_hint(info.name)}"
        )

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
        """Publish an in-memory embedding set atomically (see :meth:`writing_embeddings`, which
        streams one in blocks); earlier versions are removed after the switch."""
        shape = np.shape(vectors)
        if len(shape) != 2:
            raise StoreError(f"embeddings must be a 2-D matrix, got shape {shape}")
        if len(ids) != shape[0]:
            raise StoreError(f"{shape[0]} embedding rows but {len(ids)} ids")
        with self.writing_embeddings(
            name,
            count=shape[0],
            dim=shape[1],
            model=model,
            preprocessing=preprocessing,
            level=level,
            make_default=make_default,
        ) as draft:
            draft.ids = ids
            for start in range(0, shape[0], WRITE_BLOCK_ROWS):
                draft.write(np.asarray(vectors[start : start + WRITE_BLOCK_ROWS]), first_row=start)
        assert draft.info is not None
        return draft.info

    @contextlib.contextmanager
    def writing_embeddings(
        self,
        name: str,
        *,
        count: int,
        dim: int,
        model: str,
        preprocessing: dict[str, Any] | None = None,
        level: str = "sample",
        make_default: bool = False,
    ) -> Iterator[EmbeddingDraft]:
        """Stream a new version of embedding set ``name`` to disk and publish it when the block
        ends: ``draft.write(block)`` (in order, or ``rows=``), and ``draft.ids`` set before the
        end. Peak memory is one block plus the ids. A failure, or an exception in the block,
        leaves nothing behind and the previous version in place. ``draft.info`` is the published
        set's info afterwards.
        """
        validate_name(name, what="embedding")
        self.check_current()
        lock = self._lock_file(f"publish-{name}")
        first_lock = not lock.exists()
        try:
            with exclusive(lock, what=f"embedding set {name!r}"):
                yield from self._write_embeddings(
                    name, count, dim, model, preprocessing, level, make_default
                )
        except BaseException:
            if first_lock:  # a refused first write leaves the folder as it found it
                lock.unlink(missing_ok=True)
            raise

    def _write_embeddings(
        self,
        name: str,
        count: int,
        dim: int,
        model: str,
        preprocessing: dict[str, Any] | None,
        level: str,
        make_default: bool,
    ) -> Iterator[EmbeddingDraft]:
        version = f"{int(time.time())}{uuid.uuid4().hex[:6]}"
        base = self._embeddings_dir / f"{name}-{version}"
        pointer = self._embeddings_dir / f"{name}.json"
        # A failed write, or one into a dataset deleted meanwhile, leaves no file behind.
        with self._writing() as written:
            vectors_file, ids_file = Path(f"{base}.npy"), Path(f"{base}.ids.npy")
            written.extend([vectors_file, ids_file])
            with atomic_path(vectors_file) as tmp:
                draft = EmbeddingDraft(VectorWriter(tmp, count=count, dim=dim))
                try:
                    yield draft
                    draft.finish()
                finally:
                    draft.writer.close()
            write_npy(ids_file, draft.ids_array())
            self.check_current()  # before the switch: after it, readers see the new files
            info = EmbeddingInfo(
                name=name,
                model=model,
                dim=int(dim),
                count=int(count),
                level=level,
                preprocessing=dict(preprocessing or {}),
                created_at=utc_now(),
                version=version,
            )
            if not pointer.exists():
                written.append(pointer)  # a first version: the pointer is ours to take back
            write_json(pointer, info.to_dict())
        draft.info = info
        for stale in self._embeddings_dir.glob(f"{name}-*.npy"):
            # Readers that already mapped an old version keep its inode alive until they close it.
            if not stale.name.startswith(f"{name}-{version}") and _version_of(stale.name, name):
                stale.unlink(missing_ok=True)
        shutil.rmtree(self.partial_dir(name), ignore_errors=True)
        if make_default and self.meta.get("default_embedding") is None:
            self.update_meta(default_embedding=name)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[list[Path]]:
        """Guard a write of new files (the block appends each one's path before writing it).

        When the block fails, or this dataset turns out to be deleted (or deleted and created
        again) by the time it ends, the files are removed, with any folder the write recreated,
        so a failed write or a job that outlived a delete leaves nothing behind.
        """
        self.check_current()
        written: list[Path] = []
        try:
            yield written
            self.check_current()
        except BaseException:
            for file in written:
                file.unlink(missing_ok=True)
            for folder in _parents_within(written, self.root):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty: a folder the write created
            raise

    def _lock_file(self, what: str) -> Path:
        return self._embeddings_dir / f".lock-{what}"

    def computing(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Held by a job for the whole computation of embedding set ``name`` (checkpoints,
        then publishing): a second job on the same set is refused at once, not mixed in."""
        validate_name(name, what="embedding")
        self.check_current()
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
        return BatchCheckpoints(self.partial_dir(name), manifest, writing=self._writing)

    # -- artefacts
    def _artefact_base(self, kind: str, key: str) -> Path:
        validate_name(kind, what="artefact kind")
        validate_name(key, what="artefact key")
        return self.root / "artefacts" / kind / key

    def save_artefact(
        self,
        kind: str,
        key: str,
        arrays: dict[str, np.ndarray],
        meta: dict[str, Any],
        *,
        files: dict[str, Callable[[Path], None]] | None = None,
    ) -> None:
        """Store arrays (npz, no pickles) and JSON metadata; the JSON is written last and marks completion.

        ``files``: suffix -> a function that writes a file at the path it is given (a search
        index in its own format, written straight to disk instead of copied into an array);
        read back with :meth:`artefact_file`.
        """
        base = self._artefact_base(kind, key)
        with self._writing() as written:
            for suffix, write in (files or {}).items():
                validate_name(suffix, what="artefact file suffix")
                written.append(base.with_name(f"{key}.{suffix}"))
                with atomic_path(written[-1]) as tmp:
                    write(tmp)
            written.append(base.with_suffix(".npz"))
            with atomic_path(written[-1]) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
            written.append(base.with_suffix(".json"))
            write_json(written[-1], {"saved_at": utc_now(), **meta})

    def artefact_file(self, kind: str, key: str, suffix: str) -> Path | None:
        """The ``suffix`` file saved with artefact ``kind``/``key``, when that artefact is complete."""
        validate_name(suffix, what="artefact file suffix")
        base = self._artefact_base(kind, key)
        path = base.with_name(f"{key}.{suffix}")
        return path if path.exists() and base.with_suffix(".json").exists() else None

    def load_artefact(
        self, kind: str, key: str
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        base = self._artefact_base(kind, key)
        meta_path, data_path = base.with_suffix(".json"), base.with_suffix(".npz")
        if not meta_path.exists() or not data_path.exists():
            return None
        try:
            meta = read_json(meta_path)
            with np.load(data_path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (CorruptFileError, *UNREADABLE):
            return None  # a damaged result is computed again, and stored over the damaged one
        if not isinstance(meta, dict):
            return None
        return arrays, meta

    def stamp(self) -> str:
        """Changes whenever the samples or objects table or any embedding set changes: a cache
        key for what is derived from them (file modification times; nothing is read)."""
        parts = [str((self.root / "samples.parquet").stat().st_mtime_ns)]
        objects = self.root / "objects.parquet"
        if objects.exists():
            parts.append(f"objects:{objects.stat().st_mtime_ns}")
        embeddings = self._embeddings_dir
        if embeddings.exists():
            parts += sorted(f"{p.name}:{p.stat().st_mtime_ns}" for p in embeddings.glob("*.json"))
        return "|".join(parts)

    def describe(self) -> dict[str, Any]:
        """What the dataset holds, for listings. A damaged file does not make it fail: what it
        would have given is left empty and ``problems`` says which file and what to do."""
        problems: list[str] = []
        empty = pd.DataFrame(columns=list(REQUIRED_COLUMNS))
        no_meta: dict[str, Any] = {}
        meta = _or_problem(lambda: self.meta, no_meta, problems)
        samples = _or_problem(self.samples, empty, problems)
        objects = _or_problem(self.objects, None, problems)
        report = _or_problem(self.import_report, None, problems) or {}
        embeddings = []
        for name in self.embedding_names():
            info: EmbeddingInfo | None = _or_problem(
                functools.partial(self.embedding_info, name), None, problems
            )
            if info is not None:
                embeddings.append(info.to_dict())
        return {
            "name": self.name,
            "created_at": meta.get("created_at"),
            "has_images": bool(meta.get("has_images", False)),
            "samples": int(len(samples)),
            "columns": list(samples.columns),
            "splits": _counts(samples, "split"),
            "labels": _counts(samples, "label"),
            "objects": None if objects is None else int(len(objects)),
            "embeddings": embeddings,
            "rejected": len(report.get("rejected", [])) if isinstance(report, dict) else 0,
            "problems": problems,
        }


T = TypeVar("T")


def _or_problem(read: Callable[[], T], default: T, problems: list[str]) -> T:
    """``read()``, or ``default`` with the reason added to ``problems`` when a file is damaged."""
    try:
        return read()
    except StoreError as error:
        problems.append(str(error))
        return default


def _parents_within(files: list[Path], root: Path) -> list[Path]:
    """The folders between each file and ``root`` (``root`` included), deepest first."""
    folders = set()
    for file in files:
        for parent in file.parents:
            if parent != root and root not in parent.parents:
                break
            folders.add(parent)
    return sorted(folders, key=lambda folder: len(folder.parts), reverse=True)


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
