"""COCO detection files in: ``images``, ``categories`` and ``annotations`` with ``bbox``.

The boxes land in the dataset's objects table (see :mod:`shoal.ingest.detection`); a bad
category, image entry or annotation is skipped and listed in the report with its reason.
Predictions come as a COCO results file (:func:`add_predictions`, which the VOC importer uses
too).

Example:
    >>> report = import_coco(Workspace(), "instances.json", images="images/", dataset="street",
    ...                      predictions="detections.json")                    # doctest: +SKIP
    >>> report.matching                                                          # doctest: +SKIP
    {'tp': 10, 'fp': 5, 'fn': 21, 'iou_threshold': 0.5}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.analysis.boxes import IOU_THRESHOLD
from shoal.ingest.detection import (
    BadAnnotation,
    DetectionImportReport,
    ImageEntry,
    find_image_file,
    parse_number,
    publish_boxes,
    safe_relative,
)
from shoal.ingest.publish import (
    DEFAULT_LIMITS,
    ImportLimits,
    IngestError,
    ProgressCallback,
    check_new_dataset,
)
from shoal.store import Workspace


def import_coco(
    workspace: Workspace,
    annotations: str | os.PathLike[str],
    *,
    images: str | os.PathLike[str],
    dataset: str,
    predictions: str | os.PathLike[str] | None = None,
    split: str | None = None,
    iou_threshold: float = IOU_THRESHOLD,
    limits: ImportLimits = DEFAULT_LIMITS,
    progress: ProgressCallback | None = None,
) -> DetectionImportReport:
    """Import a COCO detection file (``images``, ``categories``, ``annotations`` with ``bbox``).

    ``images`` is the folder that ``file_name`` is relative to (a bare file name directly in it
    is found too). ``predictions`` is an optional COCO results file whose ``image_id`` and
    ``category_id`` refer to the annotation file (``category`` with a name works too). Crowd
    annotations are imported as ordinary labels. The samples table keeps the COCO id in
    ``image_id``.

    >>> import_coco(Workspace(), "instances_val.json", images="val2017/", dataset="coco-val")  # doctest: +SKIP
    """
    check_new_dataset(workspace, dataset)
    annotations_path = Path(annotations)
    payload = read_json(annotations_path, "annotations")
    name = annotations_path.name
    if not isinstance(payload, dict) or not isinstance(payload.get("images"), list):
        raise IngestError(
            f"{name} is not a COCO file: it needs an 'images' list (and 'annotations', 'categories')"
        )
    folder = Path(images)
    if not folder.is_dir():
        raise IngestError(
            f"images folder {folder} does not exist; give the folder that the images' file_name "
            "is relative to (--images)"
        )
    report = DetectionImportReport(dataset=dataset, source=name)
    categories = _categories(payload.get("categories") or [], name, report)
    entries = _image_entries(payload["images"], folder, name, split, report)
    _add_records(
        payload.get("annotations") or [],
        entries,
        report,
        kind="label",
        origin_of=_annotation_origin(name),
        category_of=_category_by_id(categories),
    )
    if predictions is not None:
        add_predictions(predictions, entries, report, category_of=_prediction_category(categories))
    return publish_boxes(
        workspace,
        list(entries.values()),
        report,
        has_predictions=predictions is not None,
        iou_threshold=iou_threshold,
        limits=limits,
        progress=progress,
        missing_hint="put it in the images folder, where its file_name points",
    )


def add_predictions(
    path: str | os.PathLike[str],
    images: dict[str, ImageEntry],
    report: DetectionImportReport,
    *,
    category_of: Callable[[dict[str, Any]], str],
) -> None:
    """Add the boxes of a COCO results file (``[{image_id, category_id, bbox, score}, ...]``).

    ``images`` finds an image by a record's ``image_id``; ``category_of`` reads its class name
    (raising :class:`BadAnnotation`). Bad records are skipped with their reason in the report.
    """
    payload = read_json(Path(path), "predictions")
    if isinstance(payload, dict) and isinstance(payload.get("annotations"), list):
        payload = payload["annotations"]
    if not isinstance(payload, list):
        raise IngestError(
            f"predictions file {Path(path).name} must hold a list of "
            "{image_id, category_id, bbox, score} records (COCO results format)"
        )
    file_name = Path(path).name
    _add_records(
        payload,
        images,
        report,
        kind="inference",
        origin_of=lambda number, _: f"{file_name} prediction {number}",
        category_of=category_of,
    )


def coco_box(bbox: Any) -> tuple[float, float, float, float]:
    """COCO [x, y, width, height] -> (x0, y0, x1, y1); raises on malformed or empty boxes."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise BadAnnotation(
            f"malformed bbox {bbox!r}: expected [x, y, width, height]", "fix or drop the box"
        )
    x, y, width, height = (parse_number(v) for v in bbox)
    if width <= 0 or height <= 0:
        raise BadAnnotation(
            f"box has zero or negative size (width {width:g}, height {height:g})",
            "give it a positive width and height, or drop it",
        )
    return x, y, x + width, y + height


_NOT_A_RECORD = {
    "label": "not an annotation record",
    "inference": "not a {image_id, category_id, bbox, score} record",
}


def _add_records(
    records: list[Any],
    images: dict[str, ImageEntry],
    report: DetectionImportReport,
    *,
    kind: str,
    origin_of: Callable[[int, Any], str],
    category_of: Callable[[dict[str, Any]], str],
) -> None:
    """Add COCO records ({image_id, category_id, bbox} and, for inferences, score) to ``images``.

    ``origin_of(number, record)`` names a record in the report and the objects table. The
    records are consumed: each parsed dict is dropped from ``records`` once its box is added,
    so a million annotations are not held twice (as JSON dicts and as boxes).
    """
    for number, record in enumerate(records):
        records[number] = None
        origin = origin_of(number, record)
        try:
            if not isinstance(record, dict):
                raise BadAnnotation(_NOT_A_RECORD[kind])
            image = images.get(str(record.get("image_id")))
            if image is None:
                raise BadAnnotation(
                    f"unknown image_id {record.get('image_id')!r}",
                    "add it to 'images', or fix the record's image_id",
                )
            category = category_of(record)
            box = coco_box(record.get("bbox"))
            score = math.nan
            if kind == "inference":
                if record.get("score") is None:
                    raise BadAnnotation("missing score", "add a 'score' (the confidence)")
                score = parse_number(record["score"])
        except BadAnnotation as error:
            report.reject(origin, error.skipped())
            continue
        image.add_box(origin, category, box, kind, score)


def _categories(records: list[Any], name: str, report: DetectionImportReport) -> dict[str, str]:
    """COCO category id (as a string) -> class name."""
    categories: dict[str, str] = {}
    for number, category in enumerate(records):
        if (
            not isinstance(category, dict)
            or "id" not in category
            or not str(category.get("name", "")).strip()
        ):
            report.reject(
                f"{name} category {number}", "category needs an 'id' and a 'name'; skipped"
            )
            continue
        categories[str(category["id"])] = str(category["name"]).strip()
    return categories


def _image_entries(
    records: list[Any], folder: Path, name: str, split: str | None, report: DetectionImportReport
) -> dict[str, ImageEntry]:
    """COCO image id (as a string) -> the image entry, first entry kept for repeated ids or files."""
    entries: dict[str, ImageEntry] = {}
    seen_files: set[str] = set()
    for number, entry in enumerate(records):
        where = f"{name} image {entry.get('id', number) if isinstance(entry, dict) else number}"
        if (
            not isinstance(entry, dict)
            or "id" not in entry
            or not isinstance(entry.get("file_name"), str)
        ):
            report.reject(where, "image entry needs an 'id' and a 'file_name'; skipped")
            continue
        key, file_name = str(entry["id"]), entry["file_name"]
        if key in entries:
            report.reject(where, f"duplicate image id {entry['id']!r}; the first entry is kept")
            continue
        if file_name in seen_files:
            report.reject(where, f"{file_name} is listed twice; the first entry is kept")
            continue
        seen_files.add(file_name)
        if safe_relative(file_name) is None:
            report.reject(
                file_name, "file_name must be a relative path inside the images folder; skipped"
            )
            continue
        declared = None
        if isinstance(entry.get("width"), int) and isinstance(entry.get("height"), int):
            declared = (entry["width"], entry["height"])
        entries[key] = ImageEntry(
            key=key,
            source=file_name,
            file=find_image_file(folder, file_name),
            split=split,
            extra={"image_id": key},
            declared_size=declared,
        )
    return entries


def _annotation_origin(name: str) -> Callable[[int, Any], str]:
    """'instances.json annotation 17' (the annotation's id, else '#' and its position)."""

    def origin_of(number: int, record: Any) -> str:
        ann_id = record.get("id", f"#{number}") if isinstance(record, dict) else f"#{number}"
        return f"{name} annotation {ann_id}"

    return origin_of


def _category_by_id(categories: dict[str, str]) -> Callable[[dict[str, Any]], str]:
    """An annotation's class: its ``category_id`` looked up in the file's categories."""

    def category_of(record: dict[str, Any]) -> str:
        found = categories.get(str(record.get("category_id")))
        if found is None:
            raise BadAnnotation(
                f"unknown category_id {record.get('category_id')!r}",
                "add it to 'categories', or fix the record's category_id",
            )
        return found

    return category_of


def _prediction_category(categories: dict[str, str]) -> Callable[[dict[str, Any]], str]:
    """A prediction's class: its ``category_id`` from the annotation file, or a ``category`` name."""
    by_id = _category_by_id(categories)

    def category_of(record: dict[str, Any]) -> str:
        if "category_id" in record:
            return by_id(record)
        if isinstance(record.get("category"), str) and record["category"].strip():
            return record["category"].strip()
        raise BadAnnotation(
            "needs a category_id (or a category name)", "add the prediction's class"
        )

    return category_of


def read_json(path: Path, what: str) -> Any:
    """The JSON in ``path``; an :class:`IngestError` naming the file (as ``what``) if it is
    missing or not valid JSON."""
    name = Path(path).name
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise IngestError(f"{what} file {path} does not exist; check the path") from error
    except UnicodeDecodeError as error:
        raise IngestError(
            f"{what} file {name} is not valid JSON: not UTF-8 text (byte "
            f"{error.object[error.start]:#04x} at position {error.start:,}); save it as UTF-8"
        ) from error
    except json.JSONDecodeError as error:
        raise IngestError(
            f"{what} file {name} is not valid JSON: {error}; fix it, or export it again"
        ) from error
    except RecursionError as error:
        raise IngestError(
            f"{what} file {name} is nested too deeply to be COCO JSON; export it again"
        ) from error
