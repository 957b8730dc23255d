"""Parquet files that hold the images themselves, as datasets are shared today.

Hugging Face ``datasets`` (and many exports like it) write one row per image with an image
column of ``{"bytes": …, "path": …}`` structs, or raw bytes, beside label and split columns.
Such a file is imported like a manifest whose images are inside it: read one row group at a
time (memory follows the row group, not the file), each image checked like any upload (format,
pixel cap, truncation) and stored content-addressed; the other columns become metadata.
``ClassLabel`` columns, stored as integers, get their names back from the schema's
``huggingface`` metadata.

Example:
    >>> from shoal.store import Workspace                                  # doctest: +SKIP
    >>> import_image_parquet(Workspace(), "train-00000-of-00001.parquet", dataset="beans")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from shoal.ingest.images import ID_COLUMNS, RESERVED_COLUMNS, check_image, check_table_cells
from shoal.ingest.publish import (
    DEFAULT_LIMITS,
    ImportLimits,
    ImportReport,
    IngestError,
    ProgressCallback,
    check_id_lengths,
    check_unique_ids,
    publish,
    stable_id,
    staging,
)
from shoal.store import Workspace

#: Image columns looked for first, by name; else the first column that holds image bytes.
IMAGE_COLUMNS = ("image", "img", "picture", "photo")
#: Stored suffix of each image format Pillow reports.
SUFFIXES = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
}
#: Rows read at a time (each row group is also read in batches of this many).
BATCH_ROWS = 256


def image_column(schema: pa.Schema) -> str | None:
    """The column holding image bytes (binary, or a struct with a binary ``bytes`` field)."""
    holding = [field.name for field in schema if _holds_images(field.type)]
    for name in IMAGE_COLUMNS:
        if name in holding:
            return name
    return holding[0] if holding else None


def is_image_parquet(path: Path) -> bool:
    """Whether ``path`` is a Parquet file with an image-bytes column (reads the schema only)."""
    if path.suffix.lower() not in (".parquet", ".pq"):
        return False
    try:
        return image_column(pq.read_schema(path)) is not None
    except Exception:  # noqa: BLE001 - not readable as Parquet: the manifest reader says why
        return False


def import_image_parquet(
    workspace: Workspace,
    path: Path,
    *,
    dataset: str,
    split: str | None = None,
    limits: ImportLimits = DEFAULT_LIMITS,
    progress: ProgressCallback | None = None,
) -> ImportReport:
    """A new dataset from a Parquet file of images plus metadata columns (module docstring)."""
    path = Path(path)
    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # noqa: BLE001
        raise IngestError(f"cannot read {path.name} as Parquet ({type(error).__name__})") from error
    schema = parquet.schema_arrow
    column = image_column(schema)
    if column is None:
        raise IngestError(f"{path.name} has no column of image bytes")
    n_rows = parquet.metadata.num_rows
    metadata_columns = [name for name in schema.names if name != column]
    check_table_cells(path.name, n_rows, max(len(metadata_columns), 1), limits)
    names = _class_names(schema)
    id_column = next((c for c in ID_COLUMNS if c in metadata_columns), None)
    if id_column is not None:
        ids = parquet.read(columns=[id_column]).column(id_column).to_pandas()
        check_id_lengths(ids, path.name, id_column)
        check_unique_ids(ids, path.name, id_column, first_row=1, hint="give each row its own id")
    report = ImportReport(dataset=dataset, source=path.name)
    rows: list[dict[str, Any]] = []
    row_number = 0
    scratch = workspace.scratch_dir(".staging", "parquet-")  # held: the sweep leaves it alone
    with staging(workspace, dataset) as staged, _removed(scratch) as tmp:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
            images = batch.column(column).to_pylist()
            others = batch.select(metadata_columns).to_pylist() if metadata_columns else []
            for position, value in enumerate(images):
                row_number += 1
                data, inner_path = _bytes_and_path(value)
                where = f"row {row_number}" + (f" ({inner_path})" if inner_path else "")
                if not data:
                    report.reject(
                        where, f"no image bytes in '{column}'; fill it in or drop the row"
                    )
                    continue
                file = Path(tmp) / f"row-{row_number}"
                file.write_bytes(data)
                reason = check_image(file, limits)
                if reason:
                    report.reject(where, reason)
                    file.unlink(missing_ok=True)
                    continue
                with Image.open(file) as image:
                    suffix = SUFFIXES.get(image.format or "", ".img")
                named = file.rename(file.with_suffix(suffix))
                metadata = dict(others[position]) if others else {}
                rows.append(
                    _sample(metadata, names, id_column, split, where, path.name, row_number)
                    | {"path": staged.store_image(named, suffix)}
                )
                named.unlink(missing_ok=True)
                if progress:
                    progress(row_number, n_rows)
        if not rows:
            raise IngestError(
                f"no images imported from {path.name}: every row was rejected; see the reasons"
                if report.rejected
                else f"{path.name} has no rows"
            )
        return publish(workspace, staged, pd.DataFrame(rows), report)


def _sample(
    metadata: dict[str, Any],
    names: dict[str, list[str]],
    id_column: str | None,
    split: str | None,
    where: str,
    file_name: str,
    row_number: int,
) -> dict[str, Any]:
    for name, classes in names.items():
        value = metadata.get(name)
        if isinstance(value, int) and 0 <= value < len(classes):
            metadata[name] = classes[value]
    sample_id = metadata.pop(id_column) if id_column else None
    for reserved in RESERVED_COLUMNS & set(metadata):
        metadata.pop(reserved)
    label = metadata.pop("label", None)
    file_split = metadata.pop("split", None) or split
    return {
        "sample_id": str(sample_id)
        if sample_id is not None
        else stable_id(f"{file_name}#{row_number}"),
        "source": f"{file_name} {where}",
        "split": None if file_split is None else str(file_split),
        "label": None if label is None else str(label),
        **{k: v for k, v in metadata.items() if not isinstance(v, (bytes, dict, list))},
    }


def _holds_images(kind: pa.DataType) -> bool:
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return True
    if pa.types.is_struct(kind):
        index = kind.get_field_index("bytes")
        return index >= 0 and _holds_images(kind.field(index).type)
    return False


def _bytes_and_path(value: Any) -> tuple[bytes | None, str | None]:
    if isinstance(value, dict):
        data, inner = value.get("bytes"), value.get("path")
        return (bytes(data) if data else None), (str(inner) if inner else None)
    return (bytes(value) if value else None), None


def _class_names(schema: pa.Schema) -> dict[str, list[str]]:
    """ClassLabel names from a ``datasets`` schema: {column: [name of 0, name of 1, ...]}."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return {}
    try:
        features = json.loads(raw).get("info", {}).get("features", {})
    except (ValueError, AttributeError):
        return {}
    return {
        name: [str(n) for n in feature["names"]]
        for name, feature in features.items()
        if isinstance(feature, dict)
        and feature.get("_type") == "ClassLabel"
        and isinstance(feature.get("names"), list)
    }


@contextlib.contextmanager
def _removed(folder: Path) -> Iterator[Path]:
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
