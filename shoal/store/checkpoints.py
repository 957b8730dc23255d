"""Per-batch checkpoints of a long computation, so a killed run resumes where it stopped.

One ``.npy`` per finished batch plus a manifest that pins what the batches mean (model,
precision, batch size, a digest of the inputs...). A directory whose manifest differs belongs to
another run and is refused, never mixed in. Every file is written atomically.

Example:
    >>> checkpoints = dataset.batch_checkpoints("lite0", manifest)             # doctest: +SKIP
    >>> embed_paths(paths, model, checkpoints=checkpoints)                     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from shoal.store.errors import StoreError
from shoal.store.files import read_json, write_json, write_npy

MANIFEST = "manifest.json"


class CheckpointMismatchError(StoreError):
    """A checkpoint directory belongs to a different run (model, precision, paths or batches)."""


class BatchCheckpoints:
    """Finished batches ``[start, end)`` of a (total, dim) float32 result, kept in ``directory``."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / MANIFEST
        if path.exists():
            stored = read_json(path)
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
        vectors = np.load(path, allow_pickle=False)
        if vectors.shape != (end - start, dim) or vectors.dtype != np.float32:
            return None
        return vectors

    def save(self, start: int, end: int, vectors: np.ndarray) -> None:
        write_npy(self._file(start, end), vectors)
