"""Pascal VOC import: both folder layouts, 1-based corners, splits, and broken files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shoal.cli import main as cli_main
from shoal.ingest.publish import IngestError
from shoal.ingest.voc import import_voc
from shoal.store import Workspace
from tests.shoal.ingest.detection_fixture import DETECTION, by_origin


def test_voc_folder_with_annotations_and_jpegimages(workspace: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "VOC"
    shutil.copytree(DETECTION / "labelme_voc", folder)
    (folder / "ImageSets" / "Main").mkdir(parents=True)
    (folder / "ImageSets" / "Main" / "train.txt").write_text("2011_000003\n2011_000006\n")
    (folder / "ImageSets" / "Main" / "val.txt").write_text("2011_000025\n")
    predictions = [
        {
            "image_id": "2011_000025",
            "category": "bus",
            "bbox": [83, 19.384615, 352, 354],
            "score": 0.9,
        },  # = bus 1
        {
            "image_id": "2011_000025.jpg",
            "category": "car",
            "bbox": [0, 98, 107, 184],
            "score": 0.8,
        },  # on bus 2
        {"image_id": "2011_000099", "category": "bus", "bbox": [0, 0, 5, 5], "score": 0.5},
    ]
    (tmp_path / "preds.json").write_text(json.dumps(predictions))
    report = import_voc(workspace, folder, dataset="voc", predictions=tmp_path / "preds.json")
    assert report.imported == 3
    assert report.objects == {"label": 9, "inference": 2}
    assert report.categories == {"bus": 2, "car": 1, "person": 6}
    assert report.matching == {"tp": 1, "fp": 1, "fn": 8, "iou_threshold": 0.5}
    assert [(r.file, "unknown image_id '2011_000099'" in r.reason) for r in report.rejected] == [
        ("preds.json prediction 2", True)
    ]
    assert report.splits == {"train": 2, "val": 1}
    objects = workspace.open("voc").objects()
    rows = by_origin(objects)
    # <xmin>84.0</xmin> <ymin>20.38..</ymin> <xmax>435.0</xmax> <ymax>373.38..</ymax>: 1-based corners.
    bus = rows["Annotations/2011_000025.xml object 1"]
    assert [bus.x0, bus.y0, bus.x1, bus.y1] == pytest.approx([83.0, 19.384615, 435.0, 373.384615])
    assert bus.status == "tp" and bus.iou == pytest.approx(1.0, abs=1e-4)
    samples = workspace.open("voc").samples().set_index("source")
    assert samples.loc["JPEGImages/2011_000006.jpg", ["n_labels", "label", "split"]].tolist() == [
        4,
        "person",
        "train",
    ]


def test_voc_xml_beside_images_and_broken_files(workspace: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "flat"
    folder.mkdir()
    for stem in ("2011_000003", "2011_000006"):
        shutil.copy(DETECTION / "labelme_voc" / "JPEGImages" / f"{stem}.jpg", folder)
        shutil.copy(DETECTION / "labelme_voc" / "Annotations" / f"{stem}.xml", folder)
    xml = (folder / "2011_000006.xml").read_text()
    xml = xml.replace("<xmin>395.0</xmin>", "<xmin>oops</xmin>", 1)  # 4th object
    xml = xml.replace("<name>person</name>", "<name></name>", 1)  # 1st object
    (folder / "2011_000006.xml").write_text(xml)
    (folder / "torn.xml").write_text("<annotation><object>")
    (folder / "lonely.xml").write_text("<annotation><filename>lonely.jpg</filename></annotation>")
    report = import_voc(workspace, folder, dataset="flat", split="test")
    reasons = {r.file: r.reason for r in report.rejected}
    assert set(reasons) == {
        "2011_000006.xml object 1",
        "2011_000006.xml object 4",
        "torn.xml",
        "lonely.jpg",
    }
    assert "no <name>" in reasons["2011_000006.xml object 1"]
    assert "not a number" in reasons["2011_000006.xml object 4"]
    assert "not a readable XML file" in reasons["torn.xml"]
    assert "image file not found" in reasons["lonely.jpg"]
    assert report.imported == 2 and report.objects == {"label": 4, "inference": 0}
    assert report.splits == {"test": 2}


def test_voc_without_xml_files_is_refused(workspace: Workspace, tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no VOC .xml annotation files"):
        import_voc(workspace, tmp_path, dataset="none")


def test_cli_import_voc_prints_json_and_refuses_a_missing_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = str(tmp_path / "ws")
    code = cli_main(
        [
            "import-voc",
            str(DETECTION / "labelme_voc"),
            "--dataset",
            "v",
            "--json",
            "--workspace",
            ws,
        ]
    )
    payload = json.loads(capsys.readouterr().out)
    assert (
        code == 0
        and payload["objects"] == {"label": 9, "inference": 0}
        and payload["matching"] is None
    )

    code = cli_main(["import-voc", str(tmp_path / "nowhere"), "--dataset", "w", "--workspace", ws])
    assert code == 2 and "is not a folder of VOC annotations" in capsys.readouterr().err
