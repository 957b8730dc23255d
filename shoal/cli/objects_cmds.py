"""Detection commands: import-coco and import-voc (boxes, predictions, TP/FP/FN)."""

from __future__ import annotations

import argparse
import functools
from typing import Any

from shoal.cli._util import (
    ProgressLine,
    add_command,
    print_counts,
    print_items,
    print_json,
    workspace,
)


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    add = functools.partial(add_command, subparsers, common)

    p = add(
        "import-coco",
        "Create a detection dataset from a COCO annotation file and its images.",
        cmd_import_coco,
    )
    p.add_argument("annotations", help="COCO JSON with images, categories and annotations (bbox)")
    p.add_argument("--images", required=True, help="folder the images' file_name is relative to")
    _import_options(
        p,
        predictions="detections in COCO results format (image_id, category_id, bbox, score)",
        split="split for every image (e.g. val)",
    )

    p = add(
        "import-voc",
        "Create a detection dataset from Pascal VOC XML (Annotations/ + JPEGImages/).",
        cmd_import_voc,
    )
    p.add_argument(
        "folder",
        help="VOC folder (Annotations/ and JPEGImages/) or a folder of images with .xml beside them",
    )
    _import_options(
        p,
        predictions="detections as COCO results JSON; image_id = file stem, category = name",
        split="split for images not listed in ImageSets/Main/",
    )


def _import_options(parser: argparse.ArgumentParser, *, predictions: str, split: str) -> None:
    """The options import-coco and import-voc share (``predictions`` and ``split``: their help)."""
    parser.add_argument("--dataset", required=True, help="name of the new dataset")
    parser.add_argument("--predictions", help=predictions)
    parser.add_argument("--split", help=split)
    parser.add_argument(
        "--iou",
        type=float,
        default=0.5,
        help="IoU for a prediction to match a label (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print the import report as JSON")


def cmd_import_coco(args: argparse.Namespace) -> int:
    from shoal.ingest.coco import import_coco

    report = import_coco(
        workspace(args),
        args.annotations,
        images=args.images,
        dataset=args.dataset,
        predictions=args.predictions,
        split=args.split,
        iou_threshold=args.iou,
        progress=ProgressLine("import", unit="images"),
    )
    print_report(report.to_dict(), as_json=args.json)
    return 0


def cmd_import_voc(args: argparse.Namespace) -> int:
    from shoal.ingest.voc import import_voc

    report = import_voc(
        workspace(args),
        args.folder,
        dataset=args.dataset,
        predictions=args.predictions,
        split=args.split,
        iou_threshold=args.iou,
        progress=ProgressLine("import", unit="steps"),
    )
    print_report(report.to_dict(), as_json=args.json)
    return 0


def print_report(report: dict[str, Any], *, as_json: bool) -> None:
    """The detection import report: images, boxes, TP/FP/FN, then every skipped or clipped box."""
    if as_json:
        print_json(report)
        return
    objects = report.get("objects") or {}
    print(
        f"imported {report['imported']:,} images with {objects.get('label', 0):,} labelled and "
        f"{objects.get('inference', 0):,} predicted boxes into dataset {report['dataset']!r} from {report['source']}"
    )
    print_counts("splits", report.get("splits"))
    print_counts("labelled boxes", report.get("categories"))
    matching = report.get("matching")
    if matching:
        print(
            f"  predictions at IoU >= {matching['iou_threshold']:g}: TP {matching['tp']:,}, "
            f"FP {matching['fp']:,}, FN {matching['fn']:,}"
        )
    print_items("rejected", report.get("rejected"), noun="item")
    print_items("adjusted", report.get("adjusted"), noun="item")
