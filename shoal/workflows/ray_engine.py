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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shoal.embedding.defaults import (
    DEFAULT_BACKEND,
    DEFAULT_BATCH_SIZE,
    DEFAULT_EXTRACT_BATCH_SIZE,
    DEFAULT_MAX_ELEMENTS,
    DEFAULT_MODEL,
    DEFAULT_OBJECT_BATCH_SIZE,
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
        from shoal.embedding.backends import create_embedder

        self.node = _actor_setup(threads)
        self.model = model.to("cuda") if use_gpu else model
        self.embedder = create_embedder(
            self.model, backend=backend, precision=precision, num_threads=threads or None
        )
        self.batch_size = batch_size

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


def _actor_setup(threads: int) -> str:
    """An actor's torch threads (0: torch's default); returns the Ray node it runs on."""
    import ray
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    return str(ray.get_runtime_context().get_node_id())


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
    rows = [{"start": s, "end": e, "paths": list(paths[s:e])} for s, e in pending]
    remaining = {start: end - start for start, end in pending}
    ends = dict(pending)
    embedded = _actor_pool(
        ray,
        rows,
        _EmbedActor,
        {
            "model": embedder,
            "batch_size": batch_size,
            "backend": backend,
            "precision": precision,
            "use_gpu": gpus_per_actor > 0,
            "threads": _threads(cpus_per_actor, gpus_per_actor),
        },
        actors=run.actors,
        cpus_per_actor=cpus_per_actor,
        gpus_per_actor=gpus_per_actor,
    )
    first_rows = np.array([start for start, _ in pending], dtype=np.int64)
    nodes: Counter[str] = Counter()
    try:
        for batch in embedded:
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
    finally:
        run.rows_per_node = dict(nodes)
    if any(remaining.values()):  # pragma: no cover - Ray returned fewer rows than sent
        raise RuntimeError("the Ray pipeline returned fewer vectors than images; nothing published")


def _actor_pool(
    ray: Any,
    rows: list[dict[str, Any]],
    actor: type,
    kwargs: dict[str, Any],
    *,
    actors: int,
    cpus_per_actor: float,
    gpus_per_actor: float,
) -> Iterator[dict[str, np.ndarray]]:
    """``rows`` through a pool of ``actors`` instances of ``actor`` (built with ``kwargs``),
    ``BATCHES_PER_TASK`` rows per call; yields what the actors return, as numpy batches. Ray
    Data retries the calls of an actor that dies, on a new actor. A file an actor cannot decode
    ends the run with the worker's own ImageDecodeError (it names the file), not Ray's wrapper.
    """
    from shoal.embedding import ImageDecodeError

    tasks = -(-len(rows) // BATCHES_PER_TASK)
    data = ray.data.from_items(rows, override_num_blocks=tasks)
    mapped = data.map_batches(
        actor,
        fn_constructor_kwargs=kwargs,
        batch_size=BATCHES_PER_TASK,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,
    )
    try:
        yield from mapped.iter_batches(batch_size=None, batch_format="numpy")
    except Exception as error:
        decode = _find_cause(error, ImageDecodeError)
        if decode is not None:
            raise decode from None
        raise


def _threads(cpus_per_actor: float, gpus_per_actor: float) -> int:
    """Torch threads per actor: its CPUs (0 = torch's default, on a GPU actor)."""
    return max(1, int(cpus_per_actor)) if gpus_per_actor == 0 else 0


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


# --------------------------------------------------------------------------- boxes and own models

#: Images per unit of work for the box and own-model kernels (one actor call runs
#: ``BATCHES_PER_TASK`` of them). These kernels have no checkpoints on the local path either: a
#: retried unit redoes at most this many images.
IMAGES_PER_GROUP = 8


class _ObjectsActor:
    """One model per actor; ``__call__`` embeds groups of images and their boxes with
    :func:`shoal.embedding.objects.embed_objects`, as the local path does."""

    def __init__(
        self,
        model: Any,
        method: str,
        batch_size: int,
        backend: str,
        precision: str,
        use_gpu: bool,
        threads: int,
    ) -> None:
        from shoal.embedding.backends import create_embedder

        self.node = _actor_setup(threads)
        self.model = model.to("cuda") if use_gpu else model
        self.method, self.batch_size = method, batch_size
        self.embedder = create_embedder(
            self.model,
            backend=backend,
            precision=precision,
            num_threads=threads or None,
            feature_map=method == "roi_align",
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from shoal.embedding.objects import embed_objects

        images, boxes = [], []
        for paths, flat, counts in zip(
            batch["paths"], batch["boxes"], batch["counts"], strict=True
        ):
            found, whole = embed_objects(
                [str(path) for path in paths],
                _per_image(flat, counts),
                self.model,
                method=self.method,
                batch_size=self.batch_size,
                num_workers=0,
                backend=self.embedder,
            )
            images.append(whole)
            boxes.append(found)
        return _group_output(batch, images, boxes, self.node)


class _ExtractActor:
    """The user's model, loaded once per actor from its spec (a file every node sees at the same
    path, as the images); ``__call__`` runs :mod:`shoal.embedding.extract` on groups of images."""

    def __init__(
        self,
        model_spec: str,
        weights: str | None,
        task: str,
        layer: str | None,
        batch_size: int,
        max_elements: int,
        backend: str,
        threads: int,
    ) -> None:
        from shoal.embedding.extract import load_user_model

        self.node = _actor_setup(threads)
        self.model = load_user_model(model_spec, weights=weights)
        self.task, self.layer, self.backend = task, layer, backend
        self.batch_size, self.max_elements = batch_size, max_elements

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from shoal.embedding.extract import extract_detection, extract_embeddings

        images, boxes, layers = [], [], []
        for paths, flat, counts in zip(
            batch["paths"], batch["boxes"], batch["counts"], strict=True
        ):
            files = [str(path) for path in paths]
            if self.task != "detection":
                images.append(
                    extract_embeddings(
                        self.model,
                        files,
                        task=self.task,  # type: ignore[arg-type]  # checked by the driver's resolve_layer
                        layer=self.layer,
                        batch_size=self.batch_size,
                        max_elements=self.max_elements,
                        backend=self.backend,
                    )
                )
                boxes.append(np.zeros((0, 0), np.float32))
                layers.append(self.layer or "")
                continue
            result = extract_detection(
                self.model,
                files,
                label_boxes=_per_image(flat, counts) if len(counts) and counts.sum() else None,
                batch_size=max(1, min(self.batch_size, 4)),
                with_detections=False,
            )
            images.append(result.image_vectors)
            labels = result.labels
            boxes.append(labels.vectors if labels is not None else np.zeros((0, 0), np.float32))
            layers.append(f"{result.image_layer}|{result.box_layer}")
        output = _group_output(batch, images, boxes, self.node)
        output["layers"] = np.array(layers, dtype=object)
        return output


def _per_image(flat: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """A group's boxes, sent flat, back to one (n_i, 4) array per image."""
    corners = np.asarray(flat, dtype=np.float32).reshape(-1, 4)
    return np.split(corners, np.cumsum(np.asarray(counts, dtype=np.int64))[:-1])


def _group_output(
    batch: dict[str, np.ndarray], images: list[np.ndarray], boxes: list[np.ndarray], node: str
) -> dict[str, np.ndarray]:
    ragged_images, ragged_boxes = np.empty(len(images), object), np.empty(len(boxes), object)
    ragged_images[:], ragged_boxes[:] = images, boxes  # arrays of differing lengths, one per group
    return {
        "start": batch["start"],
        "images": ragged_images,
        "boxes": ragged_boxes,
        "node": np.full(len(images), node),
    }


def _map_image_groups(
    ray: Any,
    paths: Sequence[Any],
    boxes: Sequence[np.ndarray] | None,
    actor: type,
    kwargs: dict[str, Any],
    *,
    run: RayRunReport,
    reporter: Any,
    cpus_per_actor: float,
    gpus_per_actor: float,
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Every image (and its boxes) through the actor pool, ``IMAGES_PER_GROUP`` at a time.

    Returns the image vectors (n_images, dim) in image order, the box vectors (sum n_i, dim')
    in image-then-box order (None when the kernel returns none), and the layer names the
    actors reported (own models). Raises the worker's ImageDecodeError, naming the file.
    """

    total = len(paths)
    counts = np.array([len(b) for b in boxes] if boxes is not None else [0] * total, np.int64)
    box_starts = np.concatenate([[0], np.cumsum(counts)])
    rows = []
    for start in range(0, total, IMAGES_PER_GROUP):
        stop = min(start + IMAGES_PER_GROUP, total)
        flat = np.concatenate(boxes[start:stop]) if boxes is not None else np.zeros((0, 4))
        rows.append(
            {
                "start": start,
                "paths": [os.fspath(path) for path in paths[start:stop]],
                "boxes": flat.astype(np.float32).ravel(),
                "counts": counts[start:stop],
            }
        )
    image_vectors: np.ndarray | None = None
    box_vectors: np.ndarray | None = None
    layers: list[str] = []
    nodes: Counter[str] = Counter()
    try:
        for batch in _actor_pool(
            ray,
            rows,
            actor,
            kwargs,
            actors=run.actors,
            cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor,
        ):
            reporter.check()
            for start, images, found, node in zip(
                batch["start"], batch["images"], batch["boxes"], batch["node"], strict=True
            ):
                start = int(start)
                nodes[str(node)] += len(images)
                if image_vectors is None:
                    image_vectors = np.empty((total, images.shape[1]), dtype=np.float32)
                image_vectors[start : start + len(images)] = images
                if found.size:
                    if box_vectors is None:
                        box_vectors = np.empty((box_starts[-1], found.shape[1]), np.float32)
                    first = box_starts[start]
                    box_vectors[first : first + len(found)] = found
                reporter.advance(len(images))
            layers += [str(layer) for layer in batch.get("layers", ())]
    finally:
        run.rows_per_node = dict(nodes)
    assert image_vectors is not None  # at least one image: the callers refuse empty datasets
    return image_vectors, box_vectors, layers


def embed_objects_on_ray(
    dataset: Dataset,
    *,
    address: str | None = None,
    model: str = DEFAULT_MODEL,
    name: str | None = None,
    method: str = "roi_align",
    batch_size: int = DEFAULT_OBJECT_BATCH_SIZE,
    backend: str = DEFAULT_BACKEND,
    precision: str = DEFAULT_PRECISION,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    progress: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    report: Callable[[RayRunReport], None] | None = None,
) -> EmbeddingInfo:
    """:func:`shoal.workflows.objects.embed_dataset_objects` on the Ray cluster at ``address``:
    the same boxes, the same kernel in each actor, the same set published. ``address``,
    ``actors`` and ``report`` as :func:`embed_dataset_on_ray`."""
    from shoal.embedding import create_model
    from shoal.embedding.backends import resolve_backend, resolve_precision
    from shoal.embedding.pipeline import ProgressReporter
    from shoal.workflows.objects import (
        default_object_embedding_name,
        object_inputs,
        publish_object_embeddings,
    )

    inputs = object_inputs(dataset)
    ray = _import_ray()
    name = name or default_object_embedding_name(model, method)
    device = "cuda" if gpus_per_actor > 0 else "cpu"
    # Resolved here, so the set names what every actor runs (no actor falls back alone).
    backend = resolve_backend(backend, device)
    precision = resolve_precision(backend, precision, device)
    started = time.perf_counter()
    with dataset.computing(name):
        embedder = create_model(model)
        reporter = ProgressReporter(len(inputs.paths), progress, should_stop=should_stop)
        reporter.start()
        run = _start(ray, address, actors, cpus_per_actor, gpus_per_actor)
        images, boxes, _ = _map_image_groups(
            ray,
            inputs.paths,
            inputs.boxes,
            _ObjectsActor,
            {
                "model": embedder,
                "method": method,
                "batch_size": batch_size,
                "backend": backend,
                "precision": precision,
                "use_gpu": gpus_per_actor > 0,
                "threads": _threads(cpus_per_actor, gpus_per_actor),
            },
            run=run,
            reporter=reporter,
            cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor,
        )
        if boxes is None:  # pragma: no cover - object_inputs refuses a dataset without boxes
            raise RuntimeError("the Ray pipeline returned no box vectors; nothing published")
        run.seconds = time.perf_counter() - started
        info = publish_object_embeddings(
            dataset,
            inputs,
            name,
            embedder,
            boxes,
            images,
            model=model,
            method=method,
            backend=backend,
            precision=precision,
            engine="ray",
        )
    if report is not None:
        report(run)
    return info


def extract_on_ray(
    dataset: Dataset,
    model_spec: str,
    *,
    address: str | None = None,
    task: str = "classification",
    layer: str | None = None,
    name: str | None = None,
    weights: str | None = None,
    batch_size: int = DEFAULT_EXTRACT_BATCH_SIZE,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    backend: str = DEFAULT_BACKEND,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    progress: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    report: Callable[[RayRunReport], None] | None = None,
) -> list[EmbeddingInfo]:
    """:func:`shoal.workflows.extract.extract_dataset` on the Ray cluster at ``address``.

    Each actor loads the user's model from ``model_spec`` (and ``weights``) itself, so those
    files must be at the same path on every node, like the images. The layer and the backend
    (:func:`shoal.embedding.extract.extraction_backend`: the conversion is tried here) are
    resolved once, here, and every actor uses them.
    """
    from shoal.embedding.extract import extraction_backend, load_user_model, resolve_layer
    from shoal.embedding.pipeline import ProgressReporter
    from shoal.workflows.extract import (
        default_extract_name,
        image_inputs,
        label_boxes_of,
        publish_extracted,
    )

    if not dataset.has_images:
        raise StoreError(f"dataset {dataset.name!r} has no images to run a model on")
    user_model = load_user_model(model_spec, weights=weights)
    paths, sample_ids = image_inputs(dataset)
    ray = _import_ray()
    name = name or default_extract_name(model_spec)
    started = time.perf_counter()
    with dataset.computing(name):
        metadata: dict[str, Any] = {**user_model.describe(), "task": task, "engine": "ray"}
        boxes = None
        if task == "detection":
            boxes = label_boxes_of(dataset, sample_ids)
        else:
            layer = resolve_layer(user_model, task=task, layer=layer, images=paths[:1])  # type: ignore[arg-type]
            backend = extraction_backend(
                user_model,
                paths,
                task=task,  # type: ignore[arg-type]
                layer=layer,
                backend=backend,
                device="cpu",
            )
            metadata.update(layer=layer, max_elements=max_elements)
        metadata.update(backend="torch" if task == "detection" else backend, precision="fp32")
        reporter = ProgressReporter(len(paths), progress, should_stop=should_stop)
        reporter.start()
        run = _start(ray, address, actors, cpus_per_actor, 0.0)
        images, box_vectors, layers = _map_image_groups(
            ray,
            paths,
            boxes,
            _ExtractActor,
            {
                "model_spec": model_spec,
                "weights": weights,
                "task": task,
                "layer": layer,
                "batch_size": batch_size,
                "max_elements": max_elements,
                "backend": "torch" if task == "detection" else backend,
                "threads": _threads(cpus_per_actor, 0.0),
            },
            run=run,
            reporter=reporter,
            cpus_per_actor=cpus_per_actor,
            gpus_per_actor=0.0,
        )
        if task == "detection":
            image_layer, box_layer = layers[0].split("|")
            metadata.update(layer=image_layer, box_layer=box_layer)
        run.seconds = time.perf_counter() - started
        written = publish_extracted(
            dataset, name, model_spec, metadata, images, sample_ids, box_vectors
        )
    if report is not None:
        report(run)
    return written


def _start(
    ray: Any, address: str | None, actors: int | None, cpus_per_actor: float, gpus_per_actor: float
) -> RayRunReport:
    """Connect to the cluster (``address``, else SHOAL_RAY_ADDRESS, else a local Ray) and size
    the actor pool."""
    address = address or default_address()
    _connect(ray, address)
    return RayRunReport(
        address=address or "local",
        actors=actors or _default_actors(ray, cpus_per_actor, gpus_per_actor),
    )
