"""Embedding matrices on disk: written block by block, read in copies that do not stay resident.

A set of a million 1280-d vectors is 4.9 GB of float32, more than an analysis may hold. So the
store never loads one whole:

* :class:`VectorWriter` writes an ``.npy`` file (the plain numpy format, readable by
  ``np.load``) row block by row block, in order or scattered to given rows, checking every value
  is finite as it goes; only the rows of one block are in memory.
* :class:`VectorFile` reads one. ``vectors[a:b]`` and ``vectors[rows]`` return in-memory copies
  (float32 rows, as kernels expect); the pages of the file they touched are handed back to the
  page cache every :data:`RELEASE_BYTES` read. Memory-mapping alone would not do: the kernel
  counts every page of the file a process has touched in its resident set until the process
  unmaps it, so one pass over a 1M-row set would leave 4.9 GB resident. Measured on a pass over
  400k x 1280 (2 GB) in 8192-row blocks: through ``np.load(mmap_mode="r")`` 2.1 GB peak RSS in
  0.15 s; through :class:`VectorFile` 0.34 GB in 0.4 s (the copy and the re-faults). The file
  stays in the page cache, which the system reclaims when it needs to.

``np.asarray(vectors)`` still reads the whole matrix: that is for small sets and tests.

Example:
    >>> writer = VectorWriter(path, count=3, dim=2)                     # doctest: +SKIP
    >>> writer.write(np.ones((3, 2))); writer.close()                   # doctest: +SKIP
    >>> VectorFile(path)[1:].tolist()                                    # doctest: +SKIP
    [[1.0, 1.0], [1.0, 1.0]]
"""

from __future__ import annotations

import mmap
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

#: A :class:`VectorFile` hands the pages it read back to the page cache after this many bytes.
RELEASE_BYTES = 128 << 20
#: What one scattered row read maps on average: its page and the rest of the page-cache folio
#: holding it (Linux' fault-around; with large folios, as ext4 has on Linux 6.x, about 370 KB
#: per 5 KB row was measured on a 4.9 GB set, against 64 KiB with small pages).
FAULT_AROUND_BYTES = 384 << 10
#: :func:`in_memory_if_small` reads sets of up to this many float32 bytes whole (100k x 1280).
IN_MEMORY_BYTES = 512 << 20
#: Header size of the ``.npy`` files this module writes: numpy's format pads the header to a
#: multiple of 64 bytes; 128 leaves room for any (count, dim) shape.
_HEADER_BYTES = 128


class VectorFile:
    """A read-only (count, dim) matrix in an ``.npy`` file, read in copies.

    Indexing: ``v[i]`` one row, ``v[a:b]`` (step 1) a block, ``v[rows]`` rows by number (any
    order, repeats allowed), ``v[rows, cols]`` as numpy. Every result is a new float32 array
    (stored float16 or float32), never a view of the file.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            shape, fortran, dtype, offset = read_npy_header(handle)
            if fortran or len(shape) != 2 or dtype not in (np.float32, np.float16):
                raise ValueError(
                    f"{self.path} holds a {dtype} array of shape {shape}"
                    f"{' in Fortran order' if fortran else ''}, not a (count, dim) float matrix"
                )
            size = os.fstat(handle.fileno()).st_size
            expected = offset + int(np.prod(shape)) * dtype.itemsize
            if size < expected:
                raise ValueError(f"{self.path} is truncated: {size:,} bytes of {expected:,}")
            self._map = (
                mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size > offset else None
            )
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(np.float32)
        self.stored_dtype = np.dtype(dtype)
        self.ndim = 2
        self._matrix = (
            np.ndarray(self.shape, dtype=dtype, buffer=self._map, offset=offset)
            if self._map is not None
            else np.empty(self.shape, dtype=dtype)
        )
        self._read = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def nbytes(self) -> int:
        return self.size * self.stored_dtype.itemsize

    def __repr__(self) -> str:
        return f"VectorFile({str(self.path)!r}, shape={self.shape}, dtype={self.stored_dtype})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (VectorFile, (str(self.path),))  # a worker process opens the file itself

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = key[0] if isinstance(key, tuple) else key
        rest = key[1:] if isinstance(key, tuple) else ()
        if isinstance(rows, slice) and rows.step not in (None, 1):
            rows = np.arange(*rows.indices(self.shape[0]))
        if not isinstance(rows, slice) and np.ndim(rows) == 1:
            rows = np.asarray(rows)
            if rows.dtype == bool:
                rows = np.flatnonzero(rows)
            elif not rows.size:
                rows = rows.astype(np.int64)
            if len(rows) > self._scatter_rows:
                return self._read_scattered(rows, rest)
        key = (rows, *rest) if rest else rows
        view = self._matrix[key]  # a view for slices, already a copy for row numbers
        taken = np.array(view, dtype=np.float32, copy=True if view.base is not None else None)
        read = taken.size * self.stored_dtype.itemsize
        if not isinstance(rows, slice):
            # A fault maps the rest of the page-cache folio holding the row too: scattered
            # rows leave far more resident than they hold.
            read += np.size(rows) * FAULT_AROUND_BYTES
        self._account(read)
        return taken

    @property
    def _scatter_rows(self) -> int:
        """Scattered rows read at once: about RELEASE_BYTES of mapped file each time."""
        row_bytes = self.shape[1] * self.stored_dtype.itemsize
        return max(1, RELEASE_BYTES // (FAULT_AROUND_BYTES + row_bytes))

    def _read_scattered(self, rows: np.ndarray, rest: tuple[Any, ...]) -> np.ndarray:
        """Many row numbers, read a few hundred at a time with the pages handed back between
        them: one gather of 65k rows spread over a 4.9 GB file mapped almost all of it."""
        step = self._scatter_rows
        first = self[(rows[:step], *rest)]
        out = np.empty((len(rows), *first.shape[1:]), dtype=np.float32)
        out[:step] = first
        for start in range(step, len(rows), step):
            out[start : start + step] = self[(rows[start : start + step], *rest)]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def __iter__(self) -> Any:
        raise TypeError("iterate a VectorFile in blocks: vectors[start:stop]")

    def blocks(self, block_rows: int) -> Any:
        """``(start, block)`` for consecutive blocks of ``block_rows`` rows."""
        for start in range(0, self.shape[0], block_rows):
            yield start, self[start : start + block_rows]

    def _account(self, read_bytes: int) -> None:
        with self._lock:
            self._read += read_bytes
            if self._read < RELEASE_BYTES or self._map is None:
                return
            self._read = 0
        release_pages(self._map)

    def release(self) -> None:
        """Hand every page read so far back to the page cache (the resident set drops)."""
        if self._map is not None:
            release_pages(self._map)


def in_memory_if_small(vectors: Any, max_bytes: int = IN_MEMORY_BYTES) -> Any:
    """``vectors`` as one float32 array when it takes at most ``max_bytes`` as float32, else
    ``vectors`` itself (a :class:`VectorFile` stays one).

    Reading in blocks is what keeps a million-row analysis within its memory budget; a set of
    a few hundred MB is faster whole: the kNN graph of 50k x 1280 takes 5.6 s from memory
    against 7.2 s from the file (its exact re-ranking then reads rows in place instead of in
    sequential passes). Read once per analysis, freed with it.
    """
    if not isinstance(vectors, VectorFile) or vectors.size * 4 > max_bytes:
        return vectors
    whole = vectors[:]
    vectors.release()
    return whole


def read_npy_header(handle: Any) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """``(shape, fortran_order, dtype, data_offset)`` of the ``.npy`` file open in ``handle``
    (read from its header alone; ValueError when it is not one)."""
    version = np.lib.format.read_magic(handle)
    read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = read_header(handle)
    return shape, fortran, dtype, handle.tell()


def release_pages(mapping: mmap.mmap) -> None:
    """``madvise(MADV_DONTNEED)`` a read-only file mapping: its pages leave this process's
    resident set and stay in the page cache, so the next read of them is a cheap minor fault.
    A no-op where the platform has no madvise."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is not None and hasattr(mapping, "madvise"):
        mapping.madvise(advice)


class VectorWriter:
    """Write a (count, dim) float32 ``.npy`` file block by block.

    ``write(block)`` appends rows in order; ``write(block, rows=r)`` puts them at rows ``r`` (for
    a file whose rows come in another order than the samples'). ``missing()`` tells which rows
    nothing was written to. Each block is checked finite first; a block with NaN or inf raises
    ``ValueError`` naming its first bad row (``first_row`` + offset) before anything is written.
    The file is complete only after ``close()``; a caller deletes it on failure.
    """

    def __init__(self, path: str | os.PathLike[str], *, count: int, dim: int):
        if count < 0 or dim < 1:
            raise ValueError(f"cannot write a ({count}, {dim}) matrix")
        self.path = Path(path)
        self.count, self.dim = int(count), int(dim)
        header = _npy_header(self.count, self.dim)
        self._offset = len(header)
        self._handle = open(self.path, "wb")  # noqa: SIM115 - closed by close() or abort()
        self._handle.write(header)
        self._handle.truncate(self._offset + self.count * self.dim * 4)
        self._next = 0
        self._written = np.zeros(self.count, dtype=bool)

    def write(self, block: np.ndarray, *, rows: np.ndarray | None = None) -> None:
        block = np.ascontiguousarray(block, dtype=np.float32)
        if block.ndim != 2 or block.shape[1] != self.dim:
            raise ValueError(f"block of shape {block.shape}, expected (n, {self.dim})")
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            raise NonFiniteRowError(int(np.flatnonzero(bad)[0]))
        if rows is None:
            rows = np.arange(self._next, self._next + len(block))
            if len(rows) and rows[-1] >= self.count:
                raise ValueError(f"more than {self.count} rows written")
            self._seek_write(self._next, block)
            self._next += len(block)
        else:
            rows = np.asarray(rows, dtype=np.int64)
            if len(rows) != len(block):
                raise ValueError(f"{len(block)} rows but {len(rows)} row numbers")
            order = np.argsort(rows, kind="stable")
            rows, block = rows[order], block[order]
            # Runs of consecutive rows are written at once; a shuffled file costs one write per row.
            breaks = np.flatnonzero(np.diff(rows) != 1) + 1
            for run_rows, run in zip(np.split(rows, breaks), np.split(block, breaks), strict=True):
                self._seek_write(int(run_rows[0]), run)
        self._written[rows] = True

    def _seek_write(self, row: int, block: np.ndarray) -> None:
        self._handle.seek(self._offset + row * self.dim * 4)
        self._handle.write(block.tobytes())

    def missing(self) -> np.ndarray:
        """Rows nothing was written to, ascending."""
        return np.flatnonzero(~self._written)

    def close(self) -> None:
        """Flush and fsync the file (it is then complete and readable)."""
        if self._handle.closed:
            return
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()

    def abort(self) -> None:
        self._handle.close()
        self.path.unlink(missing_ok=True)


class NonFiniteRowError(ValueError):
    """A block holds NaN or inf; ``row`` is the block's first bad row."""

    def __init__(self, row: int):
        super().__init__(f"row {row} has a NaN or infinite value")
        self.row = row


def _npy_header(count: int, dim: int) -> bytes:
    """The ``.npy`` (version 1.0) header of a C-ordered little-endian float32 (count, dim) array."""
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({count}, {dim}), }}"
    padded = text + " " * (_HEADER_BYTES - 10 - 1 - len(text)) + "\n"
    header = b"\x93NUMPY\x01\x00" + (len(padded)).to_bytes(2, "little") + padded.encode("latin1")
    assert len(header) == _HEADER_BYTES
    return header
