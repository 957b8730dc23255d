"""Uploads: files from the browser to disk, then to the importers.

Files go to disk first (never held twice in memory), with names that cannot escape their
folder; :func:`import_uploads` then hands them to the importer that ``mode`` names.

Example:
    >>> folder = upload_dir(workspace)                                        # doctest: +SKIP
    >>> written, refused = save_uploads(files, folder)                        # doctest: +SKIP
    >>> import_uploads(workspace, folder, written, mode="images", dataset="pets")  # doctest: +SKIP
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import numpy as np
import pandas as pd

from shoal.store import StoreError, Workspace


class Upload(Protocol):
    """What Streamlit's UploadedFile offers that we use."""

    name: str

    def getbuffer(self) -> memoryview: ...


IMPORT_MODES = {
    "images": "Images: files, a folder, or a .zip (class from sub-folder names)",
    "manifest": "A CSV/Parquet manifest + the images it names, or a Parquet of images",
    "embeddings": "An embeddings file for an existing dataset",
    "embeddings_only": "Embeddings + metadata, no images",
}


def safe_relative_path(name: str) -> PurePosixPath | None:
    """A browser-given file name as a relative path that stays inside its folder, or None."""
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".", "/")]
    if not parts or any(p == ".." or ":" in p or p.startswith("/") for p in parts):
        return None
    if any(ord(ch) < 32 for p in parts for ch in p):
        return None
    return PurePosixPath(*parts)


def save_uploads(files: Iterable[Upload], target: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Write uploaded files under ``target`` at once; return (written paths, [(name, reason)] refused)."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    written, refused = [], []
    for upload in files:
        relative = safe_relative_path(upload.name)
        if relative is None:
            refused.append(
                (
                    upload.name,
                    "unsafe file name (absolute, '..' or control characters); skipped: rename "
                    "it to a plain relative name",
                )
            )
            continue
        destination = target.joinpath(*relative.parts)
        if destination.exists():
            refused.append((upload.name, "another uploaded file has the same name; skipped"))
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        with open(destination, "wb") as handle:
            handle.write(upload.getbuffer())
        written.append(destination)
    return written, refused


def upload_dir(workspace: Workspace) -> Path:
    """A fresh private folder for one upload, on the workspace's filesystem, held by this
    process so that the workspace sweep never removes it while the upload is in use."""
    return workspace.scratch_dir(".uploads", "upload-")


@dataclass
class UploadOutcome:
    """What an upload did: the dataset touched, the import report, and the embedding set added."""

    dataset: str
    report: dict[str, Any] = field(default_factory=dict)
    embedding: str | None = None


def import_uploads(
    workspace: Workspace,
    folder: Path,
    files: Sequence[Path],
    *,
    mode: str,
    dataset: str,
    split: str | None = None,
    embedding_name: str = "user",
    refused: Sequence[tuple[str, str]] = (),
    progress: Any = None,
) -> UploadOutcome:
    """Import files already written under ``folder`` according to ``mode`` (see IMPORT_MODES).

    Refused uploads (unsafe names) are added to the report's rejected list, so the user sees
    every file that did not make it and why. Reports and errors name the uploaded files as the
    visitor named them, never the upload's folder on the server.
    """
    from shoal.ingest.publish import IngestError

    files = [Path(f) for f in files]
    if not files:
        listed = "; ".join(f"{name}: {reason}" for name, reason in refused) or "no files"
        raise IngestError(f"nothing to import: {listed}")
    try:
        outcome = _import_by_mode(
            workspace,
            folder,
            files,
            mode=mode,
            dataset=dataset,
            split=split,
            embedding_name=embedding_name,
            progress=progress,
        )
    except StoreError as error:
        if not refused:
            raise
        listed = "; ".join(f"{name}: {reason}" for name, reason in refused)
        raise type(error)(f"{error} (not uploaded either: {listed})") from error
    if refused:
        outcome.report.setdefault("rejected", [])
        outcome.report["rejected"] = [
            *({"file": n, "reason": r} for n, r in refused),
            *outcome.report["rejected"],
        ]
        if workspace.exists(dataset):
            ds = workspace.open(dataset)
            stored = ds.import_report()
            if stored is not None and mode != "embeddings":
                ds.write_import_report({**stored, "rejected": outcome.report["rejected"]})
    return outcome


def _import_by_mode(
    workspace: Workspace,
    folder: Path,
    files: list[Path],
    *,
    mode: str,
    dataset: str,
    split: str | None,
    embedding_name: str,
    progress: Any,
) -> UploadOutcome:
    """The import that ``mode`` names, of ``files`` already written under ``folder``."""
    from shoal.ingest.embeddings import add_embeddings, create_from_embeddings
    from shoal.ingest.images import import_manifest, import_source
    from shoal.ingest.publish import IngestError

    tables = [f for f in files if f.suffix.lower() in (".csv", ".parquet", ".pq")]
    arrays = [f for f in files if f.suffix.lower() == ".npy"]
    if mode == "images":
        zips = [f for f in files if f.suffix.lower() == ".zip"]
        if len(zips) == 1 and len(files) == 1:
            report = import_source(
                workspace,
                zips[0],
                dataset=dataset,
                split=split,
                progress=progress,
                display_name=zips[0].name,
            )
        elif zips:
            raise IngestError(
                "upload one .zip on its own, or image files and folders without a .zip"
            )
        else:
            report = import_source(
                workspace,
                folder,
                dataset=dataset,
                split=split,
                progress=progress,
                display_name=upload_name(folder, files),
            )
        outcome = UploadOutcome(dataset=dataset, report=report.to_dict())
    elif mode == "manifest":
        if len(tables) != 1:
            raise IngestError(
                f"upload exactly one .csv/.parquet manifest with its images (got {len(tables)} tables)"
            )
        from shoal.ingest.image_parquet import import_image_parquet, is_image_parquet

        if is_image_parquet(tables[0]):  # the images are inside it (datasets-style Parquet)
            report = import_image_parquet(
                workspace, tables[0], dataset=dataset, split=split, progress=progress
            )
        else:
            report = import_manifest(
                workspace, tables[0], dataset=dataset, split=split, progress=progress, confined=True
            )
        outcome = UploadOutcome(dataset=dataset, report=report.to_dict())
    elif mode == "embeddings":
        embeddings_file = _one_embeddings_file(files, arrays, tables)
        ids_file = next(
            (
                f
                for f in files
                if f != embeddings_file and f.suffix.lower() in (".txt", ".csv", ".npy")
            ),
            None,
        )
        if not workspace.exists(dataset):
            raise IngestError(
                f"there is no dataset {dataset!r} (any more) to add embeddings to; choose "
                "another dataset, or import this one first"
            )
        ds = workspace.open(dataset)
        info = add_embeddings(ds, embeddings_file, name=embedding_name, ids_file=ids_file)
        outcome = UploadOutcome(
            dataset=dataset,
            report={
                "dataset": dataset,
                "source": embeddings_file.name,
                "imported": info.count,
                "rejected": [],
            },
            embedding=info.name,
        )
    elif mode == "embeddings_only":
        embeddings_file = _one_embeddings_file(files, arrays, tables, prefer_metadata=True)
        metadata = next((f for f in tables if f != embeddings_file), None)
        report = create_from_embeddings(
            workspace, dataset, embeddings_file, metadata_file=metadata, name=embedding_name
        )
        outcome = UploadOutcome(dataset=dataset, report=report.to_dict(), embedding=embedding_name)
    else:
        raise ValueError(f"unknown import mode {mode!r}; one of {sorted(IMPORT_MODES)}")
    return outcome


def upload_name(folder: Path, files: Sequence[Path]) -> str:
    """How a report names an upload of loose files: their one top folder ("pets", a picked
    folder), the one file, or "N uploaded files"; never the upload's folder on the server."""
    relative = [f.relative_to(folder) for f in files if f.is_relative_to(folder)]
    tops = {r.parts[0] for r in relative}
    if len(tops) == 1 and all(len(r.parts) > 1 for r in relative):
        return next(iter(tops))
    if len(relative) == 1:
        return relative[0].as_posix()
    return f"{len(files):,} uploaded files"


def _one_embeddings_file(
    files: list[Path], arrays: list[Path], tables: list[Path], *, prefer_metadata: bool = False
) -> Path:
    from shoal.ingest.publish import IngestError

    if len(arrays) == 1:
        return arrays[0]
    parquet = [f for f in tables if f.suffix.lower() in (".parquet", ".pq")]
    candidates = parquet if prefer_metadata and len(tables) == 2 and len(parquet) == 1 else tables
    if len(candidates) == 1 and not arrays:
        return candidates[0]
    if prefer_metadata and len(tables) == 2 and not arrays:
        # Two tables: the wider one holds the vectors, the other the metadata.
        widths = [_table_width(t) for t in tables]
        return tables[int(np.argmax(widths))]
    raise IngestError(
        "upload one embeddings file (.npy, .parquet or .csv)"
        + (" and optionally one metadata table" if prefer_metadata else "")
        + f"; got {', '.join(f.name for f in files) or 'nothing'}"
    )


def _table_width(path: Path) -> int:
    """Columns of a table (a list column counts as many), to tell vectors from metadata; a
    table that cannot be read is refused here with the reason."""
    import pyarrow.parquet as pq

    from shoal.ingest.images import read_table
    from shoal.ingest.publish import IngestError, error_text

    if path.suffix.lower() == ".csv":
        try:
            return len(pd.read_csv(path, nrows=1).columns)
        except Exception:  # noqa: BLE001 - read_table says what is wrong with it
            return len(read_table(path).columns)
    try:
        schema = pq.read_schema(path)
    except Exception as error:  # noqa: BLE001 - any parser error becomes one clear message
        raise IngestError(
            f"cannot read {path.name} as Parquet ({error_text(error, path)}); save it again with "
            "pandas' DataFrame.to_parquet or pyarrow, or upload a CSV"
        ) from error
    return sum(
        1 if not str(f.type).startswith(("list", "fixed_size_list", "large_list")) else 10_000
        for f in schema
    )


def discard_upload(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def suggest_dataset_name(names: Sequence[str], existing: Iterable[str]) -> str:
    """A valid, unused dataset name from the first uploaded file's name."""
    stem = Path(names[0]).stem if names else "dataset"
    stem = (
        PurePosixPath(names[0].replace("\\", "/")).parts[0] if names and "/" in names[0] else stem
    )
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:48] or "dataset"
    if not base[0].isalnum():
        base = "d" + base
    taken = set(existing)
    candidate, number = base, 2
    while candidate in taken:
        candidate, number = f"{base}-{number}", number + 1
    return candidate
