"""The built-in job kinds. Each is a thin wrapper: read params, call a library function, report."""

from __future__ import annotations

from typing import Any

from shoal.jobs import JobCancelled, JobContext, task


@task("embed")
def embed_task(context: JobContext) -> dict[str, Any]:
    from shoal.embed import DEFAULT_EMBEDDING_MODEL, embed_dataset

    params = context.params

    from embedding import EmbeddingCancelled

    try:
        info = embed_dataset(
            context.dataset(),
            model=params.get("model") or DEFAULT_EMBEDDING_MODEL,
            name=params.get("name"),
            batch_size=int(params.get("batch_size") or 32),
            progress=context.report_images,
            should_stop=context.cancelled,
        )
    except EmbeddingCancelled as stopped:
        raise JobCancelled() from stopped
    return {"embedding": info.name, "count": info.count, "dim": info.dim}


@task("extract")
def extract_task(context: JobContext) -> dict[str, Any]:
    from embedding import EmbeddingCancelled
    from shoal.extract import extract_dataset

    params = context.params

    try:
        written = extract_dataset(
            context.dataset(),
            params["model"],
            task=params.get("task") or "classification",
            layer=params.get("layer"),
            name=params.get("name"),
            weights=params.get("weights"),
            batch_size=int(params.get("batch_size") or 16),
            max_elements=int(params.get("max_elements") or 10_000),
            progress=context.report_images,
            should_stop=context.cancelled,
        )
    except EmbeddingCancelled as stopped:
        raise JobCancelled() from stopped
    return {"embeddings": [info.to_dict() for info in written]}


import shoal.app_tasks  # noqa: E402,F401 - registers the web app job kinds (analyse, compare)
import shoal.object_tasks  # noqa: E402,F401 - registers the detection job kind (embed-objects)
