"""What every importer shares: the whole-import error, the import report, and publishing.

An importer checks the name with :func:`check_new_dataset`, stores images into a staging dataset
opened with :func:`staging`, and ends with :func:`publish`, which fills in the report's counts,
writes it beside the samples and moves the dataset into place in one rename. A failed or killed
import removes the staging folder, so it leaves nothing half-built.

Example:
    >>> check_new_dataset(workspace, "pets")                                   # doctest: +SKIP
    >>> with staging(workspace, "pets") as staged:                             # doctest: +SKIP
    ...     samples = ...  # rows that point at staged.store_image(...)
    ...     publish(workspace, staged, samples, ImportReport("pets", "photos.zip"))
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from shoal.store import MAX_ID_LENGTH, Dataset, StoreError, Workspace, utc_now, validate_name

ProgressCallback = Callable[[int, int], None]


class IngestError(StoreError):
    """The import as a whole cannot proceed (not a single bad file: those go to the report)."""


@dataclass(frozen=True)
class ImportLimits:
    """Caps that protect the server from hostile or broken uploads.

    ``max_image_pixels`` can only lower Pillow's own limit: Pillow refuses images above twice its
    ``Image.MAX_IMAGE_PIXELS`` (179 Mpx by default) before this cap is looked at.
    """

    max_image_pixels: int = 100_000_000
    max_zip_total_bytes: int = 20 * 1024**3
    max_zip_entries: int = 2_000_000
    max_zip_ratio: float = 250.0  # uncompressed / compressed: an entry above 1 MiB, or the zip
    max_table_cells: int = 50_000_000  # rows x columns of a manifest or metadata table


DEFAULT_LIMITS = ImportLimits()


@dataclass(frozen=True)
class Rejection:
    file: str
    reason: str


@dataclass
class ImportReport:
    dataset: str
    source: str
    imported: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    created_at: str = field(default_factory=utc_now)

    def reject(self, file: str, reason: str) -> None:
        self.rejected.append(Rejection(file, reason))

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["rejected"] = [asdict(r) for r in self.rejected]
        return payload


def check_new_dataset(workspace: Workspace, dataset: str) -> None:
    """Refuse a bad or taken name before any work is done."""
    validate_name(dataset)
    if workspace.exists(dataset):
        raise StoreError(
            f"dataset {dataset!r} already exists; choose another name or `shoal delete {dataset}`"
        )


@contextmanager
def staging(workspace: Workspace, dataset: str) -> Iterator[Dataset]:
    """A private dataset folder to build the import in; removed if anything goes wrong."""
    folder = workspace.staging_dir(dataset)
    try:
        yield Dataset(folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def publish(
    workspace: Workspace,
    staged: Dataset,
    samples: pd.DataFrame,
    report: ImportReport,
    *,
    has_images: bool = True,
) -> ImportReport:
    """Count samples per split and label into ``report``, store it, and create the dataset."""
    report.imported = len(samples)
    report.splits = value_counts(samples["split"])
    report.labels = value_counts(samples["label"])
    staged.write_import_report(report.to_dict())
    workspace.create(report.dataset, samples, has_images=has_images, staged=staged.root)
    return report


def store_image(staged: Dataset, file: Path) -> str:
    """Copy an image file into the staging dataset; returns its stored path."""
    suffix = file.suffix.lower()
    return staged.store_image(
        file, ".jpg" if suffix == ".jpeg" else ".tif" if suffix == ".tiff" else suffix
    )


def stable_id(source: str) -> str:
    """A short id that is the same every time the same relative path is imported."""
    return hashlib.sha1(source.encode()).hexdigest()[:12]


def value_counts(column: pd.Series) -> dict[str, int]:
    """{value: count} of the non-missing values, sorted by value, as plain str and int."""
    return {str(k): int(v) for k, v in column.dropna().value_counts().sort_index().items()}


def check_id_lengths(ids: pd.Series, file_name: str, column: str, *, first_row: int = 1) -> None:
    """Refuse ids longer than the store keeps (MAX_ID_LENGTH), naming the row; ``first_row`` is
    how the file counts its first data row (2 for a CSV under its header)."""
    lengths = ids.astype(str).str.len()
    if len(lengths) and int(lengths.max()) > MAX_ID_LENGTH:
        position = int(lengths.to_numpy().argmax())
        raise IngestError(
            f"{file_name}: the {column} at row {position + first_row} has "
            f"{int(lengths.iloc[position]):,} characters; ids are at most {MAX_ID_LENGTH}: "
            "shorten it"
        )


def check_unique_ids(
    ids: pd.Series, file_name: str, column: str, *, first_row: int, hint: str
) -> None:
    """Refuse a repeated id, naming it and the rows that hold it (counted from ``first_row``)."""
    ids = ids.astype(str).reset_index(drop=True)
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        value = duplicated.iloc[0]
        rows = ids.index[ids == value].tolist()[:5]
        raise IngestError(
            f"{file_name}: duplicate {column} {value!r} "
            f"(rows {', '.join(str(r + first_row) for r in rows)}); {hint}"
        )


# --------------------------------------------------------------------------- messages

#: An absolute path in quotes ('/srv/ws/x.parquet', "C:\\data\\x"), spaces and all.
_QUOTED_PATH = re.compile(r"""(['"])((?:/|[A-Za-z]:[\\/])[^'"\n]*)\1""")
#: A bare absolute path of two or more parts: /srv/ws/x, C:\\data\\x. Not a URL's //host/x, not
#: a relative a/b, not a ratio.
_BARE_PATH = re.compile(
    r"""(?<![\w.:/\\~-])(?:/[^\s'"/;,()\[\]]+){2,}/?|(?<![\w])[A-Za-z]:\\[^\s'";,()]+"""
)


def redact_paths(text: str) -> str:
    """``text`` with every absolute filesystem path cut to its last part.

    For messages that may reach a web visitor: a library's error often names the full path of
    the file it could not read, and the server's folders are nobody's business.

    >>> redact_paths("cannot open '/srv/shoal/.uploads/upload-1/e.parquet': bad footer")
    "cannot open 'e.parquet': bad footer"
    """
    text = _QUOTED_PATH.sub(lambda m: m.group(1) + _last_part(m.group(2)) + m.group(1), text)
    return _BARE_PATH.sub(lambda m: _last_part(m.group(0)), text)


def _last_part(path: str) -> str:
    parts = [p for p in re.split(r"[\\/]", path) if p]
    return parts[-1] if parts else path


def error_text(error: BaseException, *files: Path) -> str:
    """A library error as one short clause: ``files`` named by their name, other paths cut."""
    text = str(error).strip() or type(error).__name__
    for file in files:
        for form in sorted({str(file), str(Path(file).absolute())}, key=len, reverse=True):
            text = text.replace(form, Path(file).name)
    return redact_paths(text).rstrip(".")
