"""Embed a dataset's images on a Ray cluster, into the same embedding set as the local path.

The images are cut into the local path's batches (``batch_size`` rows each; a batch is also the
unit of checkpointing). A Ray Data pipeline sends groups of batches, as rows of file paths, to an
actor pool; each actor holds the model once and runs the local pipeline itself
(:func:`shoal.embedding.embed_paths`: the same decoding, resizing, normalisation and per-batch model
step), so a vector from the cluster equals the local one up to floating-point noise. Decoding
runs inside the actor, between model calls, as on a local CPU: a separate decoding stage would
compete with the actors for the same cores and, on a 2-core node, starve them.

The driver (the machine that runs ``shoal embed``) receives each group's vectors, writes them in
sample order and checkpoints every finished batch in the dataset's ``.partial-<name>/`` exactly as
the local path does, so either engine resumes the other's run after a crash of the driver:
finished batches are not sent to the cluster again. The set is published atomically when every
image is embedded. A worker that dies mid-job (its node removed, its process killed) is restarted
by Ray and its group retried (Ray Data's actor pools retry without limit by default); the result
is complete or the job fails, never partial.

What the cluster needs to see: the image files at the same paths as the driver (the workspace on a
shared filesystem, e.g. NFS mounted at the same path on every node) and the same Python
environment (Shoal, torch and Ray at the same versions). The model's weights travel from the
driver through Ray's object store, so the nodes need no weights of their own and no internet.

Example:
    >>> embed_dataset_on_ray(Workspace().open("pets"), address="127.0.0.1:6379")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shoal.embedding.defaults import (
    DEFAULT_BACKEND,
    DEFAULT_BATCH_SIZE,
    DEFAULT_MODEL,
    DEFAULT_PRECISION,
)
from shoal.store import Dataset, EmbeddingInfo, StoreError

#: Batches per task sent to an actor: large enough that Ray's per-task cost (~ms) is noise next
#: to a batch's model time, small enough that a retried task redoes little work.
BATCHES_PER_TASK = 4
#: Environment variable naming the Ray cluster the app's job runner sends embedding jobs to.
RAY_ADDRESS_ENV = "SHOAL_RAY_ADDRESS"


@dataclass
class RayRunReport:
    """What the cluster did: rows embedded per node (by Ray node id), and the run's settings."""

    address: str
    actors: int
    rows_per_node: dict[str, int] = field(default_factory=dict)
    resumed_rows: int = 0
    seconds: float = 0.0


class _EmbedActor:
    """One model per actor; ``__call__`` embeds a group of batches with the local pipeline."""

    def __init__(
        self,
        model: Any,
        batch_size: int,
        backend: str,
        precision: str,
        use_gpu: bool,
        threads: int,
    ) -> None:
        import ray
        import torch

        from shoal.embedding.backends import create_embedder

        if threads > 0:
            torch.set_num_threads(threads)
        self.model = model.to("cuda") if use_gpu else model
        self.embedder = create_embedder(
            self.model, backend=backend, precision=precision, num_threads=threads or None
        )
        self.batch_size = batch_size
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from shoal.embedding import embed_paths

        starts = batch["start"].astype(np.int64)
        ends = batch["end"].astype(np.int64)
        paths = [str(path) for group in batch["paths"] for path in group]
        vectors = embed_paths(
            paths,
            self.model,
            batch_size=self.batch_size,
            num_workers=0,
            backend=self.embedder,
        )
        index = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])
        return {"index": index, "vector": vectors, "node": np.full(len(index), self.node)}


def default_address() -> str | None:
    """The cluster named by ``SHOAL_RAY_ADDRESS`` (None: not configured)."""
    return os.environ.get(RAY_ADDRESS_ENV) or None


def embed_dataset_on_ray(
    dataset: Dataset,
    *,
    address: str | None = None,
    model: str = DEFAULT_MODEL,
    name: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    backend: str = DEFAULT_BACKEND,
    precision: str = DEFAULT_PRECISION,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    progress: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    report: Callable[[RayRunReport], None] | None = None,
) -> EmbeddingInfo:
    """Embed every image of ``dataset`` on the Ray cluster at ``address`` and store the set as
    ``name`` (default: the model name), resumably; see the module docstring.

    address: ``host:port`` of a running cluster's GCS, ``"auto"``, or None for
    ``SHOAL_RAY_ADDRESS`` (and, if that is unset too, a Ray instance started for this job on
    this machine). actors: size of the actor pool (default: the cluster's CPUs, or GPUs, divided
    by what one actor takes). ``report`` receives a :class:`RayRunReport` when the run ends.
    Raises ``shoal.embedding.ImageDecodeError`` naming the first file that cannot be decoded (batches
    finished before it stay checkpointed), ``shoal.embedding.EmbeddingCancelled`` when
    ``should_stop()`` turns true.
    """
    from shoal.embedding import checkpoint_manifest, create_model
    from shoal.embedding.backends import resolve_backend, resolve_precision
    from shoal.embedding.pipeline import ProgressReporter, unfinished_batches
    from shoal.workflows.embed import (
        default_embedding_name,
        images_to_embed,
        publish_image_embeddings,
    )

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    samples, files = images_to_embed(dataset)
    ray = _import_ray()
    name = name or default_embedding_name(model)
    paths = [os.fspath(path) for path in files]
    total = len(paths)
    device = "cuda" if gpus_per_actor > 0 else "cpu"
    # Resolved here, so the checkpoints name what every actor runs (no actor falls back alone).
    backend = resolve_backend(backend, device)
    precision = resolve_precision(backend, precision, device)
    started = time.perf_counter()
    with dataset.computing(name):
        embedder = create_model(model)
        checkpoints = dataset.batch_checkpoints(
            name,
            checkpoint_manifest(
                paths, embedder, batch_size=batch_size, precision=precision, backend=backend
            ),
        )
        vectors = np.empty((total, embedder.dim), dtype=np.float32)
        pending = unfinished_batches(vectors, batch_size, checkpoints)
        resumed = total - sum(end - start for start, end in pending)
        reporter = ProgressReporter(total, progress, done=resumed, should_stop=should_stop)
        reporter.start()
        address = address or default_address()
        run = RayRunReport(address=address or "local", actors=0, resumed_rows=resumed)
        if pending:
            _connect(ray, address)
            run.actors = actors or _default_actors(ray, cpus_per_actor, gpus_per_actor)
            _run_pending(
                ray,
                pending,
                paths,
                embedder,
                vectors,
                checkpoints=checkpoints,
                reporter=reporter,
                run=run,
                batch_size=batch_size,
                backend=backend,
                precision=precision,
                cpus_per_actor=cpus_per_actor,
                gpus_per_actor=gpus_per_actor,
            )
        run.seconds = time.perf_counter() - started
        info = publish_image_embeddings(
            dataset,
            name,
            vectors,
            samples,
            model=model,
            data_config=embedder.data_config,
            backend=backend,
            precision=precision,
            engine="ray",
        )
    if report is not None:
        report(run)
    return info


def _run_pending(
    ray: Any,
    pending: Sequence[tuple[int, int]],
    paths: Sequence[str],
    embedder: Any,
    vectors: np.ndarray,
    *,
    checkpoints: Any,
    reporter: Any,
    run: RayRunReport,
    batch_size: int,
    backend: str,
    precision: str,
    cpus_per_actor: float,
    gpus_per_actor: float,
) -> None:
    """Send the unfinished batches through the actor pool; write and checkpoint what returns."""
    from shoal.embedding import ImageDecodeError

    rows = [{"start": s, "end": e, "paths": list(paths[s:e])} for s, e in pending]
    remaining = {start: end - start for start, end in pending}
    ends = dict(pending)
    tasks = -(-len(rows) // BATCHES_PER_TASK)
    data = ray.data.from_items(rows, override_num_blocks=tasks)
    threads = max(1, int(cpus_per_actor)) if gpus_per_actor == 0 else 0
    embedded = data.map_batches(
        _EmbedActor,
        fn_constructor_kwargs={
            "model": embedder,
            "batch_size": batch_size,
            "backend": backend,
            "precision": precision,
            "use_gpu": gpus_per_actor > 0,
            "threads": threads,
        },
        batch_size=BATCHES_PER_TASK,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=run.actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,
    )
    first_rows = np.array([start for start, _ in pending], dtype=np.int64)
    nodes: Counter[str] = Counter()
    try:
        for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            reporter.check()
            index = batch["index"].astype(np.int64)
            vectors[index] = batch["vector"]
            nodes.update(str(node) for node in batch["node"])
            owners = first_rows[np.searchsorted(first_rows, index, side="right") - 1]
            for start, count in zip(*np.unique(owners, return_counts=True), strict=True):
                start = int(start)
                remaining[start] -= int(count)
                if remaining[start] == 0:
                    checkpoints.save(start, ends[start], vectors[start : ends[start]])
                    reporter.advance(ends[start] - start)
    except Exception as error:
        decode = _find_cause(error, ImageDecodeError)
        if decode is not None:
            raise decode from None
        raise
    finally:
        run.rows_per_node = dict(nodes)
    if any(remaining.values()):  # pragma: no cover - Ray returned fewer rows than sent
        raise RuntimeError("the Ray pipeline returned fewer vectors than images; nothing published")


def _find_cause(error: BaseException, kind: type[Exception]) -> Exception | None:
    """The worker's own exception of ``kind`` (an ImageDecodeError names the file and reason)
    inside Ray's wrappers, or None."""
    seen: set[int] = set()
    stack: list[Any] = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        stack += [getattr(current, "cause", None), current.__cause__, current.__context__]
    return None


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise StoreError(
            "the Ray engine needs Ray: pip install 'shoal[ray]' "
            f"(the same Ray version as the cluster) ({error})"
        ) from error
    return ray


def _connect(ray: Any, address: str | None) -> None:
    if ray.is_initialized():
        return
    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
    }
    try:
        ray.init(address=address, **options)
    except ConnectionError as error:
        raise StoreError(
            f"could not reach the Ray cluster at {address!r}: {error}. Check the address "
            f"(`ray status` on the head node prints it) or unset {RAY_ADDRESS_ENV}."
        ) from error
    ray.data.DataContext.get_current().enable_progress_bars = False


def _default_actors(ray: Any, cpus_per_actor: float, gpus_per_actor: float) -> int:
    resources = ray.cluster_resources()
    if gpus_per_actor > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_actor))
    return max(1, int(resources.get("CPU", 1) // max(cpus_per_actor, 1e-9)))
