"""Detection datasets: the objects table, and what the COCO and VOC importers share.

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
``BOX_TOLERANCE_PX``). The matching itself is :func:`shoal.analysis.boxes.match_boxes`; the importers
are :func:`shoal.ingest.coco.import_coco` and :func:`shoal.ingest.voc.import_voc`, which parse
their format into :class:`ImageEntry` records and end with :func:`publish_boxes`.

Example:
    >>> objects = Workspace().open("street").objects()                         # doctest: +SKIP
    >>> match_counts(objects)                                                    # doctest: +SKIP
    {'tp': 10, 'fp': 5, 'fn': 21}
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from shoal.analysis.boxes import IOU_THRESHOLD, match_boxes
from shoal.ingest.images import check_image
from shoal.ingest.publish import (
    ImportLimits,
    ImportReport,
    IngestError,
    ProgressCallback,
    Rejection,
    publish,
    stable_id,
    staging,
    store_image,
    value_counts,
)
from shoal.store import Dataset, StoreError, Workspace

#: Boxes may stick out of the image by this much (rounding, 1-based VOC corners) without a note.
BOX_TOLERANCE_PX = 2.0
KINDS = ("label", "inference")
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
_COORDINATES = ["x0", "y0", "x1", "y1"]


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


# --------------------------------------------------------------------------- matching


def match_objects(
    labels: pd.DataFrame, inferences: pd.DataFrame, *, iou_threshold: float = IOU_THRESHOLD
) -> pd.DataFrame:
    """Match inferences to labels of the same image and category (see :func:`match_boxes`).

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
    labels = labels.reset_index(drop=True).assign(kind="label")
    inferences = inferences.reset_index(drop=True).assign(kind="inference")
    if "score" not in inferences:
        raise ValueError("inferences need a 'score' column")
    if "score" not in labels:
        labels["score"] = np.nan
    # One code per (image, category) across both kinds; a missing key matches nothing.
    keys = pd.DataFrame(
        {
            column: np.concatenate(
                [labels[column].to_numpy(dtype=object), inferences[column].to_numpy(dtype=object)]
            )
            for column in ("sample_id", "category")
        }
    )
    codes = (
        keys.groupby(["sample_id", "category"], sort=False)
        .ngroup()
        .fillna(-1)
        .to_numpy(dtype=np.int64)
    )
    matches = match_boxes(
        labels[_COORDINATES].to_numpy(dtype=float),
        inferences[_COORDINATES].to_numpy(dtype=float),
        inferences["score"].to_numpy(dtype=float),
        label_groups=codes[: len(labels)],
        inference_groups=codes[len(labels) :],
        iou_threshold=iou_threshold,
    )
    label_ids = labels["object_id"].astype(str).to_numpy()
    inference_ids = inferences["object_id"].astype(str).to_numpy()
    labels = labels.assign(
        status=np.where(matches.label_match >= 0, "tp", "fn").astype(object),
        match_id=_partner_ids(matches.label_match, inference_ids),
        iou=matches.label_iou,
    )
    inferences = inferences.assign(
        status=np.where(matches.inference_match >= 0, "tp", "fp").astype(object),
        match_id=_partner_ids(matches.inference_match, label_ids),
        iou=matches.inference_iou,
    )
    frames = [f for f in (labels, inferences) if len(f)]
    if not frames:
        return labels.iloc[:0]
    return pd.concat(frames, ignore_index=True)


def _partner_ids(match: np.ndarray, partner_ids: np.ndarray) -> np.ndarray:
    ids = np.full(len(match), None, dtype=object)
    ids[match >= 0] = partner_ids[match[match >= 0]]
    return ids


def match_counts(objects: pd.DataFrame) -> dict[str, int]:
    """{'tp': matched pairs, 'fp': unmatched inferences, 'fn': unmatched labels} of a table."""
    status = objects["status"]
    kind = objects["kind"]
    return {
        "tp": int(((status == "tp") & (kind == "inference")).sum()),
        "fp": int((status == "fp").sum()),
        "fn": int((status == "fn").sum()),
    }


# --------------------------------------------------------------------------- boxes


class BadAnnotation(ValueError):
    """One annotation or prediction record is skipped; the message says why, ``hint`` what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def skipped(self) -> str:
        """The reason as the import report lists it: what is wrong, skipped, what to do."""
        return f"{self}; skipped" + (f": {self.hint}" if self.hint else "")


NUMBERS = "coordinates and scores must be plain numbers"


def parse_number(value: Any) -> float:
    """A finite coordinate or score from JSON or XML text; raises :class:`BadAnnotation`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadAnnotation(f"coordinate {value!r} is not a number", NUMBERS)
    try:
        number = float(value)
    except ValueError as error:
        raise BadAnnotation(f"coordinate {value!r} is not a number", NUMBERS) from error
    if not math.isfinite(number):
        raise BadAnnotation(f"coordinate {value!r} is not finite", NUMBERS)
    return number


def clip_box(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[tuple[float, float, float, float], str | None]:
    """Clip an xyxy box to the image; returns the box and a note if it stuck out beyond tolerance.

    Raises BadAnnotation when nothing of the box lies inside the image.
    """
    x0, y0, x1, y1 = box
    clipped = (
        min(max(x0, 0.0), width),
        min(max(y0, 0.0), height),
        min(max(x1, 0.0), width),
        min(max(y1, 0.0), height),
    )
    if clipped[2] - clipped[0] <= 0 or clipped[3] - clipped[1] <= 0:
        raise BadAnnotation(
            f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies entirely outside the {width}x{height} image",
            "check that its coordinates are in pixels of this image",
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


# --------------------------------------------------------------------------- images and files


@dataclass
class ImageEntry:
    """One image entry while importing: file, identity and the boxes that reference it."""

    key: str  # how annotations refer to it (COCO image id or VOC file stem), as a string
    source: str  # relative path as written in the annotation file
    file: Path | None
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    declared_size: tuple[int, int] | None = None
    size: tuple[int, int] | None = None
    boxes: list[dict[str, Any]] = field(default_factory=list)
    sample_id: str | None = None  # kept from the source (a Label Studio round trip), else derived

    def add_box(
        self,
        origin: str,
        category: str,
        box: tuple[float, float, float, float],
        kind: str = "label",
        score: float = math.nan,
    ) -> None:
        self.boxes.append(
            {"origin": origin, "category": category, "box": box, "kind": kind, "score": score}
        )


def safe_relative(name: str) -> PurePosixPath | None:
    """``name`` as a relative path that stays inside its folder, or None (absolute, '..')."""
    path = PurePosixPath(str(name).replace("\\", "/"))
    if (
        not str(name)
        or path.is_absolute()
        or ".." in path.parts
        or (len(str(name)) > 1 and str(name)[1] == ":")
    ):
        return None
    return path


def find_image_file(folder: Path, name: str) -> Path | None:
    """The file ``name`` under ``folder``, or a file with its base name directly in ``folder``."""
    relative = safe_relative(name)
    if relative is None:
        return None
    for candidate in (folder.joinpath(*relative.parts), folder / relative.name):
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------- publishing


def publish_boxes(
    workspace: Workspace,
    images: list[ImageEntry],
    report: DetectionImportReport,
    *,
    has_predictions: bool,
    iou_threshold: float,
    limits: ImportLimits,
    progress: ProgressCallback | None,
    missing_hint: str = "put it where the annotations say",
) -> DetectionImportReport:
    """Store the images, clip their boxes, match, and publish samples and objects at once.

    ``has_predictions``: the import came with a predictions file (even one with no usable box),
    so every box gets a status; without it, status, match and IoU stay missing.
    ``missing_hint``: what to do about an image file that is not there (it depends on the format).
    """
    with staging(workspace, report.dataset) as staged:
        samples, labels, inferences = [], [], []
        for done, image in enumerate(images, start=1):
            if progress:
                progress(done - 1, len(images))
            stored = _store_image(staged, image, report, limits, missing_hint)
            if stored is None:
                continue
            sample, image_labels, image_inferences = _image_rows(image, stored, report)
            samples.append(sample)
            labels += image_labels
            inferences += image_inferences
        if progress:
            progress(len(images), len(images))
        if not samples:
            head = "; ".join(f"{r.file}: {r.reason}" for r in report.rejected[:3])
            raise IngestError(
                f"no valid image in {report.source}, so nothing was imported"
                + (f": {head}" if head else "; check that the annotations list the images")
            )

        objects = _objects_table(
            labels, inferences, has_predictions=has_predictions, iou_threshold=iou_threshold
        )
        report.objects = {kind: int((objects["kind"] == kind).sum()) for kind in KINDS}
        report.categories = value_counts(objects.loc[objects["kind"] == "label", "category"])
        if has_predictions:
            report.matching = {**match_counts(objects), "iou_threshold": iou_threshold}
        staged.write_objects(objects)
        publish(workspace, staged, pd.DataFrame(samples), report)
    return report


def _image_rows(
    image: ImageEntry, stored: str, report: DetectionImportReport
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The image's sample row, and its clipped label and inference rows."""
    sample_id = image.sample_id or stable_id(image.source)
    width, height = image.size  # type: ignore[misc]
    counts: Counter[str] = Counter()
    areas: dict[str, float] = {}
    labels, inferences = [], []
    for raw in image.boxes:
        try:
            box, note = clip_box(raw["box"], width, height)
        except BadAnnotation as error:
            report.reject(raw["origin"], error.skipped())
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
    sample = {
        "sample_id": sample_id,
        "source": image.source,
        "path": stored,
        "split": image.split,
        "label": _dominant(counts, areas),
        "width": int(width),
        "height": int(height),
        "n_labels": int(sum(counts.values())),
        "n_inferences": len(inferences),
        **image.extra,
    }
    return sample, labels, inferences


def _store_image(
    staged: Dataset,
    image: ImageEntry,
    report: DetectionImportReport,
    limits: ImportLimits,
    missing_hint: str,
) -> str | None:
    skipped = f"; its {len(image.boxes)} box(es) skipped" if image.boxes else ""
    if image.file is None:
        report.reject(image.source, f"image file not found{skipped}; {missing_hint}")
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
    return store_image(staged, image.file)


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
