"""Images into the store: a folder, a zip, or a CSV/Parquet manifest that names the files.

Every image is validated on its own (:func:`check_image`); a bad file is listed in the import
report with the reason and what to do, and the good files are imported. The dataset appears in the
workspace in one rename once everything is in place, so a failed or killed import leaves nothing
half-built.

Example:
    >>> report = import_source(Workspace(), "photos.zip", dataset="pets")   # doctest: +SKIP
    >>> report.imported, [r.reason for r in report.rejected]                 # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from PIL import Image

from shoal.ingest.publish import (
    DEFAULT_LIMITS,
    ImportLimits,
    ImportReport,
    IngestError,
    ProgressCallback,
    check_id_lengths,
    check_new_dataset,
    check_unique_ids,
    error_text,
    publish,
    stable_id,
    staging,
    store_image,
)
from shoal.store import Workspace

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
PIL_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "MPO"}
SPLIT_FOLDERS = {"train", "training", "val", "valid", "validation", "test", "testing"}
PATH_COLUMNS = ("path", "image", "image_path", "filepath", "file", "filename", "file_name")
ID_COLUMNS = ("sample_id", "id", "image_id")
#: Below this many bytes in all, a zip is not checked for its overall compression ratio.
ZIP_RATIO_CHECK_BYTES = 64 << 20
RESERVED_COLUMNS = {"sample_id", "source", "path"}
#: Compression methods Python's zipfile reads (stored, deflate, bzip2, LZMA).
ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
SUPPORTED_FORMATS = "JPEG, PNG, WebP, BMP or TIFF"
REZIP = "zip the files again (or upload them as files)"


# --------------------------------------------------------------------------- image validation


def check_image(path: Path, limits: ImportLimits = DEFAULT_LIMITS) -> str | None:
    """Return None if ``path`` is a readable image within the caps, else the reason it is not."""
    try:
        size = path.stat().st_size
    except OSError as error:
        return (
            f"cannot read file: {error.strerror or error}; check that it can be read, or copy it "
            "again"
        )
    if size == 0:
        return "empty file (0 bytes); re-export it, or remove it"
    # Pillow's own global cap is left alone (web threads decode at the same time): ours is checked
    # from the header before decoding, and Pillow's (an error at 2 x 89 Mpx) stays in force.
    try:
        with Image.open(path) as image:
            if image.format not in PIL_FORMATS:
                return f"unsupported image format {image.format}; convert it to {SUPPORTED_FORMATS}"
            width, height = image.size
            if width * height > limits.max_image_pixels:
                return (
                    f"image is {width}x{height} = {width * height:,} pixels, over the cap of "
                    f"{limits.max_image_pixels:,} (possible decompression bomb); downscale it"
                )
            image.load()  # decodes fully: catches truncated and corrupt data
    except Image.DecompressionBombError as error:
        return f"possible decompression bomb: {error_text(error, path)}; downscale it"
    except Image.UnidentifiedImageError:
        return (
            "not an image (content does not match any image format), though its extension says "
            "so; re-export it as an image, or remove it"
        )
    except (OSError, SyntaxError, ValueError) as error:
        return f"truncated or corrupt image: {error_text(error, path)}; re-export or re-save it"
    return None


# --------------------------------------------------------------------------- sources


def import_source(
    workspace: Workspace,
    source: str | os.PathLike[str],
    *,
    dataset: str,
    split: str | None = None,
    limits: ImportLimits = DEFAULT_LIMITS,
    progress: ProgressCallback | None = None,
    display_name: str | None = None,
) -> ImportReport:
    """Import a folder, a .zip, or a CSV/Parquet manifest as a new dataset.

    ``display_name`` is how the report (and any error) names a folder or zip (the web uploader
    names the upload, never its folder on the server); by default, the path given.
    """
    check_new_dataset(workspace, dataset)
    path = Path(source)
    if not path.exists():
        raise IngestError(f"{path} does not exist; check the path")
    suffix = path.suffix.lower()
    if path.is_dir():
        return import_folder(
            workspace,
            path,
            dataset=dataset,
            split=split,
            limits=limits,
            progress=progress,
            report=ImportReport(dataset=dataset, source=display_name or str(path)),
        )
    if suffix == ".zip":
        return import_zip(
            workspace,
            path,
            dataset=dataset,
            split=split,
            limits=limits,
            progress=progress,
            display_name=display_name,
        )
    if suffix in (".parquet", ".pq"):
        from shoal.ingest.image_parquet import import_image_parquet, is_image_parquet

        if is_image_parquet(path):  # the images are in the file (datasets-style Parquet)
            return import_image_parquet(
                workspace, path, dataset=dataset, split=split, limits=limits, progress=progress
            )
    if suffix in (".csv", ".parquet", ".pq"):
        return import_manifest(
            workspace, path, dataset=dataset, split=split, limits=limits, progress=progress
        )
    raise IngestError(
        f"don't know how to import {path.name}: give a folder of images, a .zip, or a .csv/.parquet manifest"
    )


def import_folder(
    workspace: Workspace,
    folder: Path,
    *,
    dataset: str,
    split: str | None = None,
    limits: ImportLimits = DEFAULT_LIMITS,
    progress: ProgressCallback | None = None,
    report: ImportReport | None = None,
) -> ImportReport:
    """Images under ``folder``; class from the first sub-folder, split from a top-level train/val/test."""
    folder = Path(folder)
    report = report or ImportReport(dataset=dataset, source=str(folder))
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and not is_hidden(p.relative_to(folder))
    )
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    root = _strip_wrapper(folder, images) if images else folder
    entries: list[tuple[Any, ...]] = []
    for file in files:
        relative = file.relative_to(root)
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            report.reject(
                relative.as_posix(),
                f"not an image file ({file.suffix or 'no extension'}); rename it if it is an "
                f"image ({', '.join(sorted(IMAGE_SUFFIXES))}), or remove it",
            )
            continue
        file_split, label = _split_and_label(relative)
        entries.append((file, relative.as_posix(), split or file_split, label, {}))
    return store_entries(workspace, dataset, entries, report, limits=limits, progress=progress)


def import_zip(
    workspace: Workspace,
    archive: Path,
    *,
    dataset: str,
    split: str | None = None,
    limits: ImportLimits = DEFAULT_LIMITS,
    progress: ProgressCallback | None = None,
    display_name: str | None = None,
) -> ImportReport:
    """Extract a zip safely (no zip-slip, no bombs) and import it as a folder."""
    report = ImportReport(dataset=dataset, source=display_name or Path(archive).name)
    scratch = workspace.scratch_dir(".staging", "unzip-")  # held: the sweep leaves it alone
    try:
        safe_extract(Path(archive), scratch, report, limits=limits)
        return import_folder(
            workspace,
            scratch,
            dataset=dataset,
            split=split,
            limits=limits,
            progress=progress,
            report=report,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def safe_extract(
    archive: Path, target: Path, report: ImportReport, *, limits: ImportLimits
) -> None:
    """Extract the entries that are safe; list every refused entry with its reason in ``report``."""
    shown = report.source or archive.name
    try:
        bundle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise IngestError(
            f"{shown} is not a valid zip file ({error_text(error, archive)}); {REZIP}"
        ) from error
    with bundle:
        infos = bundle.infolist()
        if len(infos) > limits.max_zip_entries:
            raise IngestError(
                f"{shown} has {len(infos):,} entries, over the cap of {limits.max_zip_entries:,}; "
                "split it into several smaller zips"
            )
        files = [info for info in infos if not info.is_dir()]
        reasons = [_unsafe_entry(info, limits) for info in files]
        kept = [info for info, reason in zip(files, reasons, strict=True) if reason is None]
        declared = sum(info.file_size for info in kept)
        packed = max(1, sum(info.compress_size for info in kept))
        # Many small entries each pass the per-entry check; together they must pass it too.
        if declared > ZIP_RATIO_CHECK_BYTES and declared / packed > limits.max_zip_ratio:
            raise IngestError(
                f"{shown} would expand {declared / packed:,.0f}:1 to {declared:,} bytes, "
                f"over {limits.max_zip_ratio:.0f}:1 (zip bomb); nothing was extracted. Zip the "
                "real image files (they compress far less), or split the archive"
            )
        total = 0
        placed = _Placed()
        for info, reason in zip(files, reasons, strict=True):
            name = info.filename
            parts = PurePosixPath(name.replace("\\", "/")).parts
            reason = reason or placed.conflict(parts)
            if reason:
                report.reject(name, reason)
                continue
            if total + info.file_size > limits.max_zip_total_bytes:
                report.reject(
                    name,
                    f"zip would expand past the cap of {limits.max_zip_total_bytes:,} bytes (possible zip bomb); "
                    "split the archive",
                )
                continue
            destination = target.joinpath(*parts)
            written = 0
            try:
                destination.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(info) as src, open(destination, "wb") as dst:
                    # Header sizes can lie: count the bytes actually produced.
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        written += len(chunk)
                        if written > info.file_size or total + written > limits.max_zip_total_bytes:
                            raise _Bomb()
                        dst.write(chunk)
            except _Bomb:
                destination.unlink(missing_ok=True)
                report.reject(
                    name, f"entry expands beyond its declared size (zip bomb); skipped: {REZIP}"
                )
                continue
            except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, RuntimeError) as error:
                _discard(destination)
                detail = (
                    "its data ends early"
                    if isinstance(error, EOFError) and not str(error)
                    else error_text(error, destination)
                )
                report.reject(name, f"corrupt zip entry ({detail}); skipped: {REZIP}")
                continue
            except OSError as error:
                _discard(destination)
                # A full or failing disk is not this entry's fault: the import stops.
                if error.errno not in _NAME_ERRNOS:
                    raise IngestError(
                        f"cannot extract {name} on the server ({error.strerror or error}); "
                        "nothing was imported: try again later, or tell whoever runs Shoal"
                    ) from error
                report.reject(name, _unstorable_name(error))
                continue
            total += written
            placed.add(parts)


#: Errors that say a zip entry's name cannot be a file here (too long, bad characters, a file
#: where a folder should be): that entry is skipped, the rest goes on.
_NAME_ERRNOS = {
    errno.ENAMETOOLONG,
    errno.EINVAL,
    errno.EILSEQ,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EISDIR,
}


def _unstorable_name(error: OSError) -> str:
    if error.errno == errno.ENAMETOOLONG:
        return "its name (or a folder in it) is too long to store; skipped: rename it shorter"
    return (
        f"its name cannot be stored ({error.strerror or error}); skipped: rename it "
        "(shorter, plain characters)"
    )


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):  # a name the filesystem refused was never created
        path.unlink(missing_ok=True)


class _Placed:
    """Where a zip's entries were extracted to, to skip an entry that collides with one of them
    (the same name twice, or a file and a folder of one name) instead of failing the import."""

    def __init__(self) -> None:
        self.files: set[tuple[str, ...]] = set()
        self.folders: set[tuple[str, ...]] = set()

    def conflict(self, parts: tuple[str, ...]) -> str | None:
        if parts in self.files:
            return "another entry of the zip has the same name; the first is kept: rename one"
        if parts in self.folders:
            return (
                "a folder of the zip has this file's name; skipped: rename the file or the folder"
            )
        for end in range(1, len(parts)):
            if parts[:end] in self.files:
                return (
                    f"{'/'.join(parts[:end])!r} is a file in this zip, so nothing can be stored "
                    "under it; skipped: rename the file or the folder"
                )
        return None

    def add(self, parts: tuple[str, ...]) -> None:
        self.files.add(parts)
        self.folders.update(parts[:end] for end in range(1, len(parts)))


class _Bomb(Exception):
    pass


def _unsafe_entry(info: zipfile.ZipInfo, limits: ImportLimits) -> str | None:
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    relative = "skipped: zip the files by their relative path (e.g. `zip -r photos.zip photos/`)"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return f"absolute path in zip entry (zip-slip); {relative}"
    if ".." in parts:
        return f"'..' in zip entry path (zip-slip); {relative}"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link in zip; skipped: put the file itself in the zip"
    if info.flag_bits & 0x1:
        return "entry is encrypted; skipped: zip the files again without a password"
    if info.compress_type not in ZIP_METHODS:
        return (
            f"compression method {info.compress_type} is not supported; skipped: zip the files "
            "again with the usual deflate compression"
        )
    if info.file_size > (1 << 20) and info.compress_size > 0:
        ratio = info.file_size / info.compress_size
        if ratio > limits.max_zip_ratio:
            return (
                f"compression ratio {ratio:,.0f}:1 is over {limits.max_zip_ratio:.0f}:1 (zip bomb); "
                "skipped: zip the real image files (they compress far less)"
            )
    if info.file_size > limits.max_zip_total_bytes:
        return (
            f"entry declares {info.file_size:,} bytes, over the cap of "
            f"{limits.max_zip_total_bytes:,} (zip bomb?); skipped: downscale it or split the archive"
        )
    return None


def import_manifest(
    workspace: Workspace,
    manifest: Path,
    *,
    dataset: str,
    split: str | None = None,
    limits: ImportLimits = DEFAULT_LIMITS,
    progress: ProgressCallback | None = None,
    confined: bool = False,
) -> ImportReport:
    """One row per image: a path column (relative to the manifest) and any metadata columns.

    ``confined`` (the web uploader's setting): every path must be relative and stay inside the
    manifest's folder, symlinks resolved, and the reasons never name a server path; so a
    manifest cannot pull in, or probe for, files elsewhere on the server. Without it (the CLI,
    on the user's own files) absolute paths are accepted.
    """
    manifest = Path(manifest)
    folder = manifest.parent.resolve()
    table = read_table(manifest, limits=limits)
    if table.empty:
        raise IngestError(
            f"{manifest.name} has no rows; add one row per image under its header "
            f"(columns found: {', '.join(map(str, table.columns)) or 'none'})"
        )
    path_column = _find_column(table, PATH_COLUMNS)
    if path_column is None:
        raise IngestError(
            f"{manifest.name} has no image path column; name one of {', '.join(PATH_COLUMNS)} "
            f"(columns found: {', '.join(map(str, table.columns))})"
        )
    first_row = 2 if manifest.suffix.lower() == ".csv" else 1
    id_column = _find_column(table, ID_COLUMNS)
    if id_column is not None:
        check_id_lengths(table[id_column], manifest.name, id_column, first_row=first_row)
        check_unique_ids(
            table[id_column],
            manifest.name,
            id_column,
            first_row=first_row,
            hint="give each row its own id",
        )

    def _row_fields(row: dict[str, Any]) -> tuple[Any, ...]:
        """(split, label, metadata, sample_id) of a manifest row."""
        metadata = {k: v for k, v in row.items() if k not in (path_column, id_column)}
        for column in RESERVED_COLUMNS & set(metadata):
            metadata.pop(column)
        if split and not _present(metadata.get("split")):
            metadata["split"] = split
        sample_id = str(row[id_column]) if id_column is not None else None
        return metadata.pop("split", None), metadata.pop("label", None), metadata, sample_id

    # Images named by a remote URI are downloaded here first; removed when the import ends.
    with tempfile.TemporaryDirectory(dir=_scratch_root(workspace), prefix="fetched-") as fetched:
        report = ImportReport(dataset=dataset, source=manifest.name)
        entries: list[tuple[Any, ...]] = []
        for row_number, row in enumerate(table.to_dict("records"), start=first_row):
            raw = row.get(path_column)
            where = f"row {row_number}" + (f" ({_shown(raw)})" if isinstance(raw, str) else "")
            if not _present(raw) or (isinstance(raw, str) and not raw.strip()):
                report.reject(where, f"empty '{path_column}' value; fill it in or drop the row")
                continue
            if not isinstance(raw, str):
                report.reject(
                    where,
                    f"'{path_column}' value {raw!r} is not a file path; give the path of an image "
                    "file, relative to the manifest",
                )
                continue
            if any(ord(ch) < 32 for ch in raw):
                report.reject(
                    where, "path contains a NUL or control character; remove it from the manifest"
                )
                continue
            if "://" in raw:
                if confined:
                    report.reject(
                        where,
                        "a URI is read only by `shoal import` on the server, not from an upload; "
                        "give a path relative to the manifest",
                    )
                    continue
                try:
                    entries.append((fetch_uri(raw.strip(), Path(fetched)), raw, *_row_fields(row)))
                except IngestError as error:
                    report.reject(where, str(error))
                continue
            file = Path(raw)
            file = file if file.is_absolute() else manifest.parent / file
            if confined and (Path(raw).is_absolute() or not _inside(file, folder)):
                report.reject(
                    where,
                    "path leaves the upload: give a path relative to the manifest, inside the "
                    "uploaded folder (no absolute paths, no '..')",
                )
                continue
            try:
                found = file.is_file()
            except OSError as error:  # e.g. a name longer than the filesystem allows
                report.reject(where, _unusable_path(error))
                continue
            if not found:
                shown = _shown(raw) if confined else str(file)
                report.reject(
                    where,
                    f"image file not found at {shown}; paths are relative to the manifest's folder",
                )
                continue
            entries.append((file, raw, *_row_fields(row)))
        return store_entries(workspace, dataset, entries, report, limits=limits, progress=progress)


#: URI schemes a manifest (from the CLI) may name its images by, read through ``pyarrow.fs``
#: with the credentials pyarrow finds in the environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS,
#: the instance's role, ...).
URI_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
#: A remote image larger than this is refused before it is downloaded.
MAX_REMOTE_IMAGE_BYTES = 512 * 1024**2


def fetch_uri(uri: str, scratch: Path) -> Path:
    """The image a URI names, as a local file: a ``file://`` path as it is, a remote object
    (``s3://bucket/key``, ``gs://...``) downloaded into ``scratch``. Raises IngestError with the
    reason (unknown scheme, not found, unreadable, too large).

    >>> fetch_uri("file:///data/cats/1.jpg", Path("/tmp"))                  # doctest: +SKIP
    PosixPath('/data/cats/1.jpg')
    """
    import pyarrow
    import pyarrow.fs as pafs

    scheme = uri.split("://", 1)[0].lower()
    if scheme not in URI_SCHEMES:
        schemes = ", ".join(f"{s}://" for s in URI_SCHEMES)
        raise IngestError(
            f"'{scheme}://' is not read by Shoal; give a path, or a URI of {schemes} "
            "(web URLs: download the images first)"
        )
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(path)
    except (OSError, ValueError, pyarrow.ArrowException) as error:
        raise IngestError(f"cannot open {uri}: {_first_line(error)}") from error
    if info.type != pafs.FileType.File:
        raise IngestError(f"image file not found at {uri}")
    if isinstance(filesystem, pafs.LocalFileSystem):
        return Path(path)
    if info.size is not None and info.size > MAX_REMOTE_IMAGE_BYTES:
        raise IngestError(
            f"{uri} is {info.size / 1024**2:,.0f} MiB, more than an image can be "
            f"({MAX_REMOTE_IMAGE_BYTES // 1024**2} MiB); check the manifest"
        )
    target = scratch / (hashlib.sha1(uri.encode()).hexdigest()[:20] + PurePosixPath(path).suffix)
    try:
        with filesystem.open_input_stream(path) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    except (OSError, pyarrow.ArrowException) as error:
        target.unlink(missing_ok=True)
        raise IngestError(f"cannot read {uri}: {_first_line(error)}") from error
    return target


def _first_line(error: BaseException, limit: int = 200) -> str:
    """A library's error, cut to its first line (pyarrow's can list every path it tried)."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _inside(file: Path, folder: Path) -> bool:
    """Whether ``file``, with every symlink resolved, lies inside the resolved ``folder``."""
    try:
        return file.resolve().is_relative_to(folder)
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return False


def _shown(raw: str, limit: int = 80) -> str:
    """A path from a manifest as a message shows it: control characters as '?', long ones cut."""
    text = "".join("?" if ord(ch) < 32 else ch for ch in raw)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _unusable_path(error: OSError) -> str:
    if error.errno == errno.ENAMETOOLONG:
        return (
            "path is too long for the server's filesystem; rename the file (or its folders) shorter"
        )
    return f"cannot look this path up ({error.strerror or error}); rename the file"


def read_table(
    path: Path, *, limits: ImportLimits = DEFAULT_LIMITS, columns: list[str] | None = None
) -> pd.DataFrame:
    """Read a CSV or Parquet table (only ``columns`` of a Parquet file, if given) with an error
    that names the file.

    A Parquet file's rows × columns are read from its footer first: a small file can decode to
    billions of cells (one repeated value compresses to nothing), refused before it is loaded.
    """
    if path.suffix.lower() == ".csv":
        return _read_csv_table(path)
    try:
        metadata = pq.ParquetFile(path).metadata
        check_table_cells(path.name, metadata.num_rows, metadata.num_columns, limits)
        return pd.read_parquet(path, columns=columns)
    except IngestError:
        raise
    except Exception as error:  # noqa: BLE001 - any parser error becomes one clear message
        raise IngestError(
            f"cannot read {path.name} as Parquet ({error_text(error, path)}); save it again "
            "with pandas' DataFrame.to_parquet or pyarrow, or upload a CSV"
        ) from error


def check_table_cells(name: str, n_rows: int, n_columns: int, limits: ImportLimits) -> None:
    """Refuse a table of more than ``limits.max_table_cells`` cells, from its own footer."""
    if n_rows * n_columns > limits.max_table_cells:
        raise IngestError(
            f"{name} holds {n_rows:,} rows x {n_columns} columns, over the cap of "
            f"{limits.max_table_cells:,} cells; split it into smaller tables"
        )


def _read_csv_table(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError as error:
        raise IngestError(
            f"{path.name} is empty; save it as a CSV with a header row (column names) and one row "
            "per item"
        ) from error
    except UnicodeDecodeError as error:
        raise IngestError(
            f"{path.name} is not UTF-8 text (byte {error.object[error.start]:#04x} at position "
            f"{error.start:,}); save it as UTF-8 CSV"
        ) from error
    except pd.errors.ParserError as error:
        raise IngestError(
            f"cannot read {path.name}: {error_text(error, path)}; every row needs as many fields "
            "as the header (quote values that contain commas)"
        ) from error
    except Exception as error:  # noqa: BLE001 - any parser error becomes one clear message
        raise IngestError(
            f"cannot read {path.name} as CSV ({error_text(error, path)}); save it again as a "
            "UTF-8 CSV with a header row"
        ) from error


# --------------------------------------------------------------------------- storing


def store_entries(
    workspace: Workspace,
    dataset: str,
    entries: list,
    report: ImportReport,
    *,
    limits: ImportLimits,
    progress: ProgressCallback | None,
) -> ImportReport:
    """Check and store each entry's image, then publish the dataset: the one storage path of
    the image-level importers (folder, zip, manifest, Label Studio).

    entries: ``(file, source, split, label, metadata)`` tuples, optionally with a sixth item,
    the sample id (else a stable id of ``source``). A bad image is rejected in ``report``.
    """
    rows = []
    with staging(workspace, dataset) as staged:
        for done, entry in enumerate(entries, start=1):
            file, source, file_split, label, metadata = entry[:5]
            explicit_id = entry[5] if len(entry) > 5 else None
            reason = check_image(file, limits)
            if reason:
                report.reject(source, reason)
            else:
                rows.append(
                    {
                        "sample_id": explicit_id or stable_id(source),
                        "source": source,
                        "path": store_image(staged, file),
                        "split": _text_or_none(file_split),
                        "label": _text_or_none(label),
                        **metadata,
                    }
                )
            if progress:
                progress(done, len(entries))
        if not rows:
            raise IngestError(_nothing_imported(report))
        return publish(workspace, staged, pd.DataFrame(rows), report)


def _nothing_imported(report: ImportReport) -> str:
    if not report.rejected:
        return (
            f"no image files in {report.source}; add {SUPPORTED_FORMATS} files "
            f"({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    head = "; ".join(f"{r.file}: {r.reason}" for r in report.rejected[:3])
    more = f" (and {len(report.rejected) - 3} more)" if len(report.rejected) > 3 else ""
    return f"no valid image in {report.source}, so nothing was imported: {head}{more}"


def _split_and_label(relative: Path) -> tuple[str | None, str | None]:
    folders = list(relative.parts[:-1])
    file_split = None
    if folders and folders[0].lower() in SPLIT_FOLDERS:
        file_split = folders.pop(0)
    return file_split, (folders[0] if folders else None)


def _strip_wrapper(folder: Path, files: list[Path]) -> Path:
    """A zip of ``mydata/`` holds everything under one folder: look inside it for splits and classes."""
    root = folder
    while True:
        children = {f.relative_to(root).parts[0] for f in files}
        only = next(iter(children)) if len(children) == 1 else None
        if only is None or not (root / only).is_dir() or only.lower() in SPLIT_FOLDERS:
            return root
        inner = {f.relative_to(root / only).parts[0] for f in files}
        # One level down must itself be folders (classes or splits), not just the images.
        if all((root / only / child).is_dir() for child in inner):
            root = root / only
        else:
            return root


def is_hidden(relative: Path) -> bool:
    """Dot files and folders, and the ``__MACOSX`` folder a Mac zip adds: never data."""
    return any(part.startswith(".") or part == "__MACOSX" for part in relative.parts)


def _scratch_root(workspace: Workspace) -> Path:
    root = workspace.root / ".staging"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _find_column(table: pd.DataFrame, candidates: tuple[str, ...]) -> str | None:
    lowered = {str(c).lower(): c for c in table.columns}
    return next((lowered[c] for c in candidates if c in lowered), None)


def _present(value: Any) -> bool:
    if value is None or (isinstance(value, str) and value == ""):
        return False
    try:
        return not bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or array: present
        return True


def _text_or_none(value: Any) -> str | None:
    return str(value) if _present(value) else None
