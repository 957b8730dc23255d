"""Label Studio tasks out and a Label Studio export back in, without a server.

The exported tasks are fed back as Label Studio's own JSON export would hold them once a
labeller accepted the pre-annotations (``annotations[].result`` = the prediction's result);
the server test (tests/app/test_label_studio_server.py) does the same through a real server.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import pandas as pd
import pytest

from shoal.cli import main
from shoal.ingest.images import import_source
from shoal.ingest.label_studio import LABELS_VERSION, PREDICTIONS_VERSION, import_label_studio
from shoal.ingest.publish import IngestError
from shoal.store import StoreError, Workspace
from shoal.store.collections import Collections
from shoal.workflows.exports import export_label_studio
from tests.shoal.ingest.detection_fixture import DETECTION, import_street

BOX = ["x0", "y0", "x1", "y1"]


@pytest.fixture
def street(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    import_street(ws)
    return ws


@pytest.fixture
def pictures(tmp_path: Path, sample_images: Path) -> Workspace:
    """An image-level dataset: the bundled sample's test split, labelled by folder."""
    ws = Workspace(tmp_path / "ws")
    import_source(ws, sample_images / "test", dataset="pictures")
    return ws


def accepted(tasks: list[dict[str, Any]], *, relabel: dict[str, str] | None = None) -> list[Any]:
    """``tasks`` as Label Studio exports them after a labeller accepted each task's
    "shoal labels" pre-annotation (choosing ``relabel[sample_id]`` instead where given)."""
    exported = []
    for number, task in enumerate(json.loads(json.dumps(tasks)), start=1):
        results = [
            p["result"] for p in task.get("predictions", []) if p["model_version"] == LABELS_VERSION
        ]
        result = results[0] if results else []
        new = (relabel or {}).get(task["data"]["sample_id"])
        if new:
            result = [r | {"value": {"choices": [new]}} for r in result]
        annotation = {"id": 100 + number, "result": result, "was_cancelled": False}
        exported.append(task | {"id": number, "annotations": [annotation]})
    return exported


def write(path: Path, payload: Any) -> Path:
    path.write_text(json.dumps(payload))
    return path


def test_detection_tasks_carry_labels_and_predictions_as_percent_boxes(
    street: Workspace, tmp_path: Path
) -> None:
    ds = street.open("street")
    samples = ds.samples()
    written = export_label_studio(ds, samples["sample_id"], tmp_path / "tasks.json")
    tasks = json.loads(written["tasks"].read_text())
    objects = ds.objects()
    assert [t["data"]["sample_id"] for t in tasks] == samples["sample_id"].astype(str).tolist()
    for task, row in zip(tasks, samples.itertuples(index=False), strict=True):
        url = urlsplit(task["data"]["image"])
        assert url.path == "/data/local-files/"
        relative = unquote(parse_qs(url.query)["d"][0])
        assert (ds.root / relative).read_bytes() == ds.image_file(row.path).read_bytes()
        assert task["data"]["label"] == row.label
        versions = {p["model_version"]: p for p in task["predictions"]}
        mine = objects[objects["sample_id"] == row.sample_id]
        for kind, version in (("label", LABELS_VERSION), ("inference", PREDICTIONS_VERSION)):
            boxes = mine[mine["kind"] == kind].sort_values("object_id")
            if not len(boxes):
                assert version not in versions
                continue
            result = sorted(versions[version]["result"], key=lambda r: r["id"])
            assert [r["id"] for r in result] == boxes["object_id"].tolist()
            assert {r["type"] for r in result} == {"rectanglelabels"}
            pixels = [
                [
                    r["value"]["x"] / 100 * r["original_width"],
                    r["value"]["y"] / 100 * r["original_height"],
                    (r["value"]["x"] + r["value"]["width"]) / 100 * r["original_width"],
                    (r["value"]["y"] + r["value"]["height"]) / 100 * r["original_height"],
                ]
                for r in result
            ]
            np.testing.assert_allclose(pixels, boxes[BOX].to_numpy(), atol=1e-6)
            assert [r["value"]["rectanglelabels"] for r in result] == [
                [c] for c in boxes["category"]
            ]
            if kind == "inference":
                assert [r["score"] for r in result] == pytest.approx(boxes["score"].tolist())
    config = ET.fromstring(written["config"].read_text())
    labels = config.find("RectangleLabels")
    assert labels is not None and labels.get("toName") == config.find("Image").get("name")
    assert {e.get("value") for e in labels} == set(objects["category"])


def test_a_detection_round_trip_gives_the_same_images_boxes_and_matches(
    street: Workspace, tmp_path: Path
) -> None:
    ds = street.open("street")
    tasks = json.loads(
        export_label_studio(ds, ds.samples()["sample_id"], tmp_path / "t.json")["tasks"].read_text()
    )
    export = write(tmp_path / "project-1.json", accepted(tasks))
    report = import_label_studio(street, export, images=ds.root, dataset="back")
    assert report.rejected == [] and report.imported == 4
    back = street.open("back")
    before, after = ds.samples().set_index("sample_id"), back.samples().set_index("sample_id")
    assert sorted(after.index) == sorted(before.index)
    assert after.loc[before.index, "path"].tolist() == before["path"].tolist()  # same bytes
    assert after.loc[before.index, "label"].tolist() == before["label"].tolist()
    old, new = ds.objects(), back.objects()
    for kind in ("label", "inference"):
        a = old[old["kind"] == kind].sort_values(["sample_id", "category", "x0", "y0"])
        b = new[new["kind"] == kind].sort_values(["sample_id", "category", "x0", "y0"])
        assert b["category"].tolist() == a["category"].tolist()
        np.testing.assert_allclose(b[BOX].to_numpy(), a[BOX].to_numpy(), atol=1e-6)
    assert report.matching is not None
    assert {k: report.matching[k] for k in ("tp", "fp", "fn")} == {"tp": 10, "fp": 5, "fn": 21}


def test_an_image_level_round_trip_keeps_ids_and_takes_the_labellers_choices(
    pictures: Workspace, tmp_path: Path
) -> None:
    ds = pictures.open("pictures")
    samples = ds.samples()
    written = export_label_studio(ds, samples["sample_id"], tmp_path / "tasks.json")
    tasks = json.loads(written["tasks"].read_text())
    assert all(
        t["predictions"][0]["result"][0]["value"]["choices"] == [t["data"]["label"]] for t in tasks
    )
    choices = ET.fromstring(written["config"].read_text()).find("Choices")
    assert choices is not None
    assert {c.get("value") for c in choices} == set(samples["label"])
    first = str(samples["sample_id"].iloc[0])
    other = next(c for c in sorted(set(samples["label"])) if c != samples["label"].iloc[0])
    export = write(tmp_path / "project.json", accepted(tasks, relabel={first: other}))
    report = import_label_studio(pictures, export, images=ds.root, dataset="relabelled")
    assert report.rejected == [] and report.imported == len(samples)
    back = pictures.open("relabelled").samples().set_index("sample_id")
    expected = samples.set_index("sample_id")["label"].copy()
    expected[first] = other
    pd.testing.assert_series_equal(back.loc[expected.index, "label"], expected)
    assert back.loc[first, "previous_label"] == samples["label"].iloc[0]
    assert back.loc[expected.index, "path"].tolist() == samples["path"].tolist()


def test_url_prefix_and_a_document_root_that_does_not_hold_the_images(
    pictures: Workspace, tmp_path: Path
) -> None:
    ds = pictures.open("pictures")
    ids = ds.samples()["sample_id"][:2]
    tasks = json.loads(
        export_label_studio(ds, ids, tmp_path / "a.json", url_prefix="http://files.example/ds/")[
            "tasks"
        ].read_text()
    )
    assert tasks[0]["data"]["image"].startswith("http://files.example/ds/images/")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(StoreError, match="not under the document root"):
        export_label_studio(ds, ids, tmp_path / "b.json", document_root=elsewhere)
    assert not (tmp_path / "b.json").exists()


def test_bad_exports_are_refused_or_skipped_with_the_task_and_what_to_do(
    street: Workspace, tmp_path: Path
) -> None:
    ds = street.open("street")
    with pytest.raises(IngestError, match="shoal import-coco"):
        import_label_studio(street, DETECTION / "detection.json", images=DETECTION, dataset="a")
    minimal = write(tmp_path / "min.json", [{"image": "x.jpg", "label": "cat"}])
    with pytest.raises(IngestError, match="JSON-MIN"):
        import_label_studio(street, minimal, images=tmp_path, dataset="a")
    tasks = accepted(
        json.loads(
            export_label_studio(ds, ds.samples()["sample_id"], tmp_path / "t.json")[
                "tasks"
            ].read_text()
        )
    )
    tasks[0]["data"] = {"text": "no image here"}
    tasks[1]["data"]["image"] = "/data/local-files/?d=images/missing.jpg"
    tasks[2]["annotations"][0]["result"][0]["value"]["rotation"] = 30
    tasks[3]["annotations"][0]["result"].append({"type": "polygonlabels", "value": {}})
    report = import_label_studio(
        street, write(tmp_path / "bad.json", tasks), images=ds.root, dataset="b"
    )
    reasons = {r.file: r.reason for r in report.rejected}
    assert "no image reference in data" in reasons["bad.json task 1"]
    assert "not found under" in reasons["bad.json task 2"]
    assert any("rotated by 30" in v and "task 3" in k for k, v in reasons.items())
    assert any("'polygonlabels' is not imported" in v for v in reasons.values())
    assert report.imported == 2
    nothing = write(tmp_path / "none.json", tasks[:2])
    with pytest.raises(
        IngestError, match="no usable task in none.json, so nothing was imported: none.json task 1"
    ):
        import_label_studio(street, nothing, images=ds.root, dataset="c")


def test_the_cli_exports_a_collection_and_imports_the_export_back(
    street: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = street.open("street")
    ids = ds.samples()["sample_id"].astype(str).tolist()[:2]
    Collections(ds).create("busy", ids)
    out = tmp_path / "busy.json"
    base = ["--workspace", str(street.root)]
    assert (
        main(
            [
                "collections",
                "export",
                "street",
                "busy",
                "--out",
                str(out),
                "--format",
                "label-studio",
                *base,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"LOCAL_FILES_DOCUMENT_ROOT={ds.root.resolve()}" in printed
    assert out.with_name("busy.config.xml").is_file()
    export = write(tmp_path / "project.json", accepted(json.loads(out.read_text())))
    assert (
        main(["import", str(export), "--dataset", "busy-back", "--images", str(ds.root), *base])
        == 0
    )
    assert sorted(street.open("busy-back").samples()["sample_id"]) == sorted(ids)
