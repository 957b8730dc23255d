"""Atomic, durable writes and JSON encoding: every file of the store is written through these.

A writer goes through a temporary file in the same directory, fsyncs it, renames it over the
target with ``os.replace`` and then fsyncs the directory, so that a crash, or a power cut, at
any moment leaves the previous state readable, and a reader sees either the old or the new file.
A folder created on the way has its own entry fsynced too.

A write that runs out of room raises :class:`DiskFullError` naming the file (the temporary file
is removed, so the space it took comes back); a JSON file that cannot be parsed raises
:class:`CorruptFileError` naming it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import resource
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shoal.store.errors import CorruptFileError, DiskFullError


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def fsync_directory(folder: Path) -> None:
    """Make the entries of ``folder`` (a rename into it, a new file or folder) durable."""
    try:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # not a directory we may open (some platforms): nothing more to do
        return
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise  # some filesystems cannot fsync a directory; others' errors are real
    finally:
        os.close(descriptor)


def make_dirs(folder: Path) -> None:
    """``mkdir -p`` whose new folders survive a crash: the parent of each new one is fsynced."""
    folder = Path(folder)
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:  # made by another writer meanwhile
            continue
        fsync_directory(new.parent)


def replace_durably(source: Path, target: Path) -> None:
    """``os.replace`` then fsync the folder(s) involved, so the rename survives a crash."""
    os.replace(source, target)
    fsync_directory(Path(target).parent)
    if Path(source).parent != Path(target).parent:
        fsync_directory(Path(source).parent)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` atomically.

    Raises DiskFullError (naming ``target``) when the disk, a quota or the file size limit runs
    out; the previous ``target`` is left as it was.
    """
    target = Path(target)
    tmp: Path | None = None
    try:
        make_dirs(target.parent)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        replace_durably(tmp, target)
    except OSError as error:
        reason = _out_of_room(error, tmp, target.parent)
        if reason is None:
            raise
        raise DiskFullError(
            f"no space left to write {target}: {reason}; that file was left as it was. Free "
            "some disk space and run again"
        ) from error
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def _out_of_room(error: OSError, tmp: Path | None, folder: Path) -> str | None:
    """Why a failed write ran out of room, or None when it failed for another reason."""
    text = str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text:
        return "the disk is full" if error.errno != errno.EDQUOT else "the disk quota is used up"
    if error.errno == errno.EFBIG or "File too large" in text:
        return "the file is over the file size limit"
    if error.errno is None and "requested and" in text:
        # numpy's short write ("N requested and M written") keeps no errno: look at the disk.
        with contextlib.suppress(OSError):
            if shutil.disk_usage(folder).free < (1 << 20):
                return "the disk is full"
            limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
            if limit != resource.RLIM_INFINITY and tmp is not None and tmp.stat().st_size >= limit:
                return "the file is over the file size limit"
        return "the disk took only part of the file"
    return None


def write_json(target: Path, payload: Any) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=json_default))


def read_json(path: Path) -> Any:
    """The parsed file; CorruptFileError (with ``path``) when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptFileError(f"{path} is damaged: not valid JSON ({error})") from error


def write_parquet(target: Path, frame: pd.DataFrame) -> None:
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)


def write_npy(target: Path, array: np.ndarray) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and arrays and paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
