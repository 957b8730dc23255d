"""Embeddings made elsewhere, in and out: .npy, .parquet and .csv, validated strictly.

Nothing here unpickles: ``np.load(allow_pickle=False)`` only. A file is refused as a whole with a
message naming the offending row or id; a partial embedding set would silently skew every analysis.

Example:
    >>> add_embeddings(ws.open("pets"), "clip.parquet", name="clip")        # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from shoal.ingest.images import ID_COLUMNS, read_table
from shoal.ingest.publish import (
    ImportReport,
    check_id_lengths,
    check_new_dataset,
    error_text,
    publish,
    staging,
)
from shoal.store import Dataset, EmbeddingInfo, StoreError, Workspace, validate_name

USER_MODEL = "user-provided"
PathLike = str | os.PathLike[str]
NPY_MAGIC = b"\x93NUMPY"
SAVE_NPY = "save a (n_samples, dim) float array with np.save(file, array)"


class EmbeddingFileError(StoreError):
    """An embeddings file is malformed; the message says where and what to do."""


def read_embeddings_file(
    path: PathLike, *, ids_file: PathLike | None = None
) -> tuple[np.ndarray | None, np.ndarray]:
    """Read ``(ids or None, vectors (n, dim) float32)`` from .npy, .parquet or .csv.

    An .npy file carries no ids: rows are in manifest order unless ``ids_file`` (one id per line,
    or a one-column CSV/.npy) names them.
    """
    path = Path(path)
    if not path.is_file():
        raise EmbeddingFileError(f"{path} does not exist; check the path")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        ids, vectors = None, _read_npy(path)
    elif suffix in (".parquet", ".pq"):
        ids, vectors = _read_parquet(path)
    elif suffix == ".csv":
        ids, vectors = _read_csv(path)
    else:
        raise EmbeddingFileError(
            f"{path.name}: unsupported embeddings format; use .npy, .parquet or .csv"
        )
    if ids_file is not None:
        ids = read_ids_file(Path(ids_file))
        if len(ids) != len(vectors):
            raise EmbeddingFileError(
                f"{Path(ids_file).name} has {len(ids)} ids but {path.name} has {len(vectors)} "
                f"rows; give one id per row of {path.name}, in the same order"
            )
    _check_finite(vectors, ids, path.name)
    return ids, vectors


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


def _read_npy(path: Path) -> np.ndarray:
    _check_npy_magic(path)
    try:
        vectors = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as error:
        if "pickle" in str(error) or "Python objects" in str(error):
            raise EmbeddingFileError(
                f"{path.name}: holds Python objects, which cannot be loaded without unpickling "
                f"(never done here); {SAVE_NPY}"
            ) from error
        raise EmbeddingFileError(
            f"{path.name} is truncated or damaged ({error_text(error, path)}); {SAVE_NPY}"
        ) from error
    except (OSError, EOFError) as error:
        raise EmbeddingFileError(
            f"{path.name} is truncated or damaged ({error_text(error, path)}); {SAVE_NPY}"
        ) from error
    return _as_matrix(vectors, path.name)


def _check_npy_magic(path: Path) -> None:
    """Refuse an empty file or one that is not .npy, before numpy guesses at it (an .npz, a
    pickle)."""
    with open(path, "rb") as handle:
        magic = handle.read(len(NPY_MAGIC))
    if not magic:
        raise EmbeddingFileError(f"{path.name} is empty (0 bytes); {SAVE_NPY}")
    if magic != NPY_MAGIC:
        raise EmbeddingFileError(f"{path.name} is not an .npy file; {SAVE_NPY}")


def _as_matrix(vectors: np.ndarray, file_name: str) -> np.ndarray:
    if vectors.dtype.kind not in "fiu":
        raise EmbeddingFileError(
            f"{file_name}: embeddings must be numbers, got dtype {vectors.dtype}; store them as "
            "float32 (or float64)"
        )
    if vectors.ndim != 2:
        raise EmbeddingFileError(
            f"{file_name}: expected a 2-D matrix of shape (n_samples, dim), got shape "
            f"{vectors.shape}; reshape it so that each row is one sample's embedding"
        )
    if vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise EmbeddingFileError(
            f"{file_name}: empty embeddings matrix {vectors.shape}; give one row per sample and "
            "at least one numeric column"
        )
    return np.asarray(vectors, dtype=np.float32)


def _read_parquet(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        table = pq.read_table(path)
    except Exception as error:  # noqa: BLE001
        raise EmbeddingFileError(
            f"cannot read {path.name} as Parquet ({error_text(error, path)}); save it again with "
            "pandas' DataFrame.to_parquet or pyarrow"
        ) from error
    id_column = _id_column(table.column_names, path.name)
    list_columns = [
        f.name
        for f in table.schema
        if pa.types.is_list(f.type)
        or pa.types.is_fixed_size_list(f.type)
        or pa.types.is_large_list(f.type)
    ]
    id_values = pd.Series(table.column(id_column).to_pylist(), dtype=object)
    check_id_lengths(id_values, path.name, id_column)  # before a fixed-width copy is made
    ids = id_values.astype(str).to_numpy(dtype=object)
    if list_columns:
        column = "embedding" if "embedding" in list_columns else list_columns[0]
        values = table.column(column).combine_chunks()
        value_type = values.type.value_type
        if not (pa.types.is_floating(value_type) or pa.types.is_integer(value_type)):
            raise EmbeddingFileError(
                f"{path.name}: column {column!r} holds {value_type}, not numbers; store each "
                "embedding as a list of floats"
            )
        lengths = np.asarray(
            values.value_lengths()
            if hasattr(values, "value_lengths")
            else pa.compute.list_value_length(values)
        )
        if values.null_count:
            row = int(np.flatnonzero(np.asarray(values.is_null()))[0])
            raise EmbeddingFileError(
                f"{path.name}: row {row} (id {str(ids[row])!r}) has no embedding; give every row "
                "a vector, or drop the row"
            )
        if len(set(lengths.tolist())) > 1:
            expected = int(np.bincount(lengths).argmax())
            row = int(np.flatnonzero(lengths != expected)[0])
            raise EmbeddingFileError(
                f"{path.name}: row {row} (id {str(ids[row])!r}) has dimension {lengths[row]}, "
                f"expected {expected}; every row needs the same number of values"
            )
        flat = np.asarray(values.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
        vectors = flat.reshape(len(ids), -1)
        return ids, _as_matrix(vectors.astype(np.float32), path.name)
    frame = table.to_pandas()
    return ids, _numeric_columns(frame.drop(columns=[id_column]), path.name)


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    frame = read_table(path)
    id_column = _id_column(list(frame.columns), path.name)
    check_id_lengths(frame[id_column], path.name, id_column, first_row=2)
    return frame[id_column].astype(str).to_numpy(), _numeric_columns(
        frame.drop(columns=[id_column]), path.name
    )


def _numeric_columns(frame: pd.DataFrame, file_name: str) -> np.ndarray:
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
            f"{file_name}: column {column!r} is not numeric (row {row + 1}: {frame[column].iloc[row]!r}); "
            "an embeddings table holds an id column and numeric columns only"
        )
    return _as_matrix(frame.to_numpy(dtype=np.float64).astype(np.float32), file_name)


def _id_column(columns: list[str], file_name: str) -> str:
    lowered = {str(c).lower(): c for c in columns}
    for candidate in ID_COLUMNS:
        if candidate in lowered:
            return str(lowered[candidate])
    raise EmbeddingFileError(
        f"{file_name}: no id column; name one of {', '.join(ID_COLUMNS)} (columns found: {', '.join(map(str, columns[:8]))})"
    )


def _check_finite(vectors: np.ndarray, ids: np.ndarray | None, file_name: str) -> None:
    finite = np.isfinite(vectors)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        column = int(np.flatnonzero(~finite[row])[0])
        where = f"row {row}" + (f" (id {str(ids[row])!r})" if ids is not None else "")
        raise EmbeddingFileError(
            f"{file_name}: {where} has a non-finite value ({vectors[row, column]}) in column {column}; "
            "every embedding value must be a finite number"
        )


def align_to_ids(
    ids: np.ndarray | None,
    vectors: np.ndarray,
    known_ids: np.ndarray,
    file_name: str,
    *,
    expected_dim: int | None = None,
    known_as: str = "the dataset's sample_id column",
) -> np.ndarray:
    """Return vectors reordered to ``known_ids`` (``known_as`` says where they come from, for
    the message); refuse duplicates, unknown and missing ids."""
    if expected_dim is not None and vectors.shape[1] != expected_dim:
        raise EmbeddingFileError(
            f"{file_name}: dimension {vectors.shape[1]} does not match this embedding set's "
            f"{expected_dim}; store it under another embedding name, or give {expected_dim}-d "
            "vectors"
        )
    if ids is None:
        if len(vectors) != len(known_ids):
            raise EmbeddingFileError(
                f"{file_name}: {len(vectors)} rows but the dataset has {len(known_ids)} samples; rows of an .npy "
                "file must follow the samples table order, or pass --ids FILE"
            )
        return vectors
    series = pd.Series(ids)
    duplicated = series[series.duplicated()]
    if len(duplicated):
        raise EmbeddingFileError(
            f"{file_name}: duplicate id {str(duplicated.iloc[0])!r} (row {duplicated.index[0]}); "
            "give each sample's embedding once"
        )
    position = pd.Index(ids)
    unknown = ~pd.Index(ids).isin(known_ids)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise EmbeddingFileError(
            f"{file_name}: unknown id {str(ids[row])!r} at row {row} ({int(unknown.sum())} unknown ids); "
            f"ids must match {known_as}"
        )
    order = position.get_indexer(known_ids)
    if (order < 0).any():
        missing = known_ids[order < 0]
        raise EmbeddingFileError(
            f"{file_name}: no embedding for {len(missing)} sample(s), e.g. {str(missing[0])!r}; give one row per sample"
        )
    return vectors[order]


def add_embeddings(
    dataset: Dataset,
    file: PathLike,
    *,
    name: str = "user",
    ids_file: PathLike | None = None,
    model: str = USER_MODEL,
) -> EmbeddingInfo:
    """Validate an embeddings file against the dataset's samples and store it as ``name``
    (the dataset's default set when it has none yet)."""
    validate_name(name, what="embedding")
    ids, vectors = read_embeddings_file(file, ids_file=ids_file)
    known = dataset.samples()["sample_id"].astype(str).to_numpy()
    expected_dim = dataset.embedding_info(name).dim if name in dataset.embedding_names() else None
    aligned = align_to_ids(ids, vectors, known, Path(file).name, expected_dim=expected_dim)
    return dataset.publish_embeddings(
        name,
        aligned,
        known,
        model=model,
        preprocessing={"source_file": Path(file).name},
        make_default=True,
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
) -> ImportReport:
    """A dataset with no images: embeddings plus (optionally) a metadata table keyed by id.

    A Parquet embeddings file with other columns besides the id and the vector (label, split,
    anything) is its own metadata table when ``metadata_file`` is not given.
    """
    check_new_dataset(workspace, dataset)
    ids, vectors = read_embeddings_file(embeddings_file, ids_file=ids_file)
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
            if len(metadata) != len(vectors):
                raise EmbeddingFileError(
                    f"{Path(embeddings_file).name} has {len(vectors)} rows but {Path(metadata_file).name} has "
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
            ids = np.asarray([f"row-{i}" for i in range(len(vectors))])
        metadata = pd.DataFrame({"sample_id": ids})
    known = metadata["sample_id"].to_numpy().astype(str)
    aligned = align_to_ids(ids, vectors, known, Path(embeddings_file).name, known_as=known_as)
    samples = metadata.copy()
    samples["source"] = samples.get("source", samples["sample_id"])
    samples["path"] = None
    for column in ("split", "label"):
        if column not in samples:
            samples[column] = None
        else:
            samples[column] = samples[column].map(lambda v: None if pd.isna(v) else str(v))
    report = ImportReport(dataset=dataset, source=Path(embeddings_file).name)
    with staging(workspace, dataset) as staged:
        staged.publish_embeddings(
            name,
            aligned,
            known,
            model=USER_MODEL,
            preprocessing={"source_file": Path(embeddings_file).name},
        )
        publish(workspace, staged, samples, report, has_images=False)
    workspace.open(dataset).update_meta(default_embedding=name)
    return report


def export_embeddings(dataset: Dataset, out: PathLike, *, embedding: str | None = None) -> Path:
    """Write ``sample_id``, ``embedding`` (fixed-size list of float32) and the samples' metadata."""
    embedded = dataset.load_embeddings(embedding)
    samples = dataset.samples().set_index("sample_id").reindex(embedded.ids).reset_index()
    dim = embedded.info.dim
    flat = pa.array(np.asarray(embedded.vectors, dtype=np.float32).ravel(), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, dim)
    metadata = pa.Table.from_pandas(samples.drop(columns=["sample_id"]), preserve_index=False)
    table = pa.table({"sample_id": pa.array(embedded.ids.astype(str)), "embedding": column})
    for name in metadata.column_names:
        table = table.append_column(name, metadata.column(name))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out)
    return out
