"""Per-batch checkpoints of a long computation, so a killed run resumes where it stopped.

One ``.npy`` per finished batch plus a manifest that pins what the batches mean (model,
precision, batch size, a digest of the inputs...). A directory whose manifest differs belongs to
another run and is refused, never mixed in. Every file is written atomically. A damaged batch
is computed again; a damaged manifest makes every batch be computed again (nothing says what
they were).

Example:
    >>> checkpoints = dataset.batch_checkpoints("lite0", manifest)             # doctest: +SKIP
    >>> embed_paths(paths, model, checkpoints=checkpoints)                     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from shoal.store.errors import CorruptFileError, StoreError
from shoal.store.files import read_json, write_json, write_npy

#: Guards a write of new files: the block appends each file's path before writing it, and the
#: guard removes them when the write fails or the owner is gone (``Dataset._writing``).
WriteGuard = Callable[[], contextlib.AbstractContextManager[list[Path]]]

MANIFEST = "manifest.json"


class CheckpointMismatchError(StoreError):
    """A checkpoint directory belongs to a different run (model, precision, paths or batches)."""


class BatchCheckpoints:
    """Finished batches ``[start, end)`` of a (total, dim) float32 result, kept in ``directory``."""

    def __init__(
        self, directory: Path, manifest: dict[str, Any], *, writing: WriteGuard | None = None
    ) -> None:
        self.directory = Path(directory)
        self._writing = writing or _unguarded
        path = self.directory / MANIFEST
        stored = None
        if path.exists():
            with contextlib.suppress(CorruptFileError):
                stored = read_json(path)
            if not isinstance(stored, dict):
                stored = None
                for batch in self.directory.glob("batch-*.npy"):  # of an unknown run: discarded
                    batch.unlink(missing_ok=True)
        if stored is not None:
            differing = [key for key in manifest if stored.get(key) != manifest[key]]
            if differing:
                details = "; ".join(
                    f"{key}: checkpoint has {stored.get(key)!r}, this run has {manifest[key]!r}"
                    for key in differing
                )
                raise CheckpointMismatchError(
                    f"checkpoint directory {str(self.directory)!r} belongs to a different run "
                    f"({details}). Rerun with the same settings to resume, or delete the "
                    "directory to start over."
                )
        else:
            with self._writing() as written:
                written.append(path)
                write_json(path, manifest)
        for stale in self.directory.glob(".*.tmp"):  # left by a killed run
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def _file(self, start: int, end: int) -> Path:
        return self.directory / f"batch-{start:010d}-{end:010d}.npy"

    def load(self, start: int, end: int, dim: int) -> np.ndarray | None:
        """The stored batch, or None when it is missing or not (end - start, dim) float32."""
        path = self._file(start, end)
        if not path.exists():
            return None
        try:
            vectors = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return None  # damaged: computed again
        if vectors.shape != (end - start, dim) or vectors.dtype != np.float32:
            return None
        return vectors

    def save(self, start: int, end: int, vectors: np.ndarray) -> None:
        with self._writing() as written:
            written.append(self._file(start, end))
            write_npy(written[0], vectors)


@contextlib.contextmanager
def _unguarded() -> Iterator[list[Path]]:
    yield []
