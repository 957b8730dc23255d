"""`shoal extract` end to end with a model factory file written by the test (random weights)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from shoal.cli import main
from shoal.embedding.backends import openvino_available
from shoal.ingest.images import import_source
from shoal.store import Workspace

FACTORY = """
import torch, torchvision

def build_model():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10)

PREPROCESSING = {"size": 112, "resize": "stretch"}
"""


@pytest.fixture
def dataset(sample_images: Path, tmp_path: Path) -> Workspace:
    upload = tmp_path / "upload"
    for image in sorted(sample_images.glob("test/*/*.jpg"))[::12]:
        (upload / image.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, upload / image.parent.name / image.name)
    workspace = Workspace(tmp_path / "ws")
    import_source(workspace, upload, dataset="mine")
    (tmp_path / "my_model.py").write_text(FACTORY)
    return workspace


def test_extract_with_a_factory_file(
    dataset: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = f"{tmp_path / 'my_model.py'}:build_model"
    ws = str(dataset.root)
    assert (
        main(
            [
                "extract",
                "mine",
                "--model",
                spec,
                "--embedding",
                "resnet",
                "--json",
                "--workspace",
                ws,
            ]
        )
        == 0
    )
    written = json.loads(capsys.readouterr().out)
    assert written[0]["dim"] == 512 and written[0]["preprocessing"]["layer"] == "fc:input"
    ds = dataset.open("mine")
    first = np.array(ds.load_embeddings("resnet").vectors)
    assert first.shape == (len(ds.samples()), 512) and np.isfinite(first).all()

    assert (
        main(
            [
                "extract",
                "mine",
                "--model",
                spec,
                "--layer",
                "layer4",
                "--embedding",
                "l4",
                "--workspace",
                ws,
            ]
        )
        == 0
    )
    assert ds.load_embeddings("l4").info.dim == 512  # spatial map, average-pooled
    assert (
        main(["extract", "mine", "--model", spec, "--embedding", "again", "--workspace", ws]) == 0
    )
    np.testing.assert_allclose(
        np.array(ds.load_embeddings("again").vectors), first, rtol=1e-5, atol=1e-6
    )
    # A short run stays on torch under "auto"; the set says so.
    assert ds.load_embeddings("resnet").info.preprocessing["backend"] == "torch"


@pytest.mark.skipif(not openvino_available(), reason="needs OpenVINO on x86-64")
def test_extract_on_openvino_records_it_and_gives_torch_vectors(
    dataset: Workspace, tmp_path: Path
) -> None:
    spec = f"{tmp_path / 'my_model.py'}:build_model"
    ws = str(dataset.root)
    for backend in ("torch", "openvino"):
        command = ["extract", "mine", "--model", spec, "--embedding", backend, "--workspace", ws]
        assert main([*command, "--backend", backend]) == 0
    ds = dataset.open("mine")
    torch_set, openvino_set = ds.load_embeddings("torch"), ds.load_embeddings("openvino")
    assert openvino_set.info.preprocessing["backend"] == "openvino"
    assert openvino_set.info.preprocessing["precision"] == "fp32"
    np.testing.assert_allclose(
        np.array(openvino_set.vectors), np.array(torch_set.vectors), rtol=1e-3, atol=1e-4
    )


def test_wrong_layer_lists_valid_names(
    dataset: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = f"{tmp_path / 'my_model.py'}:build_model"
    code = main(
        ["extract", "mine", "--model", spec, "--layer", "layer5", "--workspace", str(dataset.root)]
    )
    err = capsys.readouterr().err
    assert code == 2 and "layer5" in err and "layer4" in err
    assert dataset.open("mine").embedding_names() == []


DETECTOR = """
import torch, torchvision

def build_model():
    torch.manual_seed(0)
    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=21)
"""


@pytest.mark.slow
def test_extract_detector_gives_one_vector_per_image_and_per_box(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shoal.ingest.coco import import_coco

    fixture = Path(__file__).resolve().parents[2] / "fixtures" / "detection"
    workspace = Workspace(tmp_path / "ws")
    import_coco(
        workspace,
        fixture / "detection.json",
        images=fixture,
        dataset="street",
        predictions=fixture / "predictions.json",
    )
    (tmp_path / "detector.py").write_text(DETECTOR)
    spec = f"{tmp_path / 'detector.py'}:build_model"
    code = main(
        [
            "extract",
            "street",
            "--model",
            spec,
            "--task",
            "detection",
            "--embedding",
            "frcnn",
            "--json",
            "--workspace",
            str(workspace.root),
        ]
    )
    assert code == 0, capsys.readouterr().err
    ds = workspace.open("street")
    images = ds.load_embeddings("frcnn")
    boxes = ds.load_embeddings("frcnn-objects", level="object")
    objects = ds.objects()
    assert len(images.ids) == len(ds.samples()) == 4
    assert (
        sorted(boxes.ids) == sorted(objects["object_id"].astype(str)) and len(boxes.ids) == 31 + 15
    )
    assert (
        boxes.info.level == "object" and boxes.info.dim == 1024 and np.isfinite(boxes.vectors).all()
    )
