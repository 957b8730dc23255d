"""Embed every box of a detection dataset: one object-level set aligned to ``objects.object_id``.

The kernel is :func:`shoal.embedding.objects.embed_objects` (ROI-Align on the backbone's feature map,
or square crops); this workflow reads the boxes and images from the store and publishes the
vectors.

Example:
    >>> embed_dataset_objects(Workspace().open("street"))                     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shoal.embedding.backends import create_embedder, default_device
from shoal.embedding.defaults import DEFAULT_MODEL, DEFAULT_OBJECT_BATCH_SIZE
from shoal.embedding.models import EmbeddingModel, create_model
from shoal.embedding.objects import (
    CROP_MARGIN,
    ROI_MAX_SIDE,
    ROI_OUTPUT_SIZE,
    ROI_SAMPLING_RATIO,
    ROI_SHORT_SIDE,
    ProgressCallback,
    embed_objects,
)
from shoal.store import Dataset, EmbeddingInfo, StoreError


def default_object_embedding_name(model: str, method: str = "roi_align") -> str:
    """``efficientnet_lite0-objects`` (``-objects-crop`` for the crop method)."""
    base = model.replace("/", "-") + "-objects"
    return base if method == "roi_align" else f"{base}-{method}"


def embed_dataset_objects(
    ds: Dataset,
    *,
    model: str = DEFAULT_MODEL,
    name: str | None = None,
    method: str = "roi_align",
    batch_size: int = DEFAULT_OBJECT_BATCH_SIZE,
    num_workers: int | None = None,
    precision: str = "auto",
    backend: str = "auto",
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EmbeddingInfo:
    """Embed every box of a detection dataset; store an object-level set aligned to ``objects.object_id``.

    ``backend`` as for ``shoal embed`` (OpenVINO on x86 CPUs computes the feature maps, crops and
    whole images; ROI-Align runs in torch); the set records the backend and precision used.

    The set is named ``name`` (default :func:`default_object_embedding_name`). When the dataset
    has no image-level set yet, the image vectors of the same pass (normal preprocessing, as
    ``shoal embed`` makes them) are stored too, under the model's name, and become the default.
    Returns the object-level set's info.

    >>> embed_dataset_objects(Workspace().open("street"))                     # doctest: +SKIP
    """
    inputs = object_inputs(ds)
    name = name or default_object_embedding_name(model, method)
    with ds.computing(name):  # a second job on this set is refused, not mixed in
        network = create_model(model, device=default_device(backend))  # CUDA: torch
        embedder = create_embedder(
            network, backend=backend, precision=precision, feature_map=method == "roi_align"
        )
        object_vectors, image_vectors = embed_objects(
            inputs.paths,
            inputs.boxes,
            network,
            method=method,
            batch_size=batch_size,
            num_workers=num_workers,
            backend=embedder,
            progress=progress,
            should_stop=should_stop,
        )
        return publish_object_embeddings(
            ds,
            inputs,
            name,
            network,
            object_vectors,
            image_vectors,
            model=model,
            method=method,
            backend=embedder.backend,
            precision=embedder.precision,
        )


@dataclass(frozen=True)
class ObjectInputs:
    """What embedding a dataset's boxes reads: per image (in samples order) its file and its
    boxes, and where each box's row sits in the objects table."""

    sample_ids: list[str]
    paths: list[Path]
    boxes: list[np.ndarray]  # per image, (n_i, 4) xyxy pixels
    rows: list[np.ndarray]  # per image, the objects-table rows of its boxes
    object_ids: np.ndarray


def object_inputs(ds: Dataset) -> ObjectInputs:
    """The images and boxes to embed; refused with the reason when there are none."""
    objects = ds.objects()
    if objects is None or not len(objects):
        raise StoreError(
            f"dataset {ds.name!r} has no boxes to embed; import it with `shoal import-coco` or `shoal import-voc`"
        )
    if not ds.has_images:
        raise StoreError(f"dataset {ds.name!r} has no stored images to embed")
    samples = ds.samples()
    sample_ids = samples["sample_id"].astype(str).tolist()
    rows_of = objects.groupby(objects["sample_id"].astype(str), sort=False).indices
    unknown = sorted(set(rows_of) - set(sample_ids))
    if unknown:
        raise StoreError(
            f"objects refer to {len(unknown)} sample id(s) not in the samples table, e.g. {unknown[0]!r}"
        )
    corners = objects[["x0", "y0", "x1", "y1"]].to_numpy(dtype=np.float32)
    rows = [np.asarray(rows_of.get(s, []), dtype=np.int64) for s in sample_ids]
    return ObjectInputs(
        sample_ids=sample_ids,
        paths=[ds.image_file(p) for p in samples["path"]],
        boxes=[corners[r] for r in rows],
        rows=rows,
        object_ids=objects["object_id"].astype(str).to_numpy(),
    )


def publish_object_embeddings(
    ds: Dataset,
    inputs: ObjectInputs,
    name: str,
    embedder: EmbeddingModel,
    object_vectors: np.ndarray,
    image_vectors: np.ndarray,
    *,
    model: str,
    method: str,
    backend: str,
    precision: str,
    engine: str = "local",
) -> EmbeddingInfo:
    """Store the box vectors (image-then-box order, as :func:`embed_objects` returns them)
    aligned to ``objects.object_id``, and the image vectors too when the dataset has no
    image-level set yet (they become the default)."""
    aligned = np.empty_like(object_vectors)
    aligned[np.concatenate(inputs.rows)] = object_vectors
    made_with = {"backend": backend, "precision": precision, "engine": engine}
    settings: dict[str, Any] = {"method": method, **made_with}
    if method == "roi_align":
        settings.update(
            short_side=ROI_SHORT_SIDE,
            max_side=ROI_MAX_SIDE,
            output_size=ROI_OUTPUT_SIZE,
            sampling_ratio=ROI_SAMPLING_RATIO,
            aligned=True,
            stride=int(embedder.feature_stride),
        )
    else:
        settings.update(margin=CROP_MARGIN, shape="square around the box")
    info = ds.publish_embeddings(
        name,
        aligned,
        inputs.object_ids,
        model=model,
        preprocessing={**embedder.data_config.to_dict(), "objects": settings},
        level="object",
    )
    if ds.default_embedding(level="sample") is None:
        ds.publish_embeddings(
            model.replace("/", "-"),
            image_vectors,
            np.asarray(inputs.sample_ids, dtype=object),
            model=model,
            preprocessing={**embedder.data_config.to_dict(), **made_with},
            make_default=True,
        )
    return info
