"""Own-model extraction for two-stage detectors: per image, per detection and per label box.

Random weights (no download); the classifier weights are spread out so that scores differ and a
threshold keeps a different number of boxes per image. Inputs are real photos from scikit-image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from skimage import data
from torch import nn
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops

from shoal.embedding.extract import (
    DetectionEmbeddings,
    extract_detection,
    extract_embeddings,
    resolve_layer,
)
from shoal.embedding.extract.detection import image_tensor

LABEL_BOXES = [
    np.array([[140.0, 20.0, 330.0, 240.0], [0.0, 250.0, 200.0, 511.0]]),  # astronaut: face, flag
    np.zeros((0, 4)),  # chelsea: no labels
    np.array([[80.0, 40.0, 520.0, 330.0]]),  # coffee: cup
]


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [
        Image.fromarray(data.astronaut()),
        Image.fromarray(data.chelsea()),
        Image.fromarray(data.coffee()),
    ]


def _detector(builder, photos: list[Image.Image], *, score_thresh: float, **kwargs) -> nn.Module:
    """A random-weight detector whose activations neither vanish nor saturate: batch norm
    statistics are measured on the photos, and class scores are spread out so that a threshold
    keeps a different number of boxes per image."""
    torch.manual_seed(0)
    model = builder(
        weights=None,
        weights_backbone=None,
        num_classes=5,
        box_score_thresh=score_thresh,
        rpn_pre_nms_top_n_test=300,  # fewer proposals than the default 1000: a faster box head
        rpn_post_nms_top_n_test=300,
        **kwargs,
    ).eval()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a plain average over the calibration pass
        image_list, _ = model.transform([image_tensor(p) for p in photos])
        model.backbone.train()
        model.backbone(image_list.tensors)
        model.backbone.eval()
    nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.2)
    return model


@pytest.fixture(scope="module")
def mobilenet_detector(photos: list[Image.Image]) -> nn.Module:
    return _detector(
        torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn,
        photos,
        score_thresh=0.3,
        min_size=160,
        max_size=240,
    )


def _oracle_check(model: nn.Module, photos: list[Image.Image], result: DetectionEmbeddings) -> None:
    """Every detection's vector is the ROI-head feature of a proposal whose box, decoded for the
    detection's class and mapped back to the image, is the detection's box."""
    inferences = result.inferences
    roi = model.roi_heads
    for image, photo in enumerate(photos):
        tensor = image_tensor(photo)
        with torch.inference_mode():
            image_list, _ = model.transform([tensor])
            features = model.backbone(image_list.tensors)
            proposals, _ = model.rpn(image_list, features)
            box_features = roi.box_head(
                roi.box_roi_pool(features, proposals, image_list.image_sizes)
            )
            _, box_regression = roi.box_predictor(box_features)
            decoded = roi.box_coder.decode(box_regression, proposals)
            decoded = box_ops.clip_boxes_to_image(decoded.reshape(-1, 4), image_list.image_sizes[0])
            decoded = resize_boxes(decoded, image_list.image_sizes[0], list(tensor.shape[-2:]))
            decoded = decoded.reshape(len(box_features), -1, 4).numpy()
        rows = box_features.numpy()
        for row in np.flatnonzero(inferences.image_index == image):
            matches = np.flatnonzero((rows == inferences.vectors[row]).all(axis=1))
            assert len(matches) >= 1, "vector is not any proposal's ROI feature"
            category = int(inferences.categories[row])
            boxes = decoded[matches, category]
            assert (boxes == inferences.boxes[row]).all(axis=1).any(), "box not decoded from it"


def test_detections_match_torchvision_and_carry_their_roi_vectors(
    mobilenet_detector: nn.Module, photos: list[Image.Image]
) -> None:
    result = extract_detection(mobilenet_detector, photos, batch_size=3, device="cpu")
    with torch.inference_mode():  # the photos differ in size, so each runs alone
        expected = [mobilenet_detector([image_tensor(p)])[0] for p in photos]

    counts = [len(e["boxes"]) for e in expected]
    assert len(set(counts)) > 1 and min(counts) > 0  # the threshold keeps different numbers
    assert np.unique(result.inferences.vectors, axis=0).shape[0] > len(result.inferences) // 2
    assert np.bincount(result.inferences.image_index, minlength=3).tolist() == counts
    for image, output in enumerate(expected):
        mine = result.inferences.image_index == image
        np.testing.assert_array_equal(result.inferences.boxes[mine], output["boxes"].numpy())
        np.testing.assert_array_equal(result.inferences.scores[mine], output["scores"].numpy())
        np.testing.assert_array_equal(result.inferences.categories[mine], output["labels"].numpy())
    assert result.inferences.vectors.shape == (sum(counts), 1024)
    assert result.image_vectors.shape == (3, 3 * 256)  # FPN levels "0", "1", "pool"
    assert result.labels is None and result.box_layer == "roi_heads.box_head"
    _oracle_check(mobilenet_detector, photos, result)

    again = extract_detection(mobilenet_detector, photos, batch_size=3, device="cpu")
    np.testing.assert_array_equal(again.inferences.vectors, result.inferences.vectors)
    np.testing.assert_array_equal(again.image_vectors, result.image_vectors)
    frame = result.inferences.to_frame()
    assert list(frame.columns) == ["image_index", "x1", "y1", "x2", "y2", "score", "category"]
    assert len(frame) == sum(counts)


def test_label_boxes_get_one_roi_vector_each(
    mobilenet_detector: nn.Module, photos: list[Image.Image]
) -> None:
    result = extract_detection(
        mobilenet_detector,
        photos,
        label_boxes=LABEL_BOXES,
        batch_size=2,
        with_detections=False,
        device="cpu",
    )
    labels = result.labels
    assert labels is not None and len(labels) == 3
    assert labels.image_index.tolist() == [0, 0, 2] and labels.vectors.shape == (3, 1024)
    np.testing.assert_array_equal(labels.boxes, np.concatenate(LABEL_BOXES).astype(np.float32))
    assert len(result.inferences) == 0

    model = mobilenet_detector
    for image, boxes in ((0, LABEL_BOXES[0]), (2, LABEL_BOXES[2])):
        tensor = image_tensor(photos[image])
        with torch.inference_mode():
            image_list, _ = model.transform([tensor])
            features = model.backbone(image_list.tensors)
            scaled = resize_boxes(
                torch.tensor(boxes, dtype=torch.float32),
                list(tensor.shape[-2:]),
                image_list.image_sizes[0],
            )
            pooled = model.roi_heads.box_roi_pool(features, [scaled], image_list.image_sizes)
            expected = model.roi_heads.box_head(pooled).numpy()
        np.testing.assert_allclose(
            labels.vectors[labels.image_index == image], expected, rtol=1e-4, atol=1e-5
        )


def test_image_vectors_pool_levels_over_the_unpadded_area(
    mobilenet_detector: nn.Module, photos: list[Image.Image]
) -> None:
    vectors = extract_embeddings(mobilenet_detector, photos, task="detection", device="cpu")
    assert resolve_layer(mobilenet_detector, task="detection") == "backbone"
    coarsest = extract_detection(
        mobilenet_detector,
        photos,
        feature_level="pool",
        with_detections=False,
        batch_size=3,
        device="cpu",
    )
    assert vectors.shape == (3, 768) and coarsest.image_vectors.shape == (3, 256)
    np.testing.assert_array_equal(vectors[:, -256:], coarsest.image_vectors)

    # The oracle: the chelsea photo alone; its "0" level averaged over the image's own area.
    tensor = image_tensor(photos[1])
    with torch.inference_mode():
        image_list, _ = mobilenet_detector.transform([tensor])
        fmap = mobilenet_detector.backbone(image_list.tensors)["0"][0]
    height, width = image_list.image_sizes[0]
    padded_height, padded_width = image_list.tensors.shape[-2:]
    valid = fmap[
        :,
        : -(-height * fmap.shape[1] // padded_height),
        : -(-width * fmap.shape[2] // padded_width),
    ]
    alone = extract_embeddings(mobilenet_detector, photos[1:2], task="detection", device="cpu")
    np.testing.assert_allclose(alone[0, :256], valid.mean(dim=(1, 2)).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown feature_level '7'"):
        extract_detection(mobilenet_detector, photos[:1], feature_level="7", device="cpu")


def test_named_detector_layer_and_errors(
    mobilenet_detector: nn.Module, photos: list[Image.Image]
) -> None:
    stage = extract_embeddings(
        mobilenet_detector,
        photos[:2],
        task="detection",
        layer="backbone.body",
        batch_size=2,
        device="cpu",
    )
    assert stage.shape == (2, 960)
    with pytest.raises(ValueError, match="per-box layer"):
        extract_embeddings(
            mobilenet_detector,
            photos[:2],
            task="detection",
            layer="roi_heads.box_head",
            device="cpu",
        )
    with pytest.raises(TypeError, match="not a torchvision two-stage detector"):
        extract_detection(torchvision.models.resnet18(), photos[:1], device="cpu")
    with pytest.raises(ValueError, match="label_boxes has 1 entries for 3 images"):
        extract_detection(mobilenet_detector, photos, label_boxes=LABEL_BOXES[:1], device="cpu")
    with pytest.raises(ValueError, match=r"must be \(n_boxes, 4\)"):
        extract_detection(
            mobilenet_detector, photos[:1], label_boxes=[np.zeros((2, 3)) + 1], device="cpu"
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    "builder",
    [
        torchvision.models.detection.fasterrcnn_resnet50_fpn,
        torchvision.models.detection.maskrcnn_resnet50_fpn,
    ],
)
def test_resnet50_fpn_detectors(builder, photos: list[Image.Image]) -> None:
    model = _detector(builder, photos, score_thresh=0.3, min_size=256, max_size=384)
    result = extract_detection(model, photos, label_boxes=LABEL_BOXES, batch_size=3, device="cpu")
    with torch.inference_mode():
        expected = [model([image_tensor(p)])[0] for p in photos]
    counts = [len(e["boxes"]) for e in expected]
    assert np.bincount(result.inferences.image_index, minlength=3).tolist() == counts
    for image, output in enumerate(expected):
        mine = result.inferences.image_index == image
        np.testing.assert_array_equal(result.inferences.boxes[mine], output["boxes"].numpy())
    assert result.image_vectors.shape == (3, 5 * 256)
    assert result.inferences.vectors.shape == (sum(counts), 1024)
    assert result.labels is not None and result.labels.vectors.shape == (3, 1024)
    _oracle_check(model, photos, result)


def test_detectors_run_on_torch_and_say_so_when_openvino_is_asked_for(
    mobilenet_detector: nn.Module, photos: list[Image.Image]
) -> None:
    from shoal.embedding.backends import openvino_available

    if not openvino_available():
        pytest.skip("needs OpenVINO on x86-64")
    used: dict[str, str] = {}
    with pytest.warns(RuntimeWarning, match="OpenVINO does not run detectors"):
        result = extract_detection(
            mobilenet_detector, photos[:1], backend="openvino", details=used, device="cpu"
        )
    assert used == {"backend": "torch", "precision": "fp32"}
    assert len(result.image_vectors) == 1
