"""Advisory locks (``fcntl.flock``) that keep two writers off one dataset or embedding set, and
keep the sweep off a folder that a live process is still filling.

Two embed jobs on one set would delete each other's checkpoints, two publishes of one set could
leave its pointer naming deleted files, and two imports under one name could remove each other's
dataset. A lock file beside what it guards serialises them; the kernel releases a lock when its
holder dies, so a SIGKILLed job never leaves a stale lock behind. For the same reason a scratch
folder that its creator holds (:func:`hold`) is one a live process still uses, and one nobody
holds was left by a process that is gone (:func:`unless_held`).

Example:
    >>> with exclusive(path, what="embedding set 'lite0'", wait=False):     # doctest: +SKIP
    ...     compute_and_publish()
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from shoal.store.errors import StoreError
from shoal.store.files import make_dirs


class BusyError(StoreError):
    """Another job or import holds the lock (only raised when not waiting for it)."""


@contextlib.contextmanager
def exclusive(path: Path, *, what: str, wait: bool = True) -> Iterator[None]:
    """Hold the lock file ``path`` for the block; ``wait=False`` raises BusyError at once."""
    make_dirs(path.parent)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise BusyError(
                f"{what} is being written by another job or import; try again when it has finished"
            ) from None
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


# The folders this process holds: path -> the open descriptor whose lock marks it as in use.
_held: dict[Path, int] = {}
_held_guard = threading.Lock()


def hold(folder: Path) -> None:
    """Mark ``folder`` as in use by this process until :func:`release` or the process ends."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    with _held_guard:
        _forget_gone()
        _held[Path(folder)] = descriptor


def release(folder: Path) -> None:
    """Stop holding ``folder`` (it was published, or removed)."""
    with _held_guard:
        descriptor = _held.pop(Path(folder), None)
        if descriptor is not None:
            os.close(descriptor)


def _forget_gone() -> None:
    """Close the locks of held folders that are gone (removed by a failed import)."""
    for folder in [f for f in _held if not f.exists()]:
        os.close(_held.pop(folder))


@contextlib.contextmanager
def unless_held(folder: Path) -> Iterator[bool]:
    """Yield True while this caller holds ``folder``'s lock because no live process did; False
    when some process (this one included) holds it, or it is gone. Used to remove a folder
    nobody uses without racing a process that starts holding it."""
    try:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)
