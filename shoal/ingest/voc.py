"""Pascal VOC XML in: ``Annotations/*.xml`` with ``JPEGImages/``, or XML files beside the images.

The boxes land in the dataset's objects table (see :mod:`shoal.ingest.detection`); an unreadable
XML file or a bad object is skipped and listed in the report with its reason.

Example:
    >>> import_voc(Workspace(), "VOC2012/", dataset="voc").objects              # doctest: +SKIP
    {'label': 9, 'inference': 0}
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

from shoal.analysis.boxes import IOU_THRESHOLD
from shoal.ingest.coco import add_predictions
from shoal.ingest.detection import (
    BadAnnotation,
    DetectionImportReport,
    ImageEntry,
    find_image_file,
    parse_number,
    publish_boxes,
)
from shoal.ingest.images import IMAGE_SUFFIXES, is_hidden
from shoal.ingest.publish import (
    DEFAULT_LIMITS,
    ImportLimits,
    IngestError,
    ProgressCallback,
    check_new_dataset,
    error_text,
)
from shoal.store import Workspace


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
    check_new_dataset(workspace, dataset)
    folder = Path(folder)
    if not folder.is_dir():
        raise IngestError(f"{folder} is not a folder of VOC annotations")
    layout = _voc_layout(folder)
    if not layout:
        raise IngestError(
            f"no VOC .xml annotation files under {folder}; put them in Annotations/ (with the "
            "images in JPEGImages/), or beside the images"
        )
    splits = _voc_splits(folder)
    report = DetectionImportReport(dataset=dataset, source=folder.name)
    entries: dict[str, ImageEntry] = {}
    for done, (xml, root) in enumerate(layout):
        if progress:
            progress(done, len(layout) * 2)  # parsing is the first half, storing the second
        image = _read_annotation(xml, root, folder, splits, split, entries, report)
        if image is not None:
            entries[image.key] = image

    if predictions is not None:
        stems = dict(entries)
        stems.update({Path(e.source).name: e for e in entries.values()})  # "x.jpg" as well as "x"
        add_predictions(predictions, stems, report, category_of=_prediction_category)

    def halfway(done: int, total: int) -> None:
        if progress:
            progress(len(layout) + done * len(layout) // max(total, 1), len(layout) * 2)

    return publish_boxes(
        workspace,
        list(entries.values()),
        report,
        has_predictions=predictions is not None,
        iou_threshold=iou_threshold,
        limits=limits,
        progress=halfway if progress else None,
        missing_hint="put it in JPEGImages/ or beside its .xml file",
    )


def _read_annotation(
    xml: Path,
    root: Path,
    folder: Path,
    splits: dict[str, str],
    split: str | None,
    entries: dict[str, ImageEntry],
    report: DetectionImportReport,
) -> ImageEntry | None:
    """One XML file as an image entry with its boxes, or None (the reason is in the report)."""
    where = xml.relative_to(folder).as_posix()
    try:
        tree = ElementTree.parse(xml)
    except (ElementTree.ParseError, OSError) as error:
        report.reject(
            where,
            f"not a readable XML file ({error_text(error, xml)}); skipped: fix it, or export it "
            "again (entity declarations are not read)",
        )
        return None
    annotation = tree.getroot()
    if annotation.tag != "annotation":
        report.reject(
            where,
            f"root element is <{annotation.tag}>, not <annotation>; skipped: give Pascal VOC "
            "annotation files",
        )
        return None
    file = _voc_image_file(xml, root, _text(annotation, "filename"))
    source = (
        file.relative_to(folder).as_posix()
        if file is not None
        else (_text(annotation, "filename") or where)
    )
    key = file.stem if file is not None else xml.stem
    if key in entries:
        report.reject(
            where, f"a second annotation file for image {key!r}; skipped: keep one per image"
        )
        return None
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
    image = ImageEntry(
        key=key, source=source, file=file, split=splits.get(key, split), declared_size=declared
    )
    for number, obj in enumerate(annotation.findall("object"), start=1):
        origin = f"{where} object {number}"
        try:
            name = _text(obj, "name")
            if not name:
                raise BadAnnotation("object has no <name>", "add the class name in <name>")
            bndbox = obj.find("bndbox")
            if bndbox is None:
                raise BadAnnotation(
                    "object has no <bndbox>", "add a <bndbox> with xmin, ymin, xmax and ymax"
                )
            xmin, ymin, xmax, ymax = (
                parse_number(_text(bndbox, t)) for t in ("xmin", "ymin", "xmax", "ymax")
            )
            if xmax <= xmin - 1 or ymax <= ymin - 1:
                raise BadAnnotation(
                    f"box has zero or negative size (xmin {xmin:g}, xmax {xmax:g}, "
                    f"ymin {ymin:g}, ymax {ymax:g})",
                    "xmax and ymax must be at least xmin and ymin",
                )
        except BadAnnotation as error:
            report.reject(origin, error.skipped())
            continue
        image.add_box(origin, name, (xmin - 1, ymin - 1, xmax, ymax))
    return image


def _prediction_category(record: dict[str, Any]) -> str:
    """A prediction's class: the name in ``category`` (or in ``category_id``)."""
    for name_key in ("category", "category_id"):
        value = record.get(name_key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise BadAnnotation("needs a category name ('category')", "add the class name")


def _voc_layout(folder: Path) -> list[tuple[Path, Path]]:
    """(xml file, folder its images are relative to) for both VOC layouts."""
    annotations = folder / "Annotations"
    if annotations.is_dir():
        image_root = folder / "JPEGImages" if (folder / "JPEGImages").is_dir() else folder
        return [(xml, image_root) for xml in sorted(annotations.rglob("*.xml"))]
    return [
        (xml, xml.parent)
        for xml in sorted(folder.rglob("*.xml"))
        if not is_hidden(xml.relative_to(folder))
    ]


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
        found = find_image_file(root, filename)
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
