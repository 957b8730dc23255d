"""Detection datasets: COCO and Pascal VOC importers, the objects table, label-to-inference matching.

A detection dataset is an ordinary dataset (one sample per image, with ``width``, ``height``,
``n_labels``, ``n_inferences`` and ``label`` = the image's most frequent labelled category) plus
``objects.parquet``, one row per box:

==============  ==============================================================================
object_id       stable string: the same file imported again gives the same ids
sample_id       the image's sample
kind            'label' (ground truth) or 'inference' (a model's prediction)
category        class name
x0, y0, x1, y1  box corners in pixels of the upright image (EXIF orientation applied), float
score           the inference's confidence; NaN for labels
status          'tp', 'fp' (unmatched inference) or 'fn' (unmatched label); missing when the
                import had no predictions at all
match_id        object_id of the matched counterpart, or missing
iou             in [0, 1]: IoU with the match for 'tp'; for 'fp'/'fn' the largest IoU with any
                box of the same category and other kind in the image (0.0 if none), so
                0 < iou < 0.5 points to a badly placed box and an 'fp' at iou >= 0.5 to a
                duplicate detection; NaN without predictions
origin          where the box came from: "instances.json annotation 17",
                "preds.json prediction 3", "Annotations/a.xml object 2"
==============  ==============================================================================

Missing strings are stored as nulls (pandas 3 reads them back as NaN: test with ``pd.isna``).

Bad annotations (malformed or empty boxes, unknown image or category, boxes entirely outside
the image) are skipped and listed in the import report with the reason; boxes partly outside
the image are clipped (noted in the report's ``adjusted`` list when they stuck out by more than
``BOX_TOLERANCE_PX``).

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
import shutil
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from shoal.ingest.images import (
    IMAGE_SUFFIXES,
    ImportError_,
    ImportLimits,
    ImportReport,
    Rejection,
    check_image,
    stable_id,
)
from shoal.store import Dataset, StoreError, Workspace, validate_name

IOU_THRESHOLD = 0.5
#: Boxes may stick out of the image by this much (rounding, 1-based VOC corners) without a note.
BOX_TOLERANCE_PX = 2.0
DEFAULT_LIMITS = ImportLimits()
KINDS = ("label", "inference")
STATUSES = ("tp", "fp", "fn")
OBJECT_COLUMNS = (
    "object_id",
    "sample_id",
    "kind",
    "category",
    "x0",
    "y0",
    "x1",
    "y1",
    "score",
    "status",
    "match_id",
    "iou",
    "origin",
)

ProgressCallback = Callable[[int, int], None]


@dataclass
class DetectionImportReport(ImportReport):
    """An :class:`ImportReport` plus box counts and match results.

    ``objects``: boxes imported per kind; ``categories``: labelled boxes per category;
    ``matching``: tp / fp / fn counts and the IoU threshold, or None without predictions;
    ``adjusted``: boxes that were kept after clipping, with what was done.
    """

    objects: dict[str, int] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    matching: dict[str, float] | None = None
    adjusted: list[Rejection] = field(default_factory=list)

    def adjust(self, file: str, reason: str) -> None:
        self.adjusted.append(Rejection(file, reason))

    def to_dict(self) -> dict[str, Any]:
        payload = super().to_dict()
        payload["adjusted"] = [asdict(r) for r in self.adjusted]
        return payload


# --------------------------------------------------------------------------- matching kernel


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair: (n, 4) and (m, 4) xyxy boxes -> (n, m) in [0, 1].

    >>> box_iou(np.array([[0, 0, 2, 2.]]), np.array([[1, 0, 3, 2.]])).round(3)
    array([[0.333]])
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    left = np.maximum(a[:, None, 0], b[None, :, 0])
    top = np.maximum(a[:, None, 1], b[None, :, 1])
    right = np.minimum(a[:, None, 2], b[None, :, 2])
    bottom = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def match_objects(
    labels: pd.DataFrame, inferences: pd.DataFrame, *, iou_threshold: float = IOU_THRESHOLD
) -> pd.DataFrame:
    """Match inferences to labels of the same image and category, greedily by descending score.

    Each inference, best score first (ties keep input order), takes the still unmatched label
    with the highest IoU if that IoU is at least ``iou_threshold``: both become 'tp'. Unmatched
    inferences are 'fp', unmatched labels 'fn' (the PASCAL VOC / COCO rule at one threshold).

    labels: one row per box with object_id, sample_id, category, x0, y0, x1, y1.
    inferences: the same columns plus score.
    Returns labels then inferences (input order, other columns kept) with ``kind``, ``status``,
    ``match_id`` and ``iou`` set (see the module docstring for ``iou`` on unmatched boxes).

    >>> labels = pd.DataFrame({"object_id": ["a"], "sample_id": ["s"], "category": ["cat"],
    ...                        "x0": [0.], "y0": [0.], "x1": [10.], "y1": [10.]})
    >>> preds = labels.assign(object_id="p", x0=1., score=0.9)
    >>> match_objects(labels, preds)[["object_id", "status", "match_id", "iou"]].values.tolist()
    [['a', 'tp', 'p', 0.9], ['p', 'tp', 'a', 0.9]]
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    labels = labels.reset_index(drop=True).assign(kind="label")
    inferences = inferences.reset_index(drop=True).assign(kind="inference")
    if "score" not in inferences:
        raise ValueError("inferences need a 'score' column")
    if len(inferences) and not np.isfinite(inferences["score"].to_numpy(dtype=float)).all():
        raise ValueError("inference scores must be finite numbers")
    if "score" not in labels:
        labels["score"] = np.nan

    label_status = np.full(len(labels), "fn", dtype=object)
    label_match = np.full(len(labels), None, dtype=object)
    label_iou = np.zeros(len(labels))
    inference_status = np.full(len(inferences), "fp", dtype=object)
    inference_match = np.full(len(inferences), None, dtype=object)
    inference_iou = np.zeros(len(inferences))

    coords = ["x0", "y0", "x1", "y1"]
    label_groups = (
        labels.groupby(["sample_id", "category"], sort=False).indices if len(labels) else {}
    )
    inference_groups = (
        inferences.groupby(["sample_id", "category"], sort=False).indices if len(inferences) else {}
    )
    label_boxes = labels[coords].to_numpy(dtype=float)
    inference_boxes = inferences[coords].to_numpy(dtype=float)
    scores = inferences["score"].to_numpy(dtype=float)
    label_ids = labels["object_id"].astype(str).to_numpy()
    inference_ids = inferences["object_id"].astype(str).to_numpy()

    for key, inference_rows in inference_groups.items():
        label_rows = label_groups.get(key)
        if label_rows is None:
            continue
        iou = box_iou(inference_boxes[inference_rows], label_boxes[label_rows])
        inference_iou[inference_rows] = iou.max(axis=1)
        label_iou[label_rows] = iou.max(axis=0)
        taken = np.zeros(len(label_rows), dtype=bool)
        for i in np.argsort(-scores[inference_rows], kind="stable"):
            candidates = np.where(taken, -1.0, iou[i])
            best = int(np.argmax(candidates))
            if candidates[best] < iou_threshold:
                continue
            taken[best] = True
            inference_row, label_row = inference_rows[i], label_rows[best]
            inference_status[inference_row] = label_status[label_row] = "tp"
            inference_match[inference_row] = label_ids[label_row]
            label_match[label_row] = inference_ids[inference_row]
            inference_iou[inference_row] = label_iou[label_row] = iou[i, best]

    labels = labels.assign(status=label_status, match_id=label_match, iou=label_iou)
    inferences = inferences.assign(
        status=inference_status, match_id=inference_match, iou=inference_iou
    )
    frames = [f for f in (labels, inferences) if len(f)]
    if not frames:
        return labels.iloc[:0]
    return pd.concat(frames, ignore_index=True)


def match_counts(objects: pd.DataFrame) -> dict[str, int]:
    """{'tp': matched pairs, 'fp': unmatched inferences, 'fn': unmatched labels}."""
    status = objects["status"]
    kind = objects["kind"]
    return {
        "tp": int(((status == "tp") & (kind == "inference")).sum()),
        "fp": int((status == "fp").sum()),
        "fn": int((status == "fn").sum()),
    }


# --------------------------------------------------------------------------- boxes


class _BadBox(ValueError):
    pass


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _BadBox(f"coordinate {value!r} is not a number")
    try:
        number = float(value)
    except ValueError as error:
        raise _BadBox(f"coordinate {value!r} is not a number") from error
    if not math.isfinite(number):
        raise _BadBox(f"coordinate {value!r} is not finite")
    return number


def coco_box(bbox: Any) -> tuple[float, float, float, float]:
    """COCO [x, y, width, height] -> (x0, y0, x1, y1); raises on malformed or empty boxes."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise _BadBox(f"malformed bbox {bbox!r}: expected [x, y, width, height]")
    x, y, width, height = (_number(v) for v in bbox)
    if width <= 0 or height <= 0:
        raise _BadBox(f"box has zero or negative size (width {width:g}, height {height:g})")
    return x, y, x + width, y + height


def clip_box(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[tuple[float, float, float, float], str | None]:
    """Clip an xyxy box to the image; returns the box and a note if it stuck out beyond tolerance.

    Raises _BadBox when nothing of the box lies inside the image.
    """
    x0, y0, x1, y1 = box
    clipped = (
        min(max(x0, 0.0), width),
        min(max(y0, 0.0), height),
        min(max(x1, 0.0), width),
        min(max(y1, 0.0), height),
    )
    if clipped[2] - clipped[0] <= 0 or clipped[3] - clipped[1] <= 0:
        raise _BadBox(
            f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies entirely outside the {width}x{height} image"
        )
    overhang = max(-x0, -y0, x1 - width, y1 - height)
    note = None
    if overhang > BOX_TOLERANCE_PX:
        note = (
            f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) extends {overhang:g} px outside the {width}x{height} "
            f"image; clipped to ({clipped[0]:g}, {clipped[1]:g}, {clipped[2]:g}, {clipped[3]:g})"
        )
    return clipped, note


def upright_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as displayed, i.e. after its EXIF orientation is applied."""
    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


# --------------------------------------------------------------------------- shared import machinery


@dataclass
class _Image:
    """One image entry while importing: file, identity and the boxes that reference it."""

    key: str  # how annotations refer to it (COCO image id or VOC file stem), as a string
    source: str  # relative path as written in the annotation file
    file: Path | None
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    declared_size: tuple[int, int] | None = None
    size: tuple[int, int] | None = None
    boxes: list[dict[str, Any]] = field(default_factory=list)


def _raw_box(
    origin: str,
    category: str,
    box: tuple[float, float, float, float],
    kind: str,
    score: float = math.nan,
) -> dict[str, Any]:
    return {"origin": origin, "category": category, "box": box, "kind": kind, "score": score}


def _safe_relative(name: str) -> PurePosixPath | None:
    path = PurePosixPath(str(name).replace("\\", "/"))
    if (
        not str(name)
        or path.is_absolute()
        or ".." in path.parts
        or (len(str(name)) > 1 and str(name)[1] == ":")
    ):
        return None
    return path


def _find_image_file(folder: Path, name: str) -> Path | None:
    """The file ``name`` under ``folder``, or a file with its base name directly in ``folder``."""
    relative = _safe_relative(name)
    if relative is None:
        return None
    for candidate in (folder.joinpath(*relative.parts), folder / relative.name):
        if candidate.is_file():
            return candidate
    return None


def _publish(
    workspace: Workspace,
    dataset: str,
    images: list[_Image],
    report: DetectionImportReport,
    *,
    has_predictions: bool,
    iou_threshold: float,
    limits: ImportLimits,
    progress: ProgressCallback | None,
) -> DetectionImportReport:
    """Validate and store the images, clip boxes, match, and publish samples + objects at once."""
    staging = workspace.staging_dir(dataset)
    staged = Dataset(staging)
    try:
        samples, labels, inferences = [], [], []
        for done, image in enumerate(images, start=1):
            if progress:
                progress(done - 1, len(images))
            stored = _store_image(staged, image, report, limits)
            if stored is None:
                continue
            sample_id = stable_id(image.source)
            width, height = image.size  # type: ignore[misc]
            counts: Counter[str] = Counter()
            areas: dict[str, float] = {}
            n_inferences = 0
            for raw in image.boxes:
                try:
                    box, note = clip_box(raw["box"], width, height)
                except _BadBox as error:
                    report.reject(raw["origin"], f"{error}; skipped")
                    continue
                if note:
                    report.adjust(raw["origin"], note)
                row = {
                    "object_id": stable_id(f"{image.source}#{raw['kind']}#{raw['origin']}"),
                    "sample_id": sample_id,
                    "category": raw["category"],
                    "x0": box[0],
                    "y0": box[1],
                    "x1": box[2],
                    "y1": box[3],
                    "score": raw["score"],
                    "origin": raw["origin"],
                }
                if raw["kind"] == "label":
                    labels.append(row)
                    counts[raw["category"]] += 1
                    areas[raw["category"]] = areas.get(raw["category"], 0.0) + (box[2] - box[0]) * (
                        box[3] - box[1]
                    )
                else:
                    inferences.append(row)
                    n_inferences += 1
            samples.append(
                {
                    "sample_id": sample_id,
                    "source": image.source,
                    "path": stored,
                    "split": image.split,
                    "label": _dominant(counts, areas),
                    "width": int(width),
                    "height": int(height),
                    "n_labels": int(sum(counts.values())),
                    "n_inferences": n_inferences,
                    **image.extra,
                }
            )
        if progress:
            progress(len(images), len(images))
        if not samples:
            head = "; ".join(f"{r.file}: {r.reason}" for r in report.rejected[:3])
            raise ImportError_(f"no valid image in {report.source}" + (f": {head}" if head else ""))

        objects = _objects_table(
            labels, inferences, has_predictions=has_predictions, iou_threshold=iou_threshold
        )
        samples_frame = pd.DataFrame(samples)
        report.imported = len(samples_frame)
        report.splits = _value_counts(samples_frame["split"])
        report.labels = _value_counts(samples_frame["label"])
        report.objects = {kind: int((objects["kind"] == kind).sum()) for kind in KINDS}
        report.categories = _value_counts(objects.loc[objects["kind"] == "label", "category"])
        if has_predictions:
            report.matching = {**match_counts(objects), "iou_threshold": iou_threshold}
        staged.write_objects(objects)
        staged.write_import_report(report.to_dict())
        workspace.create(dataset, samples_frame, has_images=True, staged=staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _store_image(
    staged: Dataset, image: _Image, report: DetectionImportReport, limits: ImportLimits
) -> str | None:
    skipped = f"; its {len(image.boxes)} box(es) skipped" if image.boxes else ""
    if image.file is None:
        report.reject(image.source, f"image file not found{skipped}")
        return None
    reason = check_image(image.file, limits)
    if reason:
        report.reject(image.source, reason + skipped)
        return None
    image.size = upright_size(image.file)
    if image.declared_size and tuple(image.declared_size) != image.size:
        report.adjust(
            image.source,
            f"annotation says {image.declared_size[0]}x{image.declared_size[1]} but the image is "
            f"{image.size[0]}x{image.size[1]}; boxes checked against the real size",
        )
    suffix = image.file.suffix.lower()
    suffix = ".jpg" if suffix == ".jpeg" else ".tif" if suffix == ".tiff" else suffix
    return staged.store_image(image.file, suffix)


def _objects_table(
    labels: list[dict[str, Any]],
    inferences: list[dict[str, Any]],
    *,
    has_predictions: bool,
    iou_threshold: float,
) -> pd.DataFrame:
    columns = [c for c in OBJECT_COLUMNS if c not in ("kind", "status", "match_id", "iou")]
    label_frame = pd.DataFrame(labels, columns=columns)
    inference_frame = pd.DataFrame(inferences, columns=columns)
    objects = match_objects(label_frame, inference_frame, iou_threshold=iou_threshold)
    if not has_predictions:
        objects["status"] = None
        objects["match_id"] = None
        objects["iou"] = np.nan
    objects = objects.reindex(columns=list(OBJECT_COLUMNS))
    duplicated = objects["object_id"][objects["object_id"].duplicated()]
    if len(duplicated):  # pragma: no cover - origins are unique per file
        raise StoreError(f"duplicate object id {duplicated.iloc[0]!r}")
    return objects.astype(
        {"x0": float, "y0": float, "x1": float, "y1": float, "score": float, "iou": float}
    )


def _dominant(counts: Counter[str], areas: dict[str, float]) -> str | None:
    """Most frequent labelled category; ties go to the larger total box area, then the name."""
    if not counts:
        return None
    return min(counts, key=lambda c: (-counts[c], -areas[c], c))


def _value_counts(column: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in column.dropna().value_counts().sort_index().items()}


def _check_new_dataset(workspace: Workspace, dataset: str) -> None:
    validate_name(dataset)
    if workspace.exists(dataset):
        raise StoreError(
            f"dataset {dataset!r} already exists; choose another name or `shoal delete {dataset}`"
        )


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ImportError_(f"{what} file {path} does not exist") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ImportError_(f"{what} file {Path(path).name} is not valid JSON: {error}") from error


# --------------------------------------------------------------------------- predictions


def _read_predictions(path: str | os.PathLike[str]) -> list[Any]:
    """COCO results: a list of {image_id, category_id | category, bbox, score} (or {"annotations": [...]})."""
    payload = _read_json(Path(path), "predictions")
    if isinstance(payload, dict) and isinstance(payload.get("annotations"), list):
        payload = payload["annotations"]
    if not isinstance(payload, list):
        raise ImportError_(
            f"predictions file {Path(path).name} must hold a list of "
            "{image_id, category_id, bbox, score} records (COCO results format)"
        )
    return payload


def _add_predictions(
    predictions: list[Any],
    images: dict[str, _Image],
    category_of: Callable[[dict[str, Any]], str],
    report: DetectionImportReport,
    file_name: str,
) -> None:
    for number, record in enumerate(predictions):
        origin = f"{file_name} prediction {number}"
        try:
            if not isinstance(record, dict):
                raise _BadBox("not a {image_id, category_id, bbox, score} record")
            image = images.get(str(record.get("image_id")))
            if image is None:
                raise _BadBox(f"unknown image_id {record.get('image_id')!r}")
            category = category_of(record)
            box = coco_box(record.get("bbox"))
            score = _number(record.get("score")) if record.get("score") is not None else None
            if score is None:
                raise _BadBox("missing score")
        except _BadBox as error:
            report.reject(origin, f"{error}; skipped")
            continue
        image.boxes.append(_raw_box(origin, category, box, "inference", score))


# --------------------------------------------------------------------------- COCO


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
    _check_new_dataset(workspace, dataset)
    annotations_path = Path(annotations)
    payload = _read_json(annotations_path, "annotations")
    name = annotations_path.name
    if not isinstance(payload, dict) or not isinstance(payload.get("images"), list):
        raise ImportError_(
            f"{name} is not a COCO file: it needs an 'images' list (and 'annotations', 'categories')"
        )
    folder = Path(images)
    if not folder.is_dir():
        raise ImportError_(f"images folder {folder} does not exist")
    report = DetectionImportReport(dataset=dataset, source=name)

    categories: dict[str, str] = {}
    for number, category in enumerate(payload.get("categories") or []):
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

    entries: dict[str, _Image] = {}
    seen_files: set[str] = set()
    for number, entry in enumerate(payload["images"]):
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
        if _safe_relative(file_name) is None:
            report.reject(
                file_name, "file_name must be a relative path inside the images folder; skipped"
            )
            continue
        declared = None
        if isinstance(entry.get("width"), int) and isinstance(entry.get("height"), int):
            declared = (entry["width"], entry["height"])
        entries[key] = _Image(
            key=key,
            source=file_name,
            file=_find_image_file(folder, file_name),
            split=split,
            extra={"image_id": key},
            declared_size=declared,
        )

    for number, annotation in enumerate(payload.get("annotations") or []):
        ann_id = (
            annotation.get("id", f"#{number}") if isinstance(annotation, dict) else f"#{number}"
        )
        origin = f"annotation {ann_id}"
        try:
            if not isinstance(annotation, dict):
                raise _BadBox("not an annotation record")
            image = entries.get(str(annotation.get("image_id")))
            if image is None:
                raise _BadBox(f"unknown image_id {annotation.get('image_id')!r}")
            category = categories.get(str(annotation.get("category_id")))
            if category is None:
                raise _BadBox(f"unknown category_id {annotation.get('category_id')!r}")
            box = coco_box(annotation.get("bbox"))
        except _BadBox as error:
            report.reject(f"{name} {origin}", f"{error}; skipped")
            continue
        image.boxes.append(_raw_box(f"{name} {origin}", category, box, "label"))

    if predictions is not None:

        def category_of(record: dict[str, Any]) -> str:
            if "category_id" in record:
                found = categories.get(str(record["category_id"]))
                if found is None:
                    raise _BadBox(f"unknown category_id {record['category_id']!r}")
                return found
            if isinstance(record.get("category"), str) and record["category"].strip():
                return record["category"].strip()
            raise _BadBox("needs a category_id (or a category name)")

        _add_predictions(
            _read_predictions(predictions), entries, category_of, report, Path(predictions).name
        )

    return _publish(
        workspace,
        dataset,
        list(entries.values()),
        report,
        has_predictions=predictions is not None,
        iou_threshold=iou_threshold,
        limits=limits,
        progress=progress,
    )


# --------------------------------------------------------------------------- Pascal VOC


def _voc_layout(folder: Path) -> list[tuple[Path, Path]]:
    """(xml file, folder its images are relative to) for both VOC layouts."""
    annotations = folder / "Annotations"
    if annotations.is_dir():
        image_root = folder / "JPEGImages" if (folder / "JPEGImages").is_dir() else folder
        return [(xml, image_root) for xml in sorted(annotations.rglob("*.xml"))]
    return [
        (xml, xml.parent)
        for xml in sorted(folder.rglob("*.xml"))
        if not _hidden(xml.relative_to(folder))
    ]


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in relative.parts)


def _voc_splits(folder: Path) -> dict[str, str]:
    """File stem -> split from ImageSets/Main/{train,val,trainval,test}.txt when present."""
    splits: dict[str, str] = {}
    main = folder / "ImageSets" / "Main"
    for split in ("train", "val", "test"):  # 'trainval' is the union of train and val
        listing = main / f"{split}.txt"
        if listing.is_file():
            for line in listing.read_text().split("\n"):
                if line.strip():
                    splits.setdefault(line.split()[0], split)
    return splits


def _voc_image_file(xml: Path, root: Path, filename: str | None) -> Path | None:
    if filename:
        found = _find_image_file(root, filename)
        if found is not None:
            return found
    for suffix in sorted(IMAGE_SUFFIXES):
        for candidate in (root / f"{xml.stem}{suffix}", root / f"{xml.stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _text(element: ElementTree.Element | None, tag: str) -> str | None:
    found = element.find(tag) if element is not None else None
    return found.text.strip() if found is not None and found.text and found.text.strip() else None


def import_voc(
    workspace: Workspace,
    folder: str | os.PathLike[str],
    *,
    dataset: str,
    predictions: str | os.PathLike[str] | None = None,
    split: str | None = None,
    iou_threshold: float = IOU_THRESHOLD,
    limits: ImportLimits = DEFAULT_LIMITS,
    progress: ProgressCallback | None = None,
) -> DetectionImportReport:
    """Import Pascal VOC XML: ``Annotations/*.xml`` with ``JPEGImages/``, or XML files beside the images.

    VOC corners are 1-based pixel indices, so (xmin - 1, ymin - 1, xmax, ymax) becomes the box,
    as Detectron2 reads them. Splits come from ``ImageSets/Main/{train,val,test}.txt`` when
    present, else ``split``. ``predictions`` is COCO results JSON where ``image_id`` is the image's
    file stem (``"2011_000003"``) and ``category`` (or ``category_id``) is the class name.

    >>> import_voc(Workspace(), "VOC2012/", dataset="voc")                      # doctest: +SKIP
    """
    _check_new_dataset(workspace, dataset)
    folder = Path(folder)
    if not folder.is_dir():
        raise ImportError_(f"{folder} is not a folder of VOC annotations")
    layout = _voc_layout(folder)
    if not layout:
        raise ImportError_(
            f"no VOC .xml annotation files under {folder} (looked in Annotations/ and beside images)"
        )
    splits = _voc_splits(folder)
    report = DetectionImportReport(dataset=dataset, source=folder.name)
    entries: dict[str, _Image] = {}
    for done, (xml, root) in enumerate(layout):
        where = xml.relative_to(folder).as_posix()
        if progress:
            progress(done, len(layout) * 2)  # parsing is the first half, storing the second
        try:
            tree = ElementTree.parse(xml)
        except (ElementTree.ParseError, OSError) as error:
            report.reject(where, f"not a readable XML file ({error}); skipped")
            continue
        annotation = tree.getroot()
        if annotation.tag != "annotation":
            report.reject(where, f"root element is <{annotation.tag}>, not <annotation>; skipped")
            continue
        file = _voc_image_file(xml, root, _text(annotation, "filename"))
        source = (
            file.relative_to(folder).as_posix()
            if file is not None
            else (_text(annotation, "filename") or where)
        )
        key = file.stem if file is not None else xml.stem
        if key in entries:
            report.reject(where, f"a second annotation file for image {key!r}; skipped")
            continue
        size = annotation.find("size")
        width, height = _text(size, "width"), _text(size, "height")
        declared = None
        if (
            width
            and height
            and width.isdigit()
            and height.isdigit()
            and int(width) > 0
            and int(height) > 0
        ):
            declared = (int(width), int(height))
        image = _Image(
            key=key, source=source, file=file, split=splits.get(key, split), declared_size=declared
        )
        for number, obj in enumerate(annotation.findall("object"), start=1):
            origin = f"{where} object {number}"
            try:
                name = _text(obj, "name")
                if not name:
                    raise _BadBox("object has no <name>")
                bndbox = obj.find("bndbox")
                if bndbox is None:
                    raise _BadBox("object has no <bndbox>")
                xmin, ymin, xmax, ymax = (
                    _number(_text(bndbox, t)) for t in ("xmin", "ymin", "xmax", "ymax")
                )
                if xmax <= xmin - 1 or ymax <= ymin - 1:
                    raise _BadBox(
                        f"box has zero or negative size (xmin {xmin:g}, xmax {xmax:g}, "
                        f"ymin {ymin:g}, ymax {ymax:g})"
                    )
            except _BadBox as error:
                report.reject(origin, f"{error}; skipped")
                continue
            image.boxes.append(_raw_box(origin, name, (xmin - 1, ymin - 1, xmax, ymax), "label"))
        entries[key] = image

    if predictions is not None:

        def category_of(record: dict[str, Any]) -> str:
            for name_key in ("category", "category_id"):
                value = record.get(name_key)
                if isinstance(value, str) and value.strip():
                    return value.strip()
            raise _BadBox("needs a category name ('category')")

        stems = dict(entries)
        stems.update(
            {Path(e.source).name: e for e in entries.values()}
        )  # "x.jpg" works as well as "x"
        _add_predictions(
            _read_predictions(predictions), stems, category_of, report, Path(predictions).name
        )

    def halfway(done: int, total: int) -> None:
        if progress:
            progress(len(layout) + done * len(layout) // max(total, 1), len(layout) * 2)

    return _publish(
        workspace,
        dataset,
        list(entries.values()),
        report,
        has_predictions=predictions is not None,
        iou_threshold=iou_threshold,
        limits=limits,
        progress=halfway if progress else None,
    )
