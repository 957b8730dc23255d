"""Label Studio exports in: the images of a project and the labels its annotators gave them.

Label Studio's "JSON" export is a list of tasks, each with the image reference in ``data`` and
what the annotators did in ``annotations[].result``. Here, per task, the most recently updated
annotation that was not cancelled counts:

- ``choices`` results give the image its label (an image-level dataset, stored like a manifest
  import: :func:`shoal.ingest.images.store_entries`);
- ``rectanglelabels`` results give labelled boxes, converted from Label Studio's percentages to
  pixels with the result's ``original_width`` / ``original_height`` (a detection dataset,
  stored like a COCO import: :func:`shoal.ingest.detection.publish_boxes`). Boxes in
  ``predictions`` (other than Shoal's own pre-annotated labels) come along as the model's
  inferences with their scores.

Image references are resolved against the ``images`` folder: a local-files URL
(``/data/local-files/?d=<path>``) by its path under that folder (the server's
``LOCAL_FILES_DOCUMENT_ROOT``), a plain relative path likewise, an absolute path as it is, and
any other URL (``http(s)://``, a Label Studio upload) by its file name inside the folder. Shoal's
own :func:`shoal.workflows.exports.export_label_studio` writes ``sample_id`` and ``split`` into
``data``; they are kept, so a round trip keeps the sample ids.

Example:
    >>> report = import_label_studio(Workspace(), "project-1.json", images="/srv/photos",
    ...                              dataset="relabelled")                      # doctest: +SKIP
    >>> report.labels                                                          # doctest: +SKIP
    {'cat': 12, 'dog': 9}
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from shoal.analysis.boxes import IOU_THRESHOLD
from shoal.ingest.coco import read_json
from shoal.ingest.detection import (
    BadAnnotation,
    DetectionImportReport,
    ImageEntry,
    find_image_file,
    parse_number,
    publish_boxes,
    upright_size,
)
from shoal.ingest.images import IMAGE_SUFFIXES, store_entries
from shoal.ingest.publish import (
    DEFAULT_LIMITS,
    ImportLimits,
    ImportReport,
    IngestError,
    ProgressCallback,
    check_new_dataset,
    stable_id,
)
from shoal.store import MAX_ID_LENGTH, Workspace

#: Names of the labelling config's tags that Shoal's export writes (``from_name`` / ``to_name``).
FROM_NAME = "label"
TO_NAME = "image"
#: How Label Studio serves a file under ``LOCAL_FILES_DOCUMENT_ROOT``: this, then the path.
LOCAL_FILES_URL = "/data/local-files/?d="
#: ``model_version`` of the pre-annotation holding the dataset's own labels: not a model's output.
LABELS_VERSION = "shoal labels"
#: ``model_version`` of the pre-annotation holding the dataset's predicted boxes.
PREDICTIONS_VERSION = "shoal predictions"
#: ``data`` keys that Shoal's export writes and the import reads back (not metadata columns).
_DATA_KEYS = {"image", "sample_id", "split", "label"}
_EXPORT_HINT = "export the project from Label Studio as 'JSON' (Export → JSON)"


def is_label_studio_export(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a Label Studio JSON export: a .json file that starts as a list
    of objects with a ``data`` key (reads the first 64 KiB only)."""
    path = Path(path)
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace") as handle:
        head = handle.read(1 << 16)
    return head.lstrip().startswith("[") and '"data"' in head


def import_label_studio(
    workspace: Workspace,
    export: str | os.PathLike[str],
    *,
    dataset: str,
    images: str | os.PathLike[str] | None = None,
    split: str | None = None,
    iou_threshold: float = IOU_THRESHOLD,
    limits: ImportLimits = DEFAULT_LIMITS,
    progress: ProgressCallback | None = None,
) -> ImportReport:
    """A new dataset from a Label Studio JSON export (see the module docstring).

    ``images``: the folder the tasks' image references are resolved against (default: the
    export's own folder). ``split``: for tasks whose ``data`` has none. A task that cannot be
    used (no image reference, image not found, a malformed result) is skipped and listed in the
    report with the reason; the result is a :class:`DetectionImportReport` when the export has
    boxes.

    >>> import_label_studio(Workspace(), "project-3.json", images="photos/", dataset="cats")  # doctest: +SKIP
    """
    check_new_dataset(workspace, dataset)
    path = Path(export)
    folder = Path(images) if images is not None else path.parent
    if not folder.is_dir():
        raise IngestError(
            f"images folder {folder} does not exist; give the folder that holds the tasks' "
            "images (Label Studio's LOCAL_FILES_DOCUMENT_ROOT for local-files URLs)"
        )
    tasks = _tasks(read_json(path, "Label Studio export"), path.name)
    report = DetectionImportReport(dataset=dataset, source=path.name)
    parsed = [
        task for task in (_parse_task(t, n, path.name, folder, report) for n, t in tasks) if task
    ]
    seen: set[str] = set()
    kept = []
    for task in parsed:
        if task.sample_id in seen:
            report.reject(
                task.where,
                f"sample_id {task.sample_id!r} is already used by an earlier task; skipped: "
                "give each task its own data.sample_id, or remove the duplicate task",
            )
            continue
        seen.add(task.sample_id)
        task.split = task.split or split
        kept.append(task)
    if not kept:
        head = "; ".join(f"{r.file}: {r.reason}" for r in report.rejected[:3])
        raise IngestError(
            f"no usable task in {path.name}, so nothing was imported"
            + (f": {head}" if head else f"; it lists no tasks: {_EXPORT_HINT}")
        )
    if any(task.boxes or task.inferences for task in kept):
        return _publish_detection(workspace, kept, report, iou_threshold, limits, progress)
    plain = ImportReport(dataset=dataset, source=path.name, rejected=report.rejected)
    entries = [
        (
            task.file,
            task.source,
            task.split,
            task.choice,
            task.metadata,
            task.sample_id,
        )
        for task in kept
    ]
    return store_entries(workspace, dataset, entries, plain, limits=limits, progress=progress)


@dataclass
class _Task:
    """One usable task: its image file, identity, and what its annotation says."""

    where: str
    file: Path
    source: str
    sample_id: str
    split: str | None
    metadata: dict[str, Any]
    choice: str | None = None
    boxes: list[tuple[str, str, tuple[float, float, float, float]]] = field(default_factory=list)
    inferences: list[tuple[str, str, tuple[float, float, float, float], float]] = field(
        default_factory=list
    )


def _tasks(payload: Any, name: str) -> list[tuple[int, Any]]:
    if isinstance(payload, dict):
        if isinstance(payload.get("images"), list):
            raise IngestError(
                f"{name} is a COCO file, not a Label Studio export: import it with "
                "`shoal import-coco`"
            )
        raise IngestError(
            f"{name} is not a Label Studio export: that is a list of tasks, this is one object; "
            + _EXPORT_HINT
        )
    if not isinstance(payload, list):
        raise IngestError(f"{name} is not a Label Studio export (a list of tasks); {_EXPORT_HINT}")
    if payload and all(isinstance(t, dict) and "data" not in t for t in payload):
        raise IngestError(
            f"{name} has no task with a 'data' object: it looks like Label Studio's JSON-MIN or "
            f"CSV export, which drops the boxes' image sizes; {_EXPORT_HINT}"
        )
    return list(enumerate(payload, start=1))


def _parse_task(
    task: Any, number: int, name: str, folder: Path, report: DetectionImportReport
) -> _Task | None:
    task_id = task.get("id", number) if isinstance(task, dict) else number
    where = f"{name} task {task_id}"
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        report.reject(where, f"task has no 'data' object; skipped: {_EXPORT_HINT}")
        return None
    data = task["data"]
    reference = _image_reference(data)
    if reference is None:
        report.reject(
            where,
            f"no image reference in data (keys: {', '.join(map(str, data)) or 'none'}); skipped: "
            "put the image's URL or path under data.image",
        )
        return None
    file, source = _image_file(reference, folder)
    if file is None:
        report.reject(
            where,
            f"image {reference!r} not found under {folder}; skipped: give the folder that holds "
            "it (for local-files URLs, Label Studio's LOCAL_FILES_DOCUMENT_ROOT) as the images "
            "folder",
        )
        return None
    explicit = data.get("sample_id")
    if _scalar(explicit) and len(str(explicit)) > MAX_ID_LENGTH:
        report.reject(
            where,
            f"data.sample_id has {len(str(explicit)):,} characters; ids are at most "
            f"{MAX_ID_LENGTH}: skipped: shorten it",
        )
        return None
    parsed = _Task(
        where=where,
        file=file,
        source=source,
        sample_id=str(explicit) if _scalar(explicit) and str(explicit) else stable_id(source),
        split=str(data["split"]) if _scalar(data.get("split")) else None,
        metadata={
            ("previous_label" if key == "label" else str(key)): value
            for key, value in data.items()
            if key != "image" and (key not in _DATA_KEYS or key == "label") and _scalar(value)
        }
        | {"label_studio_id": str(task_id)},
    )
    try:
        _read_annotation(task, parsed, report)
        _read_predictions(task, parsed, report)
    except BadAnnotation as error:
        report.reject(where, f"{error}; skipped" + (f": {error.hint}" if error.hint else ""))
        return None
    return parsed


def _image_reference(data: dict[str, Any]) -> str | None:
    """``data.image``, else the first string value that names an image file or a local file."""
    if isinstance(data.get("image"), str) and data["image"].strip():
        return str(data["image"]).strip()
    for value in data.values():
        if isinstance(value, str) and (
            LOCAL_FILES_URL in value
            or PurePosixPath(urlsplit(value).path).suffix.lower() in IMAGE_SUFFIXES
        ):
            return value.strip()
    return None


def _image_file(reference: str, folder: Path) -> tuple[Path | None, str]:
    """The image file a task refers to, and the relative name it is imported under."""
    parts = urlsplit(reference)
    if parts.path.rstrip("/").endswith("/data/local-files"):
        relative = unquote(parse_qs(parts.query).get("d", [""])[0])
        return find_image_file(folder, relative), relative
    if parts.scheme in ("", "file") and not reference.startswith("/data/"):
        local = unquote(parts.path) if parts.scheme == "file" else reference
        if Path(local).is_absolute():
            candidate = Path(local)
            return (candidate if candidate.is_file() else None), candidate.name
        return find_image_file(folder, local), local
    # A URL Label Studio fetched or stored (http(s), s3, its own uploads): the file by its name.
    name = PurePosixPath(unquote(parts.path)).name
    found = find_image_file(folder, name)
    if found is None and reference.startswith("/data/upload/") and "-" in name:
        name = name.split("-", 1)[1]  # uploads are stored as '<8 hex digits>-<original name>'
        found = find_image_file(folder, name)
    return found, name


def _read_annotation(task: dict[str, Any], parsed: _Task, report: DetectionImportReport) -> None:
    annotations = [
        a
        for a in task.get("annotations") or []
        if isinstance(a, dict) and not a.get("was_cancelled")
    ]
    if not annotations:
        return
    # The latest word counts: a reviewer's fix is saved as a newer annotation of the same task.
    annotation = max(
        enumerate(annotations), key=lambda pair: (str(pair[1].get("updated_at") or ""), pair[0])
    )[1]
    origin = f"{parsed.where} annotation {annotation.get('id', '?')}"
    for number, result in enumerate(_results(annotation, origin)):
        where = f"{origin} result {number}"
        kind = result.get("type")
        value = _value(result)
        if kind == "choices":
            choices = value.get("choices")
            if not isinstance(choices, list) or not choices:
                raise BadAnnotation(f"{where}: a choices result without choices", _EXPORT_HINT)
            parsed.choice = str(choices[0])
        elif kind == "rectanglelabels":
            try:
                parsed.boxes.append((where, *_box(result, value, parsed.file)))
            except BadAnnotation as error:
                report.reject(where, error.skipped())
        else:
            report.reject(
                where,
                f"result type {kind!r} is not imported (only choices and rectanglelabels); skipped",
            )


def _read_predictions(task: dict[str, Any], parsed: _Task, report: DetectionImportReport) -> None:
    for prediction in task.get("predictions") or []:
        if not isinstance(prediction, dict) or prediction.get("model_version") == LABELS_VERSION:
            continue  # Shoal's own labels offered for review: not a model's output
        origin = f"{parsed.where} prediction {prediction.get('id', '?')}"
        for number, result in enumerate(_results(prediction, origin)):
            if result.get("type") != "rectanglelabels":
                continue
            where = f"{origin} result {number}"
            value = _value(result)
            score = result.get("score", prediction.get("score"))
            try:
                category, box = _box(result, value, parsed.file)
                if score is None:
                    raise BadAnnotation(
                        "predicted box without a score", "give the result or prediction a score"
                    )
                parsed.inferences.append((where, category, box, parse_number(score)))
            except BadAnnotation as error:
                report.reject(where, error.skipped())


def _results(record: dict[str, Any], origin: str) -> list[dict[str, Any]]:
    results = record.get("result") or []
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise BadAnnotation(f"{origin}: 'result' is not a list of objects", _EXPORT_HINT)
    return results


def _box(
    result: dict[str, Any], value: dict[str, Any], file: Path
) -> tuple[str, tuple[float, float, float, float]]:
    """(category, pixel box x0, y0, x1, y1) of a rectanglelabels result."""
    labels = value.get("rectanglelabels")
    if not isinstance(labels, list) or not labels or not str(labels[0]).strip():
        raise BadAnnotation("box without a label", "give it a label in Label Studio")
    rotation = parse_number(value.get("rotation", 0) or 0)
    if not math.isclose(rotation % 360, 0.0, abs_tol=1e-6):
        raise BadAnnotation(
            f"box is rotated by {rotation:g} degrees; Shoal keeps axis-aligned boxes",
            "set its rotation to 0 in Label Studio",
        )
    try:
        x, y, width, height = (parse_number(value[k]) for k in ("x", "y", "width", "height"))
    except KeyError as error:
        raise BadAnnotation(f"box without {error.args[0]!r}", _EXPORT_HINT) from error
    if width <= 0 or height <= 0:
        raise BadAnnotation(
            f"box has zero or negative size (width {width:g}%, height {height:g}%)",
            "give it a positive width and height, or delete it",
        )
    if result.get("original_width") and result.get("original_height"):
        image_width = parse_number(result["original_width"])
        image_height = parse_number(result["original_height"])
    else:  # older exports: Label Studio's percentages are of the image as displayed
        image_width, image_height = upright_size(file)
    x0, y0 = x / 100 * image_width, y / 100 * image_height
    return str(labels[0]).strip(), (
        x0,
        y0,
        x0 + width / 100 * image_width,
        y0 + height / 100 * image_height,
    )


def _publish_detection(
    workspace: Workspace,
    tasks: list[_Task],
    report: DetectionImportReport,
    iou_threshold: float,
    limits: ImportLimits,
    progress: ProgressCallback | None,
) -> DetectionImportReport:
    entries = []
    for task in tasks:
        entry = ImageEntry(
            key=task.sample_id,
            source=task.source,
            file=task.file,
            split=task.split,
            extra=task.metadata | ({"choice": task.choice} if task.choice else {}),
            sample_id=task.sample_id,
        )
        for origin, category, box in task.boxes:
            entry.add_box(origin, category, box)
        for origin, category, box, score in task.inferences:
            entry.add_box(origin, category, box, "inference", score)
        entries.append(entry)
    return publish_boxes(
        workspace,
        entries,
        report,
        has_predictions=any(task.inferences for task in tasks),
        iou_threshold=iou_threshold,
        limits=limits,
        progress=progress,
        missing_hint="put it in the images folder",
    )


def _value(result: dict[str, Any]) -> dict[str, Any]:
    value = result.get("value")
    return value if isinstance(value, dict) else {}


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) and not (
        isinstance(value, float) and math.isnan(value)
    )
