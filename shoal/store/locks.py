"""Advisory locks (``fcntl.flock``) that keep two writers off one dataset or embedding set.

Two embed jobs on one set would delete each other's checkpoints, two publishes of one set could
leave its pointer naming deleted files, and two imports under one name could remove each other's
dataset. A lock file beside what it guards serialises them; the kernel releases a lock when its
holder dies, so a SIGKILLed job never leaves a stale lock behind.

Example:
    >>> with exclusive(path, what="embedding set 'lite0'", wait=False):     # doctest: +SKIP
    ...     compute_and_publish()
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from shoal.store.errors import StoreError


class BusyError(StoreError):
    """Another job or import holds the lock (only raised when not waiting for it)."""


@contextlib.contextmanager
def exclusive(path: Path, *, what: str, wait: bool = True) -> Iterator[None]:
    """Hold the lock file ``path`` for the block; ``wait=False`` raises BusyError at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
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
