"""Embed a stored dataset with the user's own model (classification, segmentation, detection).

A thin orchestrator over ``shoal.embedding.extract``: it resolves the layer once, runs the extraction
over the dataset's stored images and publishes the vectors as embedding sets. For detectors it
stores the per-image set and, when the dataset has an objects table, an object-level set with one
vector per labelled or predicted box (each box is fed to the ROI head as a proposal).

Example:
    >>> extract_dataset(ws.open("street"), "detector.py:build_model", task="detection")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

from shoal.embedding.defaults import DEFAULT_EXTRACT_BATCH_SIZE, DEFAULT_MAX_ELEMENTS
from shoal.store import Dataset, EmbeddingInfo, StoreError


def extract_dataset(
    dataset: Dataset,
    model_spec: str,
    *,
    task: str = "classification",
    layer: str | None = None,
    name: str | None = None,
    weights: str | None = None,
    batch_size: int = DEFAULT_EXTRACT_BATCH_SIZE,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    backend: str = "auto",
    progress: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[EmbeddingInfo]:
    """Store the user's model's embeddings of every image; returns the sets written.

    ``backend``: "auto" (OpenVINO on x86 CPUs for runs long enough to pay for converting the
    model, where its layer converts; see :mod:`shoal.embedding.extract.extraction`), "torch" or
    "openvino"; the set records the backend and precision used."""
    from shoal.embedding.extract import (
        extract_detection,
        extract_embeddings,
        load_user_model,
        resolve_layer,
    )

    if not dataset.has_images:
        raise StoreError(f"dataset {dataset.name!r} has no images to run a model on")
    user_model = load_user_model(model_spec, weights=weights)
    paths, sample_ids = image_inputs(dataset)
    task_name = cast(Any, task)  # validated by shoal.embedding.extract against its Literal of tasks
    name = name or default_extract_name(model_spec)
    with dataset.computing(name):  # a second job on this set is refused, not mixed in
        metadata = {**user_model.describe(), "task": task}

        if task != "detection":
            chosen = resolve_layer(user_model, task=task_name, layer=layer, images=paths[:1])
            used: dict[str, Any] = {}
            vectors = extract_embeddings(
                user_model,
                paths,
                task=task_name,
                layer=chosen,
                batch_size=batch_size,
                max_elements=max_elements,
                backend=backend,
                details=used,
                progress=progress,
                should_stop=should_stop,
            )
            metadata.update(layer=chosen, max_elements=max_elements, **used)
            return publish_extracted(dataset, name, model_spec, metadata, vectors, sample_ids)

        used = {}
        result = extract_detection(
            user_model,
            paths,
            label_boxes=label_boxes_of(dataset, sample_ids),
            batch_size=max(1, min(batch_size, 4)),
            backend=backend,
            details=used,
            progress=progress,
            should_stop=should_stop,
            with_detections=False,
        )
        metadata.update(layer=result.image_layer, box_layer=result.box_layer, **used)
        box_vectors = None if result.labels is None else result.labels.vectors
        return publish_extracted(
            dataset, name, model_spec, metadata, result.image_vectors, sample_ids, box_vectors
        )


def default_extract_name(model_spec: str) -> str:
    """``my_model`` for ``path/to/my_model.py:build``."""
    return Path(model_spec.split(":")[0]).stem.replace(".", "-")


def image_inputs(dataset: Dataset) -> tuple[list[Path], np.ndarray]:
    """The dataset's image files and sample ids, in samples order."""
    samples = dataset.samples()
    paths = [dataset.image_file(p) for p in samples["path"]]
    return paths, samples["sample_id"].astype(str).to_numpy()


def label_boxes_of(dataset: Dataset, sample_ids: np.ndarray) -> list[np.ndarray] | None:
    """Per image (in ``sample_ids`` order) its labelled boxes, xyxy pixels; None without boxes."""
    objects = dataset.objects()
    if objects is None or not len(objects):
        return None
    by_sample = {sid: group for sid, group in objects.groupby("sample_id", sort=False)}
    return [
        np.array(by_sample[sid][["x0", "y0", "x1", "y1"]], dtype=np.float32)
        if sid in by_sample
        else np.zeros((0, 4), np.float32)
        for sid in sample_ids
    ]


def publish_extracted(
    dataset: Dataset,
    name: str,
    model_spec: str,
    metadata: dict[str, Any],
    image_vectors: np.ndarray,
    sample_ids: np.ndarray,
    box_vectors: np.ndarray | None = None,
) -> list[EmbeddingInfo]:
    """Store the per-image set and, for a detector's boxes (image-then-box order, the order of
    :func:`label_boxes_of`), the object-level set ``<name>-objects``; returns the sets written."""
    written = [
        dataset.publish_embeddings(
            name, image_vectors, sample_ids, model=model_spec, preprocessing=metadata
        )
    ]
    objects = dataset.objects()
    if box_vectors is not None and objects is not None and len(objects):
        rows_of = objects.groupby(objects["sample_id"].astype(str), sort=False).indices
        none = np.zeros(0, dtype=np.int64)
        order = np.concatenate([rows_of.get(sid, none) for sid in sample_ids])
        object_ids = objects["object_id"].astype(str).to_numpy()[order]
        written.append(
            dataset.publish_embeddings(
                f"{name}-objects",
                box_vectors,
                object_ids,
                model=model_spec,
                preprocessing=metadata,
                level="object",
            )
        )
    return written
