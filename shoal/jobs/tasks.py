"""The built-in job kinds, each with the dataclass of its parameters.

A task is a thin wrapper: read its typed parameters, call one workflow, report progress. The
parameters' defaults come from the library (:mod:`shoal.embedding.defaults`), so a job submitted with
``params={}`` and one with every default spelt out are the same job. Workflows load lazily: the
app and the CLI import this module without loading torch.

Example:
    >>> submit(ws, "embed", dataset="pets", params={"batch_size": 64})   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from shoal.embedding.defaults import (
    DEFAULT_BACKEND,
    DEFAULT_BATCH_SIZE,
    DEFAULT_EXTRACT_BATCH_SIZE,
    DEFAULT_MAX_ELEMENTS,
    DEFAULT_MODEL,
    DEFAULT_OBJECT_BATCH_SIZE,
    DEFAULT_PRECISION,
)
from shoal.jobs.runner import JobCancelled, JobContext, task

#: What one "analyse" job computes, in order; each later step reuses the kNN graph.
ANALYSIS_STEPS = ("knn_graph", "project", "outliers", "duplicates", "mislabels")


@contextlib.contextmanager
def _cancellable() -> Iterator[None]:
    """The embedding engine's own 'stopped' becomes the runner's 'cancelled'."""
    from shoal.embedding.pipeline import EmbeddingCancelled

    try:
        yield
    except EmbeddingCancelled as stopped:
        raise JobCancelled() from stopped


# --------------------------------------------------------------------------- embedding


@dataclass(frozen=True)
class EmbedParams:
    model: str = DEFAULT_MODEL
    name: str | None = None  # the embedding set; default: the model's name
    batch_size: int = DEFAULT_BATCH_SIZE
    backend: str = DEFAULT_BACKEND  # or 'torch', 'openvino' (shoal.embedding.backends)
    precision: str = DEFAULT_PRECISION  # or 'fp32', 'bf16' (CPU), 'fp16' (CUDA)
    # 'auto': on the Ray cluster named by SHOAL_RAY_ADDRESS if set, else here; 'local', 'ray'
    engine: str = "auto"
    address: str | None = None  # the Ray cluster (host:port); default SHOAL_RAY_ADDRESS


ENGINES = ("auto", "local", "ray")


def resolve_engine(engine: str, address: str | None = None) -> str:
    """``auto`` -> ``ray`` when a cluster is named (``address`` or SHOAL_RAY_ADDRESS), else
    ``local``."""
    from shoal.workflows.ray_engine import default_address

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "auto":
        return "ray" if address or default_address() else "local"
    return engine


def _ray_extra(reports: list[Any]) -> dict[str, Any]:
    """What a job's result says of its Ray run (the engine's RayRunReport)."""
    return {"engine": "ray", "ray": asdict(reports[0]) if reports else None}


@task("embed", params=EmbedParams)
def embed_task(context: JobContext) -> dict[str, Any]:
    """Embed every image of the dataset with a registered model, here or on a Ray cluster."""
    from shoal.workflows.embed import embed_dataset

    params = EmbedParams(**context.params)
    options: dict[str, Any] = {
        "model": params.model,
        "name": params.name,
        "batch_size": params.batch_size,
        "backend": params.backend,
        "precision": params.precision,
        "progress": context.report_images,
        "should_stop": context.cancelled,
    }
    extra: dict[str, Any] = {}
    with _cancellable():
        if resolve_engine(params.engine, params.address) == "ray":
            from shoal.workflows.ray_engine import embed_dataset_on_ray

            reports: list[Any] = []
            info = embed_dataset_on_ray(
                context.dataset(), address=params.address, report=reports.append, **options
            )
            extra = _ray_extra(reports)
        else:
            info = embed_dataset(context.dataset(), **options)
            extra = {"engine": "local"}
    return {
        "embedding": info.name,
        "count": info.count,
        "dim": info.dim,
        "backend": info.preprocessing.get("backend"),
        "precision": info.preprocessing.get("precision"),
        **extra,
    }


@dataclass(frozen=True)
class ExtractParams:
    model: str = ""  # 'path/to/file.py:factory' or a TorchScript file
    task: str = "classification"
    layer: str | None = None
    name: str | None = None
    weights: str | None = None
    batch_size: int = DEFAULT_EXTRACT_BATCH_SIZE
    max_elements: int = DEFAULT_MAX_ELEMENTS
    backend: str = DEFAULT_BACKEND  # as EmbedParams.backend; the model runs in float32
    engine: str = "auto"  # as EmbedParams.engine
    address: str | None = None


@task("extract", params=ExtractParams)
def extract_task(context: JobContext) -> dict[str, Any]:
    """Embed every image with the user's own model (classification, segmentation, detection),
    here or on a Ray cluster."""
    from shoal.workflows.extract import extract_dataset

    params = ExtractParams(**context.params)
    options: dict[str, Any] = {
        "task": params.task,
        "layer": params.layer,
        "name": params.name,
        "weights": params.weights,
        "batch_size": params.batch_size,
        "max_elements": params.max_elements,
        "backend": params.backend,
        "progress": context.report_images,
        "should_stop": context.cancelled,
    }
    with _cancellable():
        if resolve_engine(params.engine, params.address) == "ray":
            from shoal.workflows.ray_engine import extract_on_ray

            reports: list[Any] = []
            written = extract_on_ray(
                context.dataset(),
                params.model,
                address=params.address,
                report=reports.append,
                **options,
            )
            return {
                "embeddings": [info.to_dict() for info in written],
                **_ray_extra(reports),
            }
        written = extract_dataset(context.dataset(), params.model, **options)
    return {"embeddings": [info.to_dict() for info in written]}


@dataclass(frozen=True)
class EmbedObjectsParams:
    model: str = DEFAULT_MODEL
    name: str | None = None  # the object-level set; default '<model>-objects'
    method: str = "roi_align"  # or 'crop'
    batch_size: int = DEFAULT_OBJECT_BATCH_SIZE  # images per batch
    backend: str = DEFAULT_BACKEND  # as EmbedParams.backend
    precision: str = DEFAULT_PRECISION
    engine: str = "auto"  # as EmbedParams.engine
    address: str | None = None


@task("embed-objects", params=EmbedObjectsParams)
def embed_objects_task(context: JobContext) -> dict[str, Any]:
    """One vector per labelled or predicted box of a detection dataset."""
    from shoal.workflows.objects import embed_dataset_objects

    params = EmbedObjectsParams(**context.params)
    ds = context.dataset()
    had_image_set = ds.default_embedding(level="sample") is not None
    options: dict[str, Any] = {
        "model": params.model,
        "name": params.name,
        "method": params.method,
        "batch_size": params.batch_size,
        "backend": params.backend,
        "precision": params.precision,
        "progress": context.report_images,
        "should_stop": context.cancelled,  # polled before every batch
    }
    extra: dict[str, Any] = {"engine": "local"}
    with _cancellable():
        if resolve_engine(params.engine, params.address) == "ray":
            from shoal.workflows.ray_engine import embed_objects_on_ray

            reports: list[Any] = []
            info = embed_objects_on_ray(
                ds, address=params.address, report=reports.append, **options
            )
            extra = _ray_extra(reports)
        else:
            info = embed_dataset_objects(ds, **options)
    result: dict[str, Any] = {
        "embedding": info.name,
        "count": info.count,
        "dim": info.dim,
        "level": info.level,
        **extra,
    }
    if not had_image_set:
        result["image_embedding"] = ds.default_embedding(level="sample")
    return result


# --------------------------------------------------------------------------- analyses


@dataclass(frozen=True)
class AnalyseParams:
    embedding: str | None = None  # default: the dataset's default set
    steps: tuple[str, ...] | None = None  # default: ANALYSIS_STEPS
    projection: str = "umap"  # the map's layout: umap, tsne or pca


@task("analyse", params=AnalyseParams)
def analyse_task(context: JobContext) -> dict[str, Any]:
    """kNN graph, map, outlier scores, near-duplicates and mislabels of one embedding set.

    The results land in the dataset's artefacts, so the page that asked for them reads them
    back as a cache hit.
    """
    from shoal.store import StoreError
    from shoal.workflows import analyse

    params = AnalyseParams(**context.params)
    ds = context.dataset()
    embedding = ds.resolve_embedding(params.embedding)
    version = ds.embedding_info(embedding).version
    steps = [s for s in params.steps or ANALYSIS_STEPS if s in ANALYSIS_STEPS]
    skipped = []
    for done, step in enumerate(steps):
        context.report(
            done,
            len(steps),
            unit="steps",
            message=f"computing {step.replace('_', ' ')}",
            force=True,
        )
        context.check_cancelled()
        try:
            options = {"method": params.projection} if step == "project" else {}
            analyse.ANALYSES[step](ds, embedding, **options)
        except StoreError as error:
            if step != "mislabels":  # a dataset without labels has nothing to check
                raise
            skipped.append(f"{step}: {error}")
    context.report(len(steps), len(steps), unit="steps", force=True)
    return {
        "embedding": embedding,
        "version": version,
        "steps": ", ".join(steps),
        "skipped": skipped,
    }


@dataclass(frozen=True)
class CompareParams:
    reference: str = ""  # a filter, e.g. 'split=train'
    current: str | None = None  # a filter; default: every sample not in the reference
    embedding: str | None = None
    method: str = "auto"


@task("compare", params=CompareParams)
def compare_task(context: JobContext) -> dict[str, Any]:
    """A reference-vs-current comparison of a large dataset (see ``compare_dataset``)."""
    from shoal.workflows.compare import compare_dataset

    params = CompareParams(**context.params)
    ds = context.dataset()
    embedding = ds.resolve_embedding(params.embedding)
    context.report(0, 1, unit="comparisons", message="comparing", force=True)
    computed = compare_dataset(
        ds,
        reference=params.reference,
        current=params.current or None,
        embedding=embedding,
        method=params.method,
    )
    context.report(1, 1, unit="comparisons", force=True)
    info = ds.embedding_info(embedding)
    return {
        "embedding": embedding,
        "version": info.version,
        "p_value": computed.result.p_value,
        "verdict": computed.result.verdict(unit=info.unit),
    }
