"""Embed every box of a detection dataset: one object-level set aligned to ``objects.object_id``.

The kernel is :func:`shoal.embedding.objects.embed_objects` (ROI-Align on the backbone's feature map,
or square crops); this workflow reads the boxes and images from the store and publishes the
vectors.

Example:
    >>> embed_dataset_objects(Workspace().open("street"))                     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from shoal.embedding.defaults import DEFAULT_MODEL, DEFAULT_OBJECT_BATCH_SIZE
from shoal.embedding.inference import resolve_precision
from shoal.embedding.models import create_model
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
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EmbeddingInfo:
    """Embed every box of a detection dataset; store an object-level set aligned to ``objects.object_id``.

    The set is named ``name`` (default :func:`default_object_embedding_name`). When the dataset
    has no image-level set yet, the image vectors of the same pass (normal preprocessing, as
    ``shoal embed`` makes them) are stored too, under the model's name, and become the default.
    Returns the object-level set's info.

    >>> embed_dataset_objects(Workspace().open("street"))                     # doctest: +SKIP
    """
    objects = ds.objects()
    if objects is None or not len(objects):
        raise StoreError(
            f"dataset {ds.name!r} has no boxes to embed; import it with `shoal import-coco` or `shoal import-voc`"
        )
    if not ds.has_images:
        raise StoreError(f"dataset {ds.name!r} has no stored images to embed")
    name = name or default_object_embedding_name(model, method)
    with ds.computing(name):  # a second job on this set is refused, not mixed in
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
        embedder = create_model(model)
        object_vectors, image_vectors = embed_objects(
            [ds.image_file(p) for p in samples["path"]],
            [corners[r] for r in rows],
            embedder,
            method=method,
            batch_size=batch_size,
            num_workers=num_workers,
            precision=precision,
            progress=progress,
            should_stop=should_stop,
        )
        aligned = np.empty_like(object_vectors)
        aligned[np.concatenate(rows)] = object_vectors
        # ROI-Align and crops run on the torch backend (shoal.embedding.backends covers whole images).
        made_with = {"backend": "torch", "precision": resolve_precision(precision, embedder.device)}
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
            objects["object_id"].astype(str).to_numpy(),
            model=model,
            preprocessing={**embedder.data_config.to_dict(), "objects": settings},
            level="object",
        )
        if ds.default_embedding(level="sample") is None:
            image_name = model.replace("/", "-")
            ds.publish_embeddings(
                image_name,
                image_vectors,
                sample_ids,
                model=model,
                preprocessing={**embedder.data_config.to_dict(), **made_with},
                make_default=True,
            )
        return info
