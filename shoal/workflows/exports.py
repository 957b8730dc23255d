"""Send a collection (or any list of samples) on: to a table, to COCO, to a folder of images.

Every export is written into a temporary file or folder beside its target and renamed into
place when complete, so a failed export never leaves half a file where the user looks.

- :func:`export_table`: CSV (formula cells neutralised) or Parquet of the samples' rows, with
  their embeddings as a list column if asked.
- :func:`export_coco`: a COCO detection JSON of the images, with their labelled boxes (and, as a
  separate results file, the model's predicted boxes) at object level data; image-level
  datasets get the images and their label as a category of the whole image.
- :func:`export_images`: a zip of the image files (named ``<sample_id><suffix>``) plus a
  ``files.csv`` that maps each back to its sample, split and label.
- :func:`export_label_studio`: Label Studio tasks JSON with the labels (and the model's boxes)
  as pre-annotations, plus the labelling config (:func:`label_config`) the project needs.

Example:
    >>> from shoal.store import Workspace                                  # doctest: +SKIP
    >>> ds = Workspace().open("street")                                    # doctest: +SKIP
    >>> export_coco(ds, ds.samples().sample_id[:10], "street-10.json")     # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd
from PIL import Image

from shoal.analysis.blocks import BLOCK_ROWS, take_rows
from shoal.ingest.export import write_csv
from shoal.ingest.label_studio import (
    FROM_NAME,
    LABELS_VERSION,
    LOCAL_FILES_URL,
    PREDICTIONS_VERSION,
    TO_NAME,
)
from shoal.store import Dataset, StoreError
from shoal.store.files import atomic_path


def rows_for(ds: Dataset, sample_ids: Iterable[str]) -> pd.DataFrame:
    """The samples table's rows for ``sample_ids``, in that order; unknown ids are refused."""
    samples = ds.samples()
    wanted = [str(i) for i in sample_ids]
    indexed = samples.set_index(samples["sample_id"].astype(str), drop=False)
    missing = [i for i in wanted if i not in indexed.index]
    if missing:
        raise StoreError(
            f"{len(missing):,} id(s) are not samples of {ds.name!r}, e.g. {missing[0]!r}"
        )
    return indexed.loc[wanted].reset_index(drop=True)


def export_table(
    ds: Dataset,
    sample_ids: Iterable[str],
    out: str | os.PathLike[str],
    *,
    embedding: str | None = None,
    with_embeddings: bool = False,
) -> Path:
    """``.csv`` or ``.parquet`` of the rows (Parquet may carry the vectors as a list column)."""
    out = Path(out)
    rows = rows_for(ds, sample_ids)
    if with_embeddings:
        if out.suffix.lower() != ".parquet":
            raise StoreError(
                "embeddings go into a .parquet export (a CSV cell cannot hold a vector)"
            )
        stored = ds.load_embeddings(embedding)
        position = pd.Index(stored.ids.astype(str)).get_indexer(rows["sample_id"].astype(str))
        if (position < 0).any():
            raise StoreError(f"some samples have no vector in embedding set {stored.info.name!r}")
        with atomic_path(out) as tmp:
            _write_parquet_with_vectors(rows, stored.vectors, position, tmp)
        return out
    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".parquet":
            rows.to_parquet(tmp, index=False)
        elif out.suffix.lower() == ".csv":
            write_csv(rows, tmp)
        else:
            raise StoreError(f"export to .csv or .parquet, not {out.name!r}")
    return out


def _write_parquet_with_vectors(
    rows: pd.DataFrame, vectors: Any, position: np.ndarray, path: Path
) -> None:
    """``rows`` plus their vectors as an ``embedding`` list<float32> column, written one row
    group of ``BLOCK_ROWS`` at a time: only one block of vectors is ever in memory (an export
    of every sample of a 1M x 1280 set would otherwise hold 4.9 GB, plus a Python array per
    row)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table_schema = pa.Schema.from_pandas(rows, preserve_index=False)
    schema = table_schema.append(pa.field("embedding", pa.list_(pa.float32())))
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, max(len(rows), 1), BLOCK_ROWS):
            block = take_rows(vectors, position[start : start + BLOCK_ROWS])
            offsets = np.arange(0, block.size + 1, max(block.shape[1], 1), dtype=np.int32)
            column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(block.ravel()))
            part = pa.Table.from_pandas(
                rows.iloc[start : start + BLOCK_ROWS], schema=table_schema, preserve_index=False
            )
            writer.write_table(part.append_column(schema.field("embedding"), column))


def export_coco(
    ds: Dataset, sample_ids: Iterable[str], out: str | os.PathLike[str]
) -> dict[str, Path]:
    """A COCO detection JSON of the samples' images (``file_name`` = the stored image, relative
    to the dataset folder) and labelled boxes; predicted boxes, if any, go to a COCO results
    file beside it (``<name>.predictions.json``). Returns the files written."""
    out = Path(out)
    rows = rows_for(ds, sample_ids)
    if not ds.has_images or rows["path"].isna().any():
        raise StoreError(f"dataset {ds.name!r} has samples without images: COCO needs images")
    objects = ds.objects()
    boxes = (
        objects[objects["sample_id"].astype(str).isin(set(rows["sample_id"].astype(str)))]
        if objects is not None
        else None
    )
    if boxes is not None:
        names = sorted(boxes["category"].dropna().astype(str).unique())
    else:
        names = sorted(rows["label"].dropna().astype(str).unique())
    category_id = {name: i + 1 for i, name in enumerate(names)}
    images, image_id = [], {}
    for number, row in enumerate(rows.itertuples(index=False), start=1):
        width, height = _size(ds, row)
        image_id[str(row.sample_id)] = number
        images.append(
            {
                "id": number,
                "file_name": str(row.path),
                "width": width,
                "height": height,
                "shoal_sample_id": str(row.sample_id),
            }
        )
    annotations: list[dict[str, Any]] = []
    predictions: list[dict[str, Any]] = []
    if boxes is not None:
        for box in boxes.itertuples(index=False):
            x0, y0, x1, y1 = (float(box.x0), float(box.y0), float(box.x1), float(box.y1))
            record = {
                "image_id": image_id[str(box.sample_id)],
                "category_id": category_id[str(box.category)],
                "bbox": [x0, y0, x1 - x0, y1 - y0],
            }
            if box.kind == "label":
                annotations.append(
                    record
                    | {
                        "id": len(annotations) + 1,
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                        "shoal_object_id": str(box.object_id),
                    }
                )
            else:
                predictions.append(record | {"score": float(box.score)})
    else:  # image-level labels: a box around the whole image, so COCO tools can read them
        for image, row in zip(images, rows.itertuples(index=False), strict=True):
            if isinstance(row.label, str):
                width, height = int(image["width"]), int(image["height"])  # type: ignore[call-overload]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image["id"],
                        "category_id": category_id[row.label],
                        "bbox": [0.0, 0.0, float(width), float(height)],
                        "area": float(width * height),
                        "iscrowd": 0,
                    }
                )
    document = {
        "info": {"description": f"exported from Shoal dataset {ds.name}"},
        "images": images,
        "categories": [{"id": i, "name": n} for n, i in category_id.items()],
        "annotations": annotations,
    }
    written = {"coco": out}
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(document))
    if predictions:
        results = out.with_name(out.stem + ".predictions.json")
        with atomic_path(results) as tmp:
            tmp.write_text(json.dumps(predictions))
        written["predictions"] = results
    return written


def export_images(ds: Dataset, sample_ids: Iterable[str], out: str | os.PathLike[str]) -> Path:
    """A ``.zip`` of the image files plus ``files.csv`` (file, sample_id, split, label)."""
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise StoreError(f"images are exported as a .zip, not {out.name!r}")
    rows = rows_for(ds, sample_ids)
    if rows["path"].isna().any():
        raise StoreError(f"dataset {ds.name!r} has samples without images to export")
    listing = []
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as bundle:
        for row in rows.itertuples(index=False):
            name = f"{_safe(str(row.sample_id))}{Path(str(row.path)).suffix}"
            bundle.write(ds.image_file(str(row.path)), f"images/{name}")
            listing.append(
                {
                    "file": f"images/{name}",
                    "sample_id": row.sample_id,
                    "split": row.split,
                    "label": row.label,
                }
            )
        table = pd.DataFrame(listing)
        bundle.writestr("files.csv", table.to_csv(index=False))
    return out


def label_config(ds: Dataset) -> str:
    """The Label Studio labelling config for the dataset's classes (every class of the dataset,
    so a labeller can pick any of them): ``RectangleLabels`` for a detection dataset, one
    ``Choices`` per image otherwise. Its tag names match the tasks of :func:`export_label_studio`.

    >>> print(label_config(Workspace().open("pets")))                      # doctest: +SKIP
    <View>
      <Image name="image" value="$image"/>
      <Choices name="label" toName="image" choice="single-radio" showInline="true">
    ...
    """
    objects = ds.objects()
    if objects is not None:
        names = sorted(objects["category"].dropna().astype(str).unique())
        tag, attributes, item = "RectangleLabels", "", "Label"
    else:
        names = sorted(ds.samples()["label"].dropna().astype(str).unique())
        tag, attributes, item = "Choices", ' choice="single-radio" showInline="true"', "Choice"
    lines = [
        "<View>",
        f'  <Image name="{TO_NAME}" value="${TO_NAME}"/>',
        f'  <{tag} name="{FROM_NAME}" toName="{TO_NAME}"{attributes}>',
        *(f"    <{item} value={quoteattr(name)}/>" for name in names),
        f"  </{tag}>",
        "</View>",
    ]
    return "\n".join(lines) + "\n"


def export_label_studio(
    ds: Dataset,
    sample_ids: Iterable[str],
    out: str | os.PathLike[str],
    *,
    document_root: str | os.PathLike[str] | None = None,
    url_prefix: str | None = None,
) -> dict[str, Path]:
    """Label Studio tasks JSON for the samples, plus the project's labelling config beside it
    (``<name>.config.xml``, see :func:`label_config`). Returns the files written.

    Each task's ``data`` holds ``image`` (the image reference), ``sample_id``, ``split`` and
    ``label``. What Shoal knows comes as pre-annotations (``predictions``), never as finished
    annotations, so every task still waits for a labeller to accept or fix it:
    the dataset's labels as one prediction (``model_version`` "shoal labels": the image's
    choice, or its labelled boxes) and, at object level, the model's predicted boxes with their
    scores as another ("shoal predictions"). Boxes are in percent of the image, as Label Studio
    wants them.

    Image references: by default a local-files URL (``/data/local-files/?d=<path>``) relative
    to ``document_root`` (default: the dataset's folder), which Label Studio serves when started
    with ``LOCAL_FILES_SERVING_ENABLED=true`` and ``LOCAL_FILES_DOCUMENT_ROOT`` = that folder,
    and whose project has a Local Files storage on a folder holding the images (no sync
    needed). ``url_prefix`` instead: the prefix plus each image's path inside the dataset
    folder, for images served over HTTP.

    >>> export_label_studio(ds, ds.samples().sample_id[:10], "tasks.json")  # doctest: +SKIP
    {'tasks': PosixPath('tasks.json'), 'config': PosixPath('tasks.config.xml')}
    """
    if document_root is not None and url_prefix is not None:
        raise StoreError("give a document root or a URL prefix for the images, not both")
    out = Path(out)
    rows = rows_for(ds, sample_ids)
    if not ds.has_images or rows["path"].isna().any():
        raise StoreError(
            f"dataset {ds.name!r} has samples without images: Label Studio tasks need images"
        )
    objects = ds.objects()
    boxes = (
        objects[objects["sample_id"].astype(str).isin(set(rows["sample_id"].astype(str)))]
        if objects is not None
        else None
    )
    by_sample = (
        dict(tuple(boxes.groupby(boxes["sample_id"].astype(str)))) if boxes is not None else {}
    )
    root = Path(document_root if document_root is not None else ds.root).resolve()
    tasks = []
    for row in rows.itertuples(index=False):
        sample_id = str(row.sample_id)
        if url_prefix is not None:
            reference = f"{url_prefix.rstrip('/')}/{quote(str(row.path))}"
        else:
            reference = LOCAL_FILES_URL + quote(_under_root(ds, row, root))
        task: dict[str, Any] = {
            "data": {
                "image": reference,
                "sample_id": sample_id,
                "split": _text(row.split),
                "label": _text(row.label),
            }
        }
        if boxes is not None:
            predictions = _box_predictions(by_sample.get(sample_id), *_size(ds, row))
        elif isinstance(row.label, str):
            choice = {
                "from_name": FROM_NAME,
                "to_name": TO_NAME,
                "type": "choices",
                "value": {"choices": [row.label]},
            }
            predictions = [{"model_version": LABELS_VERSION, "result": [choice]}]
        else:
            predictions = []
        if predictions:
            task["predictions"] = predictions
        tasks.append(task)
    config = out.with_name(out.stem + ".config.xml")
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(tasks, indent=1))
    with atomic_path(config) as tmp:
        tmp.write_text(label_config(ds))
    return {"tasks": out, "config": config}


def _under_root(ds: Dataset, row: Any, root: Path) -> str:
    """The image's path relative to the local-files document root (refused if outside it)."""
    file = ds.image_file(str(row.path)).resolve()
    if not file.is_relative_to(root):
        raise StoreError(
            f"the image of sample {row.sample_id!r} ({file}) is not under the document root "
            f"{root}: give the folder Label Studio serves (its LOCAL_FILES_DOCUMENT_ROOT) that "
            f"holds the dataset folder {ds.root}, or a URL prefix"
        )
    return file.relative_to(root).as_posix()


def _box_predictions(boxes: pd.DataFrame | None, width: int, height: int) -> list[dict[str, Any]]:
    """The sample's labelled boxes and predicted boxes as two Label Studio predictions."""
    if boxes is None or not len(boxes):
        return []
    predictions = []
    for kind, version in (("label", LABELS_VERSION), ("inference", PREDICTIONS_VERSION)):
        mine = boxes[boxes["kind"] == kind]
        if not len(mine):
            continue
        result = []
        for box in mine.itertuples(index=False):
            x0, y0, x1, y1 = (float(box.x0), float(box.y0), float(box.x1), float(box.y1))
            region = {
                "id": str(box.object_id),
                "from_name": FROM_NAME,
                "to_name": TO_NAME,
                "type": "rectanglelabels",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {
                    "x": 100 * x0 / width,
                    "y": 100 * y0 / height,
                    "width": 100 * (x1 - x0) / width,
                    "height": 100 * (y1 - y0) / height,
                    "rotation": 0,
                    "rectanglelabels": [str(box.category)],
                },
            }
            if kind == "inference":
                region["score"] = float(box.score)
            result.append(region)
        prediction: dict[str, Any] = {"model_version": version, "result": result}
        if kind == "inference":
            prediction["score"] = float(mine["score"].mean())
        predictions.append(prediction)
    return predictions


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, str) or not pd.isna(value) else None


def _size(ds: Dataset, row: Any) -> tuple[int, int]:
    width, height = getattr(row, "width", None), getattr(row, "height", None)
    if (
        isinstance(width, (int, float, np.integer, np.floating))
        and not pd.isna(width)
        and not pd.isna(height)
    ):
        return int(width), int(height)  # type: ignore[arg-type]
    with Image.open(ds.image_file(str(row.path))) as image:  # the header only
        return image.size


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:200] or "sample"
