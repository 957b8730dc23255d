"""Job kinds the web app submits for large datasets: one analysis pass, and a comparison.

Each is a thin wrapper over :mod:`analysis.workspace` / :mod:`analysis.compare`: the results land
in the dataset's artefacts, so the page that asked for them reads them back as a cache hit.
Registered from ``shoal/tasks.py`` (one import line).

Example:
    >>> submit(ws, "analyse", dataset="fmnist", params={"embedding": None})   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shoal.jobs import JobContext, task
from shoal.store import Dataset, Workspace

#: What one "analyse" job computes, in order; each later step reuses the kNN graph.
ANALYSIS_STEPS = ("knn_graph", "project", "outliers", "duplicates", "mislabels")


def _dataset(context: JobContext) -> Dataset:
    return Workspace(context.workspace.root).open(str(context.record.dataset))


@task("analyse")
def analyse_task(context: JobContext) -> dict[str, Any]:
    """kNN graph, map, outlier scores, near-duplicates and mislabels of one embedding set."""
    import analysis.workspace as aw
    from shoal.store import StoreError

    ds = _dataset(context)
    embedding = ds.resolve_embedding(context.params.get("embedding"))
    version = ds.embedding_info(embedding).version
    steps = [s for s in context.params.get("steps") or ANALYSIS_STEPS if s in ANALYSIS_STEPS]
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
        function: Callable[..., Any] = getattr(aw, step)
        try:
            function(ds, embedding)
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


@task("compare")
def compare_task(context: JobContext) -> dict[str, Any]:
    """A reference-vs-current comparison of a large dataset; params as ``compare_dataset`` takes them."""
    from analysis.compare import compare_dataset

    ds = _dataset(context)
    params = context.params
    embedding = ds.resolve_embedding(params.get("embedding"))
    context.report(0, 1, unit="comparisons", message="comparing", force=True)
    result = compare_dataset(
        ds,
        reference=params["reference"],
        current=params.get("current") or None,
        embedding=embedding,
        method=params.get("method") or "auto",
    )
    context.report(1, 1, unit="comparisons", force=True)
    return {
        "embedding": embedding,
        "version": ds.embedding_info(embedding).version,
        "p_value": result.p_value,
        "verdict": result.verdict(),
    }
