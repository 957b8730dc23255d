"""Batched, resumable embedding of image files or in-memory images.

Decoding and resizing produce uint8 batches; the model side normalises them and runs the network
on an inference backend (:mod:`shoal.embedding.backends`: OpenVINO on x86 CPUs, else torch
channels-last, BatchNorm folded, bf16/fp16 autocast where it pays). On a GPU, worker processes
decode ahead while the GPU computes; on a CPU, threads decode each batch between model calls
while a reader thread fetches the next files, because a decoding process next to the model's
OpenMP threads slows both (see ``default_num_workers``). Memory stays bounded by a few batches.
:func:`shoal.embedding.inference.embed_batch` is the pure per-batch step; a distributed engine can map
it over batches and write the same output.

>>> from embedding import create_model
>>> model = create_model("efficientnet_lite0")                         # doctest: +SKIP
>>> vectors = embed_paths(["a.jpg", "b.png"], model)                   # doctest: +SKIP
>>> vectors.shape                                                      # doctest: +SKIP
(2, 1280)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from shoal.embedding.backends import Embedder, Pending, create_embedder, resolve_backend
from shoal.embedding.backends import resolve_precision as resolve_backend_precision
from shoal.embedding.defaults import DEFAULT_BATCH_SIZE
from shoal.embedding.models import DataConfig, EmbeddingModel
from shoal.embedding.preprocess import (
    ImageDecodeError,
    load_image,
    resize_crop,
    rgb_array,
    scale_size,
)

CHECKPOINT_FORMAT = 1
_READ_AHEAD = 2  # batches of raw file bytes read ahead by the in-process decoder
DECODE_AHEAD = 2  # decoded batches kept ready beside an asynchronous backend
T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """Images finished (resumed ones included) out of ``total``; speed counts this run only.

    eta_seconds is None until the first batch of this run finishes.
    """

    done: int
    total: int
    images_per_second: float
    eta_seconds: float | None


class EmbeddingCancelled(RuntimeError):
    """``should_stop`` asked the run to stop; finished batches stay checkpointed."""


# --------------------------------------------------------------------------- decoding workers


class _DecodedFiles(Dataset):
    """Item i: (i, (H, W, 3) uint8 pixels at the model's input size, why decoding failed or None).

    Worker processes take whole items; the in-process decoder calls ``decode`` from threads and
    ``resize`` on the main thread, where torch's intra-op threads are its own.
    """

    def __init__(self, paths: Sequence[str], config: DataConfig) -> None:
        self.paths = paths
        self.config = config
        self.short_side = scale_size(config)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, str | None]:
        _, pixels, error = self.decode(index, None)
        return index, self.resize(pixels), error

    def decode(self, index: int, data: bytes | None) -> tuple[int, np.ndarray | None, str | None]:
        """(index, full-size (h, w, 3) uint8 RGB or None, why decoding failed or None)."""
        try:
            image = load_image(self.paths[index], data=data, min_short_side=self.short_side)
            return index, rgb_array(image), None
        except ImageDecodeError as error:
            return index, None, error.reason

    def resize(self, pixels: np.ndarray | None) -> torch.Tensor:
        if pixels is None:
            height, width = self.config.image_size
            return torch.zeros((height, width, 3), dtype=torch.uint8)
        return torch.from_numpy(resize_crop(pixels, self.config))


def _collate(
    items: list[tuple[int, torch.Tensor, str | None]],
) -> tuple[list[int], torch.Tensor, list[str | None]]:
    return [i for i, _, _ in items], torch.stack([p for _, p, _ in items]), [e for _, _, e in items]


_Batch = tuple[list[int], torch.Tensor, list[str | None]]


def _decoded_batches(
    names: Sequence[str],
    config: DataConfig,
    spans: list[tuple[int, int]],
    workers: int,
    pin_memory: bool,
    threads: int | None = None,
    keep_ahead: bool = False,
) -> Generator[_Batch, None, None]:
    """Decoded (indices, (batch, H, W, 3) uint8, errors) per span, in order.

    With ``workers`` > 0, worker processes decode ahead of the model (two batches each). With 0,
    a thread reads the next batches' file bytes ahead, and each batch is decoded by a pool of
    ``threads`` threads (default: as wide as torch's intra-op pool; Pillow releases the GIL while
    decoding and resizing): when asked, so that decoding and a synchronous model take turns on
    all cores, or with ``keep_ahead`` continuously, up to ``DECODE_AHEAD`` batches ahead, beside an
    asynchronous model (OpenVINO), which then never waits for the next batch (on 2 cores, 256
    real photos: 262 img/s against 241 when decoding waited to be asked).
    """
    if workers == 0 and keep_ahead:
        yield from prefetched(
            _decoded_batches(names, config, spans, 0, pin_memory, threads), DECODE_AHEAD
        )
        return
    files = _DecodedFiles(names, config)
    if workers > 0:
        loader = DataLoader(
            files,
            batch_sampler=[list(range(start, end)) for start, end in spans],
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=pin_memory,
            prefetch_factor=2,
        )
        iterator = iter(loader)
        try:
            yield from iterator
        finally:
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        return

    def read(span: tuple[int, int]) -> list[bytes | None]:
        contents: list[bytes | None] = []
        for index in range(*span):
            try:
                contents.append(Path(names[index]).read_bytes())
            except OSError:
                contents.append(None)  # decode() reopens the path and reports the error
        return contents

    # One thread reads the next batches' bytes while the model runs (I/O overlaps, CPU does not).
    with (
        ThreadPoolExecutor(1) as reader,
        ThreadPoolExecutor(threads or max(1, torch.get_num_threads())) as pool,
    ):
        ahead = deque(reader.submit(read, span) for span in spans[:_READ_AHEAD])
        for position, (start, end) in enumerate(spans):
            contents = ahead.popleft().result()
            if position + _READ_AHEAD < len(spans):
                ahead.append(reader.submit(read, spans[position + _READ_AHEAD]))
            decoded = pool.map(files.decode, range(start, end), contents)
            batch = _collate([(i, files.resize(pixels), error) for i, pixels, error in decoded])
            yield (batch[0], batch[1].pin_memory() if pin_memory else batch[1], batch[2])


def prefetched(items: Generator[T, None, None], depth: int) -> Generator[T, None, None]:
    """``items``, produced by a thread up to ``depth`` ahead of the consumer. An exception in the
    producer is raised here, at the item it stopped at; closing this generator stops the
    producer (it finishes the item in hand) and closes ``items``."""
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            with contextlib.closing(items):
                for item in items:
                    while not stop.is_set():
                        try:
                            handoff.put(("item", item), timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            handoff.put(("end", None))
        except BaseException as error:  # handed to the consumer, raised there
            handoff.put(("error", error))

    producer = threading.Thread(target=produce, name="shoal-decode-ahead", daemon=True)
    producer.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while producer.is_alive():  # unblock a producer waiting to hand over an item
            with contextlib.suppress(queue.Empty):
                handoff.get(timeout=0.1)
        producer.join()


def decode_threads(backend: str) -> int:
    """Threads that decode between batches in-process: as many as torch's intra-op pool for the
    synchronous torch backend (the model waits meanwhile); a quarter of the cores (at least one)
    for OpenVINO, whose streams keep running on the others. Decoding a 500x375 JPEG costs about
    1.5 ms of one core against 6.6 core-ms for Lite0 on OpenVINO f32, so a fifth of the cores
    keeps up; on 2 cores one thread gave 265 img/s against 245 for two (256 real photos)."""
    if backend != "openvino":
        return max(1, torch.get_num_threads())
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    return max(1, cores // 4)


def default_num_workers(device: torch.device | str = "cpu") -> int:
    """Decoding processes: on a GPU, up to 8 feed it while it computes; on the CPU none.

    On the CPU the model already uses every core, and a decoding process beside it preempts one
    of its OpenMP threads, which stalls the others: on 2 cores, paired runs gave in-process
    decoding (threads, between batches) 1.25x the throughput of one worker process
    (benchmarks/bench_embed.py).
    """
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    if torch.device(device).type == "cuda":
        return max(1, min(8, cores - 1))
    return 0


# --------------------------------------------------------------------------- checkpoints


class Checkpoints(Protocol):
    """Where finished batches are kept so a rerun skips them (``shoal.store.BatchCheckpoints``
    is the store's; any object with these two methods works)."""

    def load(self, start: int, end: int, dim: int) -> np.ndarray | None: ...

    def save(self, start: int, end: int, vectors: np.ndarray) -> None: ...


def checkpoint_manifest(
    paths: Sequence[str | os.PathLike[str]],
    model: EmbeddingModel,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    precision: str = "auto",
    backend: str = "auto",
) -> dict[str, Any]:
    """What the batches of an :func:`embed_paths` run mean: checkpoints of a run with another
    manifest (model, backend, precision, batch size, paths) must not be reused. Give the
    backend and precision the run really uses (``Embedder.backend`` / ``.precision``)."""
    backend = resolve_backend(backend, model.device)
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.fspath(path).encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return {
        "format": CHECKPOINT_FORMAT,
        "model": model.name,
        "model_source": model.source,
        "dim": model.dim,
        "backend": backend,
        "precision": resolve_backend_precision(backend, precision, model.device),
        "data_config": model.data_config.to_dict(),
        "count": len(paths),
        "batch_size": batch_size,
        "paths_sha256": digest.hexdigest(),
    }


# --------------------------------------------------------------------------- public entry points


class ProgressReporter:
    """Turns finished batches into ``Progress`` calls and polls ``should_stop`` between them.

    ``done`` counts items already finished before this run (resumed checkpoints): they are
    reported as done but left out of the speed.
    """

    def __init__(
        self,
        total: int,
        progress: Callable[[Progress], None] | None,
        *,
        done: int = 0,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.total = total
        self.done = done
        self.computed = 0
        self.progress = progress
        self.should_stop = should_stop
        self.started = time.perf_counter()

    def start(self) -> None:
        self.started = time.perf_counter()
        if self.progress is not None:
            self.progress(
                Progress(self.done, self.total, 0.0, None if self.done < self.total else 0.0)
            )

    def check(self) -> None:
        """Raise ``EmbeddingCancelled`` when ``should_stop()`` says so."""
        if self.should_stop is not None and self.should_stop():
            raise EmbeddingCancelled(f"stopped after {self.done} of {self.total} images")

    def advance(self, count: int) -> None:
        self.done += count
        self.computed += count
        if self.progress is None:
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        speed = self.computed / elapsed
        self.progress(Progress(self.done, self.total, speed, (self.total - self.done) / speed))


def _batches(total: int, batch_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + batch_size, total)) for start in range(0, total, batch_size)]


def unfinished_batches(
    vectors: np.ndarray, batch_size: int, checkpoints: Checkpoints | None
) -> list[tuple[int, int]]:
    """The (start, end) batches of ``vectors``' rows still to embed; the batches ``checkpoints``
    holds are copied into ``vectors``. Every engine cuts the rows this way, so one resumes
    another's run."""
    spans = _batches(len(vectors), batch_size)
    if checkpoints is None:
        return spans
    pending = []
    for start, end in spans:
        stored = checkpoints.load(start, end, vectors.shape[1])
        if stored is None:
            pending.append((start, end))
        else:
            vectors[start:end] = stored
    return pending


def embed_paths(
    paths: Sequence[str | os.PathLike[str]],
    model: EmbeddingModel,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int | None = None,
    precision: str = "auto",
    backend: str | Embedder = "auto",
    checkpoints: Checkpoints | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Embed image files: (n_paths, model.dim) float32 pre-logits vectors, in ``paths`` order.

    ``num_workers``: decoding processes that work ahead of the model; 0 decodes in this process
    with threads between batches (reading files ahead); None picks per device
    (``default_num_workers``). ``precision``: "auto" (fp16 on CUDA, bf16 on a CPU with native
    bf16, else fp32), "fp32", "bf16" or "fp16" (CUDA only); on the openvino backend "auto" is
    "fp32" (see :mod:`shoal.embedding.backends`). ``backend``: "auto", "torch", "openvino", or an
    :class:`~shoal.embedding.backends.Embedder` already made (then ``precision`` is its own).
    With ``checkpoints`` every finished batch is saved there, and the batches it already holds
    are not computed again: give it the :func:`checkpoint_manifest` of this run, so that
    batches of another run are refused (``shoal.store.BatchCheckpoints`` does).
    ``out`` may be a preallocated (n_paths, dim) float32 array (e.g. a memmap).
    Raises ImageDecodeError naming the first file that cannot be decoded, EmbeddingCancelled
    when ``should_stop()`` turns true.

    >>> vectors = embed_paths(paths, model, checkpoints=dataset.batch_checkpoints(
    ...     "lite0", checkpoint_manifest(paths, model)))                        # doctest: +SKIP
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    names = [os.fspath(p) for p in paths]
    device = model.device
    total = len(names)
    vectors = _output(out, total, model.dim)
    pending = unfinished_batches(vectors, batch_size, checkpoints)
    reporter = ProgressReporter(
        total,
        progress,
        done=total - sum(end - start for start, end in pending),
        should_stop=should_stop,
    )
    reporter.start()
    if not pending:
        return vectors
    embedder = (
        create_embedder(model, backend=backend, precision=precision)
        if isinstance(backend, str)
        else backend
    )

    workers = default_num_workers(device) if num_workers is None else num_workers
    batches = _decoded_batches(
        names,
        model.data_config,
        pending,
        workers,
        device.type == "cuda",
        threads=decode_threads(embedder.backend),
        keep_ahead=embedder.backend == "openvino",
    )
    in_flight: tuple[int, int, Pending] | None = None

    def finish() -> None:
        # The batch submitted last is collected after the next one is decoded, so decoding
        # overlaps inference on a backend that runs asynchronously (OpenVINO).
        nonlocal in_flight
        if in_flight is None:
            return
        first, last, running = in_flight
        in_flight = None
        result = running.result()
        if checkpoints is not None:
            checkpoints.save(first, last, result)
        vectors[first:last] = result
        reporter.advance(last - first)

    with contextlib.closing(batches):
        for start, end in pending:
            try:
                reporter.check()
            except EmbeddingCancelled:
                finish()  # keep the batch already computed
                raise
            indices, pixels, errors = next(batches)
            finish()
            if indices[0] != start or len(indices) != end - start:  # pragma: no cover - invariant
                raise RuntimeError("decoding returned batches out of order")
            for index, reason in zip(indices, errors, strict=True):
                if reason is not None:
                    raise ImageDecodeError(names[index], reason)
            in_flight = (start, end, embedder.submit(pixels))
        finish()
    return vectors


def embed_images(
    images: Sequence[Image.Image | np.ndarray],
    model: EmbeddingModel,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    precision: str = "auto",
    backend: str | Embedder = "auto",
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Embed in-memory images: (n_images, model.dim) float32 pre-logits vectors.

    images: PIL images or uint8 arrays, (H, W) grey or (H, W, 3|4) RGB(A); float arrays in [0, 1]
    are scaled to 0-255. Transparent areas are composited on white. ``precision`` and
    ``backend`` as in :func:`embed_paths`.

    >>> from skimage.data import chelsea                                # doctest: +SKIP
    >>> embed_images([chelsea()], create_model()).shape                 # doctest: +SKIP
    (1, 1280)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    embedder = (
        create_embedder(model, backend=backend, precision=precision)
        if isinstance(backend, str)
        else backend
    )
    total = len(images)
    vectors = np.empty((total, model.dim), dtype=np.float32)
    reporter = ProgressReporter(total, progress, should_stop=should_stop)
    reporter.start()

    for start, end in _batches(total, batch_size):
        reporter.check()
        pixels = np.stack([resize_crop(images[i], model.data_config) for i in range(start, end)])
        vectors[start:end] = embedder.embed(pixels)
        reporter.advance(end - start)
    return vectors


def _output(out: np.ndarray | None, total: int, dim: int) -> np.ndarray:
    if out is None:
        return np.empty((total, dim), dtype=np.float32)
    if out.shape != (total, dim) or out.dtype != np.float32:
        raise ValueError(
            f"out must be a ({total}, {dim}) float32 array, got {out.shape} {out.dtype}"
        )
    return out
