"""The detection fixture shared by the COCO and VOC tests.

tests/fixtures/detection (built by scripts/make_detection_example.py) holds four real photos with
31 labelled boxes and 15 hand-made predictions whose outcome was counted by hand.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from shoal.store import Workspace

DETECTION = Path(__file__).resolve().parents[2] / "fixtures" / "detection"


def import_street(workspace: Workspace) -> Workspace:
    """The fixture imported as dataset 'street' with its predictions (not embedded)."""
    from shoal.ingest.coco import import_coco

    import_coco(
        workspace,
        DETECTION / "detection.json",
        images=DETECTION,
        dataset="street",
        predictions=DETECTION / "predictions.json",
    )
    return workspace


def by_origin(objects: pd.DataFrame) -> dict[str, Any]:
    """The objects table's rows by their ``origin`` ("preds.json prediction 3", ...)."""
    return {row.origin: row for row in objects.itertuples()}


def write_coco(
    tmp_path: Path, extra_annotations: list, *, extra_images: list | None = None
) -> Path:
    """A copy of labelme's COCO file with extra (mostly broken) annotations and images."""
    folder = tmp_path / "upload"
    shutil.copytree(DETECTION / "labelme_coco" / "JPEGImages", folder / "JPEGImages")
    payload = json.loads((DETECTION / "labelme_coco" / "annotations.json").read_text())
    payload["annotations"] += extra_annotations
    payload["images"] += extra_images or []
    (folder / "annotations.json").write_text(json.dumps(payload))
    return folder
