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
    progress: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[EmbeddingInfo]:
    """Store the user's model's embeddings of every image; returns the sets written."""
    from shoal.embedding.extract import (
        extract_detection,
        extract_embeddings,
        load_user_model,
        resolve_layer,
    )

    if not dataset.has_images:
        raise StoreError(f"dataset {dataset.name!r} has no images to run a model on")
    user_model = load_user_model(model_spec, weights=weights)
    samples = dataset.samples()
    paths = [dataset.image_file(p) for p in samples["path"]]
    sample_ids = samples["sample_id"].astype(str).to_numpy()
    task_name = cast(Any, task)  # validated by shoal.embedding.extract against its Literal of tasks
    name = name or Path(model_spec.split(":")[0]).stem.replace(".", "-")
    with dataset.computing(name):  # a second job on this set is refused, not mixed in
        metadata = {**user_model.describe(), "task": task}

        if task != "detection":
            chosen = resolve_layer(user_model, task=task_name, layer=layer, images=paths[:1])
            vectors = extract_embeddings(
                user_model,
                paths,
                task=task_name,
                layer=chosen,
                batch_size=batch_size,
                max_elements=max_elements,
                progress=progress,
                should_stop=should_stop,
            )
            metadata.update(layer=chosen, max_elements=max_elements)
            return [
                dataset.publish_embeddings(
                    name, vectors, sample_ids, model=model_spec, preprocessing=metadata
                )
            ]

        objects = dataset.objects()
        label_boxes = None
        if objects is not None and len(objects):
            by_sample = {sid: group for sid, group in objects.groupby("sample_id", sort=False)}
            label_boxes = [
                np.array(by_sample[sid][["x0", "y0", "x1", "y1"]], dtype=np.float32)
                if sid in by_sample
                else np.zeros((0, 4), np.float32)
                for sid in sample_ids
            ]
        result = extract_detection(
            user_model,
            paths,
            label_boxes=label_boxes,
            batch_size=max(1, min(batch_size, 4)),
            progress=progress,
            should_stop=should_stop,
            with_detections=False,
        )
        metadata.update(layer=result.image_layer, box_layer=result.box_layer)
        written = [
            dataset.publish_embeddings(
                name, result.image_vectors, sample_ids, model=model_spec, preprocessing=metadata
            )
        ]
        if objects is not None and label_boxes is not None and result.labels is not None:
            order = np.concatenate(
                [
                    np.flatnonzero(objects["sample_id"].astype(str).to_numpy() == sid)
                    for sid in sample_ids
                ]
            )
            object_ids = objects["object_id"].astype(str).to_numpy()[order]
            written.append(
                dataset.publish_embeddings(
                    f"{name}-objects",
                    result.labels.vectors,
                    object_ids,
                    model=model_spec,
                    preprocessing=metadata,
                    level="object",
                )
            )
        return written
