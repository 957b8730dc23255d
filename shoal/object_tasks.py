"""The 'embed-objects' job kind: one vector per labelled or predicted box of a detection dataset.

Registered from ``shoal/tasks.py`` (one import line); ``shoal embed NAME --objects`` and the app
submit it. Params: ``model``, ``name`` (object-level set, default ``<model>-objects``),
``batch_size`` (images per batch), ``method`` ('roi_align' or 'crop').

Example:
    >>> submit(ws, "embed-objects", dataset="street", params={"model": "efficientnet_lite0"})  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from shoal.jobs import JobCancelled, JobContext, task

DEFAULT_OBJECT_BATCH_SIZE = 8


@task("embed-objects")
def embed_objects_task(context: JobContext) -> dict[str, Any]:
    from embedding.objects import embed_dataset_objects
    from embedding.pipeline import EmbeddingCancelled

    params = context.params

    ds = context.dataset()
    had_image_set = ds.default_embedding(level="sample") is not None
    try:
        info = embed_dataset_objects(
            ds,
            model=params.get("model") or "efficientnet_lite0",
            name=params.get("name"),
            method=params.get("method") or "roi_align",
            batch_size=int(params.get("batch_size") or DEFAULT_OBJECT_BATCH_SIZE),
            progress=context.report_images,
            should_stop=context.cancelled,  # polled before every batch
        )
    except EmbeddingCancelled as stopped:
        raise JobCancelled() from stopped
    result: dict[str, Any] = {
        "embedding": info.name,
        "count": info.count,
        "dim": info.dim,
        "level": info.level,
    }
    if not had_image_set:
        result["image_embedding"] = ds.default_embedding(level="sample")
    return result
