"""Embeddings made elsewhere, in and out: .npy, .parquet and .csv, validated strictly.

Nothing here unpickles: ``np.load(allow_pickle=False)`` only. A file is refused as a whole with a
message naming the offending row or id; a partial embedding set would silently skew every analysis.

Example:
    >>> add_embeddings(ws.open("pets"), "clip.parquet", name="clip")        # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from shoal.ingest.images import ID_COLUMNS, read_table
from shoal.ingest.publish import (
    ImportReport,
    ProgressCallback,
    check_id_lengths,
    check_new_dataset,
    error_text,
    publish,
    staging,
)
from shoal.store import Dataset, EmbeddingInfo, StoreError, Workspace, validate_name
from shoal.store.vectors import read_npy_header

USER_MODEL = "user-provided"
#: The id columns an embeddings file may have: ``object_id`` (a box's embedding) first.
EMBEDDING_ID_COLUMNS = ("object_id", *ID_COLUMNS)
PathLike = str | os.PathLike[str]
NPY_MAGIC = b"\x93NUMPY"
SAVE_NPY = "save a (n_samples, dim) float array with np.save(file, array)"
#: Rows per block when an embeddings file is read and written (16k x 1280 float32 = 84 MB).
READ_BLOCK_ROWS = 16384


class EmbeddingFileError(StoreError):
    """An embeddings file is malformed; the message says where and what to do."""


@dataclass
class EmbeddingsFile:
    """An embeddings file, opened from its own metadata (npy header, Parquet footer, CSV header)
    and read back in blocks of ``block_rows`` rows: peak memory is one block, whatever its size.

    ``ids``: one per row (from the file's id column, or ``ids_file``), or None for an .npy
    without ``ids_file``. ``rows`` and ``dim`` are known before any vector is read.
    """

    path: Path
    kind: str  # "npy", "parquet" or "csv"
    rows: int
    dim: int
    ids: np.ndarray | None
    vector_column: str | None = None  # a Parquet list column; None: one column per dimension
    id_column: str | None = None  # "object_id" for boxes' embeddings
    value_columns: list[str] = field(default_factory=list)  # csv/parquet numeric columns
    npy_offset: int = 0
    npy_dtype: np.dtype[Any] | None = None
    block_rows: int = READ_BLOCK_ROWS

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def holds_boxes(self) -> bool:
        """Keyed by ``object_id``: one embedding per box of a detection dataset."""
        return (self.id_column or "").lower() == "object_id"

    @property
    def nbytes(self) -> int:
        """Bytes of the float32 matrix it makes."""
        return self.rows * self.dim * 4

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, vectors)``: float32 blocks in file order, each checked finite."""
        if self.kind == "npy":
            read = self._npy_blocks()
        elif self.kind == "parquet":
            read = self._parquet_blocks()
        else:
            read = self._csv_blocks()
        for first_row, block in read:
            _check_finite(block, self.ids, self.name, first_row=first_row)
            yield first_row, block

    def read_all(self) -> np.ndarray:
        """The whole matrix in memory (small files, tests)."""
        matrix = np.empty((self.rows, self.dim), dtype=np.float32)
        for first_row, block in self.blocks():
            matrix[first_row : first_row + len(block)] = block
        return matrix

    def _npy_blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        # Plain reads, not a memory map: mapped pages would count against this process.
        assert self.npy_dtype is not None
        row_bytes = self.dim * self.npy_dtype.itemsize
        with open(self.path, "rb") as handle:
            handle.seek(self.npy_offset)
            for first_row in range(0, self.rows, self.block_rows):
                n = min(self.block_rows, self.rows - first_row)
                raw = handle.read(n * row_bytes)
                if len(raw) < n * row_bytes:
                    raise EmbeddingFileError(
                        f"{self.name} is truncated: it ends inside row {first_row + len(raw) // row_bytes}; "
                        f"{SAVE_NPY}"
                    )
                block = np.frombuffer(raw, dtype=self.npy_dtype).reshape(n, self.dim)
                yield first_row, block.astype(np.float32)

    def _parquet_blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        columns = [self.vector_column] if self.vector_column else self.value_columns
        first_row = 0
        for batch in _parquet_file(self.path).iter_batches(
            batch_size=self.block_rows, columns=columns, use_threads=False
        ):
            if self.vector_column is None:
                block = _numeric_columns(batch.to_pandas(), self.name, first_row=first_row)
            else:
                block = self._list_block(batch.column(0), first_row)
            yield first_row, block
            first_row += len(block)

    def _list_block(self, values: Any, first_row: int) -> np.ndarray:
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if values.null_count:
            row = first_row + int(np.flatnonzero(np.asarray(values.is_null()))[0])
            raise EmbeddingFileError(
                f"{self.name}: row {row} (id {self._id(row)!r}) has no embedding; give every row "
                "a vector, or drop the row"
            )
        lengths = np.asarray(pa.compute.list_value_length(values))
        wrong = np.flatnonzero(lengths != self.dim)
        if len(wrong):
            row = first_row + int(wrong[0])
            raise EmbeddingFileError(
                f"{self.name}: row {row} (id {self._id(row)!r}) has dimension "
                f"{int(lengths[wrong[0]])}, expected {self.dim}; every row needs the same number "
                "of values"
            )
        flat = values.flatten().to_numpy(zero_copy_only=False)
        return np.asarray(flat, dtype=np.float32).reshape(len(values), self.dim)

    def _csv_blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        first_row = 0
        for chunk in _csv_chunks(self.path, self.block_rows, usecols=self.value_columns):
            # ``first_row + 2``: a CSV counts its header as line 1.
            yield first_row, _numeric_columns(chunk, self.name, first_row=first_row)
            first_row += len(chunk)

    def _id(self, row: int) -> str:
        return "" if self.ids is None else str(self.ids[row])


def open_embeddings_file(
    path: PathLike, *, ids_file: PathLike | None = None, block_rows: int | None = None
) -> EmbeddingsFile:
    """Open an .npy, .parquet or .csv embeddings file and check its layout from its metadata.

    An .npy file carries no ids: rows are in manifest order unless ``ids_file`` (one id per line,
    or a one-column CSV/.npy) names them. Vectors are checked block by block as they are read.
    """
    path = Path(path)
    if not path.is_file():
        raise EmbeddingFileError(f"{path} does not exist; check the path")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        opened = _open_npy(path)
    elif suffix in (".parquet", ".pq"):
        opened = _open_parquet(path)
    elif suffix == ".csv":
        opened = _open_csv(path)
    else:
        raise EmbeddingFileError(
            f"{path.name}: unsupported embeddings format; use .npy, .parquet or .csv"
        )
    opened.block_rows = block_rows or READ_BLOCK_ROWS
    if ids_file is not None:
        ids = read_ids_file(Path(ids_file))
        if len(ids) != opened.rows:
            raise EmbeddingFileError(
                f"{Path(ids_file).name} has {len(ids)} ids but {path.name} has {opened.rows} "
                f"rows; give one id per row of {path.name}, in the same order"
            )
        opened.ids = ids
    return opened


def read_embeddings_file(
    path: PathLike, *, ids_file: PathLike | None = None
) -> tuple[np.ndarray | None, np.ndarray]:
    """``(ids or None, vectors (n, dim) float32)`` of a whole file, in memory (small files;
    importers stream with :func:`open_embeddings_file`)."""
    opened = open_embeddings_file(path, ids_file=ids_file)
    vectors = opened.read_all()
    return opened.ids, vectors


def check_room(opened: EmbeddingsFile, folder: Path) -> None:
    """Refuse, before writing anything, a matrix the disk under ``folder`` cannot hold."""
    needed = opened.nbytes + opened.rows * 64  # the vectors, and room for the ids
    folder = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise EmbeddingFileError(
            f"{opened.name}: {opened.rows:,} rows x {opened.dim} values need {needed / 1e9:.1f} GB "
            f"as float32, but only {free / 1e9:.1f} GB is free under {folder}; free some space or "
            "put the workspace on a larger disk (--workspace)"
        )


def read_ids_file(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        _check_npy_magic(path)
        try:
            ids = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise EmbeddingFileError(
                f"{path.name}: ids must be a plain string or integer array "
                f"({error_text(error, path)}); save them with np.save, or as one id per line"
            ) from error
        return ids.astype(str).ravel()
    if path.suffix.lower() in (".csv", ".parquet"):
        table = read_table(path)
        return table.iloc[:, 0].astype(str).to_numpy()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise EmbeddingFileError(
            f"{path.name} is not UTF-8 text (byte {error.object[error.start]:#04x} at position "
            f"{error.start:,}); save it as UTF-8, one id per line"
        ) from error
    lines = pd.Series([line.strip() for line in text.splitlines() if line.strip()])
    check_id_lengths(lines, path.name, "id")
    return lines.to_numpy(dtype=object)


def _open_npy(path: Path) -> EmbeddingsFile:
    _check_npy_magic(path)
    try:
        with open(path, "rb") as handle:
            shape, fortran, dtype, offset = read_npy_header(handle)
    except ValueError as error:
        raise EmbeddingFileError(
            f"{path.name} is truncated or damaged ({error_text(error, path)}); {SAVE_NPY}"
        ) from error
    if dtype.hasobject:
        raise EmbeddingFileError(
            f"{path.name}: holds Python objects, which cannot be loaded without unpickling "
            f"(never done here); {SAVE_NPY}"
        )
    _check_matrix(dtype, shape, path.name)
    if fortran:
        raise EmbeddingFileError(
            f"{path.name} is stored in Fortran (column-major) order; save "
            "np.ascontiguousarray(array) instead"
        )
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    size = path.stat().st_size
    if size < expected:
        raise EmbeddingFileError(
            f"{path.name} is truncated or damaged ({size:,} bytes, its header promises "
            f"{expected:,}); {SAVE_NPY}"
        )
    return EmbeddingsFile(
        path, "npy", int(shape[0]), int(shape[1]), None, npy_offset=offset, npy_dtype=dtype
    )


def _check_npy_magic(path: Path) -> None:
    """Refuse an empty file or one that is not .npy, before numpy guesses at it (an .npz, a
    pickle)."""
    with open(path, "rb") as handle:
        magic = handle.read(len(NPY_MAGIC))
    if not magic:
        raise EmbeddingFileError(f"{path.name} is empty (0 bytes); {SAVE_NPY}")
    if magic != NPY_MAGIC:
        raise EmbeddingFileError(f"{path.name} is not an .npy file; {SAVE_NPY}")


def _check_matrix(dtype: np.dtype[Any], shape: tuple[int, ...], file_name: str) -> None:
    if dtype.kind not in "fiu":
        raise EmbeddingFileError(
            f"{file_name}: embeddings must be numbers, got dtype {dtype}; store them as "
            "float32 (or float64)"
        )
    if len(shape) != 2:
        raise EmbeddingFileError(
            f"{file_name}: expected a 2-D matrix of shape (n_samples, dim), got shape "
            f"{shape}; reshape it so that each row is one sample's embedding"
        )
    if shape[0] == 0 or shape[1] == 0:
        raise EmbeddingFileError(
            f"{file_name}: empty embeddings matrix {shape}; give one row per sample and "
            "at least one numeric column"
        )


def _parquet_file(path: Path) -> pq.ParquetFile:
    try:
        # Pages are decoded as they are read, not a whole row group (a file written in one go
        # by pandas is one row group of up to a million rows).
        return pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
    except Exception as error:  # noqa: BLE001
        raise EmbeddingFileError(
            f"cannot read {path.name} as Parquet ({error_text(error, path)}); save it again with "
            "pandas' DataFrame.to_parquet or pyarrow"
        ) from error


def _open_parquet(path: Path) -> EmbeddingsFile:
    parquet = _parquet_file(path)
    schema = parquet.schema_arrow
    id_column = _id_column(schema.names, path.name, EMBEDDING_ID_COLUMNS)
    try:
        id_values = pd.Series(
            parquet.read(columns=[id_column], use_threads=False).column(0).to_pylist(),
            dtype=object,
        )
    except Exception as error:  # noqa: BLE001
        raise EmbeddingFileError(
            f"cannot read {path.name} as Parquet ({error_text(error, path)}); save it again with "
            "pandas' DataFrame.to_parquet or pyarrow"
        ) from error
    check_id_lengths(id_values, path.name, id_column)  # before a fixed-width copy is made
    ids = id_values.astype(str).to_numpy(dtype=object)
    rows = len(ids)
    list_columns = [f.name for f in schema if _is_list(f.type)]
    if not list_columns:
        value_columns = [name for name in schema.names if name not in _not_values(id_column)]
        if rows == 0 or not value_columns:
            raise EmbeddingFileError(
                f"{path.name}: empty embeddings matrix ({rows}, {len(value_columns)}); give one "
                "row per sample and at least one numeric column"
            )
        return EmbeddingsFile(
            path,
            "parquet",
            rows,
            len(value_columns),
            ids,
            value_columns=value_columns,
            id_column=id_column,
        )
    column = "embedding" if "embedding" in list_columns else list_columns[0]
    kind = schema.field(column).type
    if not (pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
        raise EmbeddingFileError(
            f"{path.name}: column {column!r} holds {kind.value_type}, not numbers; store each "
            "embedding as a list of floats"
        )
    if rows == 0:
        raise EmbeddingFileError(
            f"{path.name}: empty embeddings matrix (0 rows); give one row per sample"
        )
    if pa.types.is_fixed_size_list(kind):
        dim = int(kind.list_size)
    else:  # the first row with a vector says how long every row must be
        dim = 0
        for batch in parquet.iter_batches(batch_size=1024, columns=[column], use_threads=False):
            lengths = pa.compute.list_value_length(batch.column(0)).drop_null()
            if len(lengths):
                dim = int(lengths[0].as_py())
                break
    if dim == 0:
        raise EmbeddingFileError(
            f"{path.name}: column {column!r} holds no values; store each embedding as a list of "
            "floats"
        )
    return EmbeddingsFile(
        path, "parquet", rows, dim, ids, vector_column=column, id_column=id_column
    )


def _open_csv(path: Path) -> EmbeddingsFile:
    try:
        header = pd.read_csv(path, nrows=0)
    except pd.errors.EmptyDataError as error:
        raise EmbeddingFileError(
            f"{path.name} is empty; save it as a CSV with a header row (id column, then one "
            "column per dimension)"
        ) from error
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise EmbeddingFileError(
            f"cannot read {path.name} as CSV ({error_text(error, path)}); save it as UTF-8 CSV "
            "with a header row"
        ) from error
    columns = [str(c) for c in header.columns]
    id_column = _id_column(columns, path.name, EMBEDDING_ID_COLUMNS)
    parts = [
        chunk[id_column]
        for chunk in _csv_chunks(path, READ_BLOCK_ROWS * 4, usecols=[id_column], dtype=str)
    ]
    id_values = pd.concat(parts, ignore_index=True) if parts else pd.Series([], dtype=object)
    check_id_lengths(id_values, path.name, id_column, first_row=2)
    value_columns = [c for c in columns if c not in _not_values(id_column)]
    if len(id_values) == 0 or not value_columns:
        raise EmbeddingFileError(
            f"{path.name}: empty embeddings matrix ({len(id_values)}, {len(value_columns)}); "
            "give one row per sample and at least one numeric column"
        )
    return EmbeddingsFile(
        path,
        "csv",
        len(id_values),
        len(value_columns),
        id_values.astype(str).to_numpy(dtype=object),
        value_columns=value_columns,
        id_column=id_column,
    )


def _csv_chunks(path: Path, rows: int, **options: Any) -> Iterator[pd.DataFrame]:
    try:
        yield from pd.read_csv(path, chunksize=rows, **options)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise EmbeddingFileError(
            f"cannot read {path.name} as CSV ({error_text(error, path)}); save it as UTF-8 CSV "
            "with a header row"
        ) from error


def _numeric_columns(frame: pd.DataFrame, file_name: str, *, first_row: int = 0) -> np.ndarray:
    bad = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        column = bad[0]
        converted = pd.to_numeric(frame[column], errors="coerce")
        row = (
            int(np.flatnonzero(converted.isna() & frame[column].notna())[0])
            if converted.isna().any()
            else 0
        )
        raise EmbeddingFileError(
            f"{file_name}: column {column!r} is not numeric (row {first_row + row + 1}: "
            f"{frame[column].iloc[row]!r}); an embeddings table holds an id column and numeric "
            "columns only"
        )
    return frame.to_numpy(dtype=np.float32)


def _id_column(columns: list[str], file_name: str, candidates: tuple[str, ...] = ID_COLUMNS) -> str:
    lowered = {str(c).lower(): c for c in columns}
    for candidate in candidates:
        if candidate in lowered:
            return str(lowered[candidate])
    raise EmbeddingFileError(
        f"{file_name}: no id column; name one of {', '.join(candidates)} (columns found: {', '.join(map(str, columns[:8]))})"
    )


def _not_values(id_column: str) -> set[str]:
    """Columns of a one-column-per-dimension file that are not dimensions: its id column, and
    for boxes (``object_id``) also the image's ``sample_id`` they usually carry."""
    return {id_column, "sample_id"} if id_column.lower() == "object_id" else {id_column}


def _check_finite(
    vectors: np.ndarray, ids: np.ndarray | None, file_name: str, *, first_row: int = 0
) -> None:
    finite = np.isfinite(vectors)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        column = int(np.flatnonzero(~finite[row])[0])
        where = f"row {first_row + row}" + (
            f" (id {str(ids[first_row + row])!r})" if ids is not None else ""
        )
        raise EmbeddingFileError(
            f"{file_name}: {where} has a non-finite value ({vectors[row, column]}) in column {column}; "
            "every embedding value must be a finite number"
        )


def target_rows(
    ids: np.ndarray | None,
    n_rows: int,
    known_ids: np.ndarray,
    file_name: str,
    *,
    known_as: str = "the dataset's sample_id column",
    unit: str = "sample",
) -> np.ndarray | None:
    """For each row of a file, the row of ``known_ids`` it belongs to (``known_as`` says where
    they come from, for the message); None when the file is already in that order. Refuses
    duplicates, unknown and missing ids."""
    if ids is None:
        if n_rows != len(known_ids):
            raise EmbeddingFileError(
                f"{file_name}: {n_rows} rows but the dataset has {len(known_ids)} samples; rows of an .npy "
                "file must follow the samples table order, or pass --ids FILE"
            )
        return None
    series = pd.Series(ids)
    duplicated = series[series.duplicated()]
    if len(duplicated):
        raise EmbeddingFileError(
            f"{file_name}: duplicate id {str(duplicated.iloc[0])!r} (row {duplicated.index[0]}); "
            "give each sample's embedding once"
        )
    known = pd.Index(known_ids)
    rows = known.get_indexer(ids)
    unknown = rows < 0
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise EmbeddingFileError(
            f"{file_name}: unknown id {str(ids[row])!r} at row {row} ({int(unknown.sum())} unknown ids); "
            f"ids must match {known_as}"
        )
    if len(rows) < len(known_ids):
        missing = np.ones(len(known_ids), dtype=bool)
        missing[rows] = False
        example = known_ids[np.flatnonzero(missing)[0]]
        raise EmbeddingFileError(
            f"{file_name}: no embedding for {len(known_ids) - len(rows)} {unit}(s), e.g. "
            f"{str(example)!r}; give one row per {unit}"
        )
    if np.array_equal(rows, np.arange(len(rows))):
        return None
    return rows.astype(np.int64)


def align_to_ids(
    ids: np.ndarray | None,
    vectors: np.ndarray,
    known_ids: np.ndarray,
    file_name: str,
    *,
    expected_dim: int | None = None,
    known_as: str = "the dataset's sample_id column",
) -> np.ndarray:
    """Return in-memory vectors reordered to ``known_ids`` (see :func:`target_rows`)."""
    _check_dim(vectors.shape[1], expected_dim, file_name)
    rows = target_rows(ids, len(vectors), known_ids, file_name, known_as=known_as)
    if rows is None:
        return vectors
    aligned = np.empty_like(vectors)
    aligned[rows] = vectors
    return aligned


def _check_dim(dim: int, expected_dim: int | None, file_name: str) -> None:
    if expected_dim is not None and dim != expected_dim:
        raise EmbeddingFileError(
            f"{file_name}: dimension {dim} does not match this embedding set's "
            f"{expected_dim}; store it under another embedding name, or give {expected_dim}-d "
            "vectors"
        )


def write_aligned(
    dataset: Dataset,
    name: str,
    opened: EmbeddingsFile,
    rows: np.ndarray | None,
    known_ids: np.ndarray,
    *,
    model: str = USER_MODEL,
    make_default: bool = False,
    level: str = "sample",
    progress: ProgressCallback | None = None,
) -> EmbeddingInfo:
    """Stream ``opened`` into a new version of ``dataset``'s set ``name``, row ``i`` of the file
    going to row ``rows[i]`` (None: in order); the set's ids are ``known_ids``."""
    check_room(opened, dataset.root)
    with dataset.writing_embeddings(
        name,
        count=opened.rows,
        dim=opened.dim,
        model=model,
        preprocessing={"source_file": opened.name},
        level=level,
        make_default=make_default,
    ) as draft:
        draft.ids = known_ids
        for first_row, block in opened.blocks():
            target = None if rows is None else rows[first_row : first_row + len(block)]
            draft.write(block, rows=target, first_row=first_row)
            if progress is not None:
                progress(first_row + len(block), opened.rows)
    assert draft.info is not None
    return draft.info


def add_embeddings(
    dataset: Dataset,
    file: PathLike,
    *,
    name: str = "user",
    ids_file: PathLike | None = None,
    model: str = USER_MODEL,
    progress: ProgressCallback | None = None,
) -> EmbeddingInfo:
    """Validate an embeddings file against the dataset's samples and store it as ``name``
    (the dataset's default set when it has none yet), streamed block by block.

    A file keyed by ``object_id`` holds box embeddings (a detector's, one per box): it must
    give one row per box of the dataset's objects table and becomes an object-level set."""
    validate_name(name, what="embedding")
    opened = open_embeddings_file(file, ids_file=ids_file)
    level, unit, known_as = "sample", "sample", "the dataset's sample_id column"
    if opened.holds_boxes:
        objects = dataset.objects()
        if objects is None:
            raise EmbeddingFileError(
                f"{opened.name} is keyed by object_id (box embeddings), but dataset "
                f"{dataset.name!r} has no boxes; import the boxes first (shoal import-coco or "
                "import-voc), or name the id column sample_id for one embedding per image"
            )
        level, unit, known_as = "object", "box", "the dataset's object_id column (its boxes)"
        known = objects["object_id"].astype(str).to_numpy()
    else:
        known = dataset.samples()["sample_id"].astype(str).to_numpy()
    if name in dataset.embedding_names():
        existing = dataset.embedding_info(name)
        if existing.level != level:
            raise EmbeddingFileError(
                f"{opened.name} holds {level}-level embeddings but set {name!r} is "
                f"{existing.level}-level; store it under another name (--embedding)"
            )
        _check_dim(opened.dim, existing.dim, opened.name)
    rows = target_rows(opened.ids, opened.rows, known, opened.name, known_as=known_as, unit=unit)
    return write_aligned(
        dataset,
        name,
        opened,
        rows,
        known,
        model=model,
        make_default=True,
        level=level,
        progress=progress,
    )


def embeddings_table_columns(path: PathLike) -> tuple[str, list[str]] | None:
    """For a Parquet file of embeddings (an id column and a list-of-numbers vector column, no
    image path column): its vector column and the other columns (metadata to keep). None for
    any other file. Reads the schema only."""
    from shoal.ingest.images import PATH_COLUMNS

    path = Path(path)
    if path.suffix.lower() != ".parquet":
        return None
    try:
        schema = pq.read_schema(path)
    except Exception:  # noqa: BLE001 - not readable as Parquet: the importers will say why
        return None
    vectors = [f.name for f in schema if _is_list(f.type)]
    lowered = {name.lower() for name in schema.names}
    if not vectors or lowered & set(PATH_COLUMNS):
        return None
    vector = "embedding" if "embedding" in vectors else vectors[0]
    return vector, [
        name for name in schema.names if name != vector and not _is_list(schema.field(name).type)
    ]


def _is_list(kind: pa.DataType) -> bool:
    return (
        pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) or pa.types.is_large_list(kind)
    )


def create_from_embeddings(
    workspace: Workspace,
    dataset: str,
    embeddings_file: PathLike,
    *,
    metadata_file: PathLike | None = None,
    ids_file: PathLike | None = None,
    name: str = "user",
    progress: ProgressCallback | None = None,
) -> ImportReport:
    """A dataset with no images: embeddings plus (optionally) a metadata table keyed by id.

    A Parquet embeddings file with other columns besides the id and the vector (label, split,
    anything) is its own metadata table when ``metadata_file`` is not given. The vectors are
    streamed to the store block by block: peak memory does not grow with the number of rows.
    """
    check_new_dataset(workspace, dataset)
    opened = open_embeddings_file(embeddings_file, ids_file=ids_file)
    if opened.holds_boxes:
        raise EmbeddingFileError(
            f"{opened.name} is keyed by object_id: box embeddings belong to the boxes of a "
            "detection dataset; import its images and boxes first (shoal import-coco), then "
            f"attach them with shoal add-embeddings DATASET {opened.name}"
        )
    ids = opened.ids
    layout = embeddings_table_columns(embeddings_file) if metadata_file is None else None
    metadata_columns = None
    if layout is not None and ids is not None and len(layout[1]) > 1:
        metadata_file, metadata_columns = embeddings_file, layout[1]  # its own metadata
    known_as = "the dataset's sample_id column"
    if metadata_file is not None:
        metadata_name = Path(metadata_file).name
        metadata = read_table(Path(metadata_file), columns=metadata_columns)
        id_column = _id_column(list(metadata.columns), metadata_name)
        first_row = 2 if Path(metadata_file).suffix.lower() == ".csv" else 1
        check_id_lengths(metadata[id_column], metadata_name, id_column, first_row=first_row)
        known_as = f"the {id_column} column of {metadata_name}"
        metadata = metadata.rename(columns={id_column: "sample_id"})
        metadata["sample_id"] = metadata["sample_id"].astype(str)
        if ids is None:
            if len(metadata) != opened.rows:
                raise EmbeddingFileError(
                    f"{opened.name} has {opened.rows} rows but {metadata_name} has "
                    f"{len(metadata)}; rows must match one to one, or give ids"
                )
            ids = metadata["sample_id"].to_numpy()
        duplicated = metadata["sample_id"][metadata["sample_id"].duplicated()]
        if len(duplicated):
            raise EmbeddingFileError(
                f"{metadata_name}: duplicate id {str(duplicated.iloc[0])!r} (row "
                f"{int(duplicated.index[0]) + first_row}); give each sample one row, once"
            )
    else:
        if ids is None:
            ids = np.asarray([f"row-{i}" for i in range(opened.rows)])
        metadata = pd.DataFrame({"sample_id": ids})
    known = metadata["sample_id"].to_numpy().astype(str)
    rows = target_rows(ids, opened.rows, known, opened.name, known_as=known_as)
    samples = metadata
    samples["source"] = samples.get("source", samples["sample_id"])
    samples["path"] = None
    for column in ("split", "label"):
        if column not in samples:
            samples[column] = None
        else:
            samples[column] = samples[column].map(lambda v: None if pd.isna(v) else str(v))
    report = ImportReport(dataset=dataset, source=opened.name)
    check_room(opened, workspace.root)
    with staging(workspace, dataset) as staged:
        write_aligned(staged, name, opened, rows, known, progress=progress)
        publish(workspace, staged, samples, report, has_images=False)
    workspace.open(dataset).update_meta(default_embedding=name)
    return report


def export_embeddings(dataset: Dataset, out: PathLike, *, embedding: str | None = None) -> Path:
    """Write ``sample_id``, ``embedding`` (fixed-size list of float32) and the samples' metadata,
    one row group per block of rows (the vectors are never all in memory)."""
    embedded = dataset.load_embeddings(embedding)
    samples = dataset.samples().set_index("sample_id").reindex(embedded.ids).reset_index()
    metadata = pa.Table.from_pandas(samples.drop(columns=["sample_id"]), preserve_index=False)
    dim = embedded.info.dim
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    writer: pq.ParquetWriter | None = None
    try:
        for start in range(0, len(embedded.ids), READ_BLOCK_ROWS):
            stop = min(len(embedded.ids), start + READ_BLOCK_ROWS)
            flat = pa.array(
                np.asarray(embedded.vectors[start:stop], dtype=np.float32).ravel(),
                type=pa.float32(),
            )
            table = pa.table(
                {
                    "sample_id": pa.array(embedded.ids[start:stop].astype(str)),
                    "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
                }
            )
            part = metadata.slice(start, stop - start)
            for name in part.column_names:
                table = table.append_column(name, part.column(name))
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, out)
    return out
