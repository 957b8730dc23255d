"""Object-level embeddings: one vector per labelled or predicted box, as two-stage detectors pool them.

``method="roi_align"`` (default) runs the backbone once per image and pools every box's region
from the final feature map with :func:`torchvision.ops.roi_align`:

* the image is resized, aspect kept and nothing cropped, so its shorter side is ``short_side``
  (default ``ROI_SHORT_SIDE`` = 600 px) and its longer side at most ``ROI_MAX_SIDE`` = 1000 px:
  Faster R-CNN's setting for an ImageNet-224 backbone. At the model's own 224 px a feature cell
  (stride 32) spans about 70 px of a 500 px photo, most boxes cover one to three cells, and the
  pooled vectors mostly say which image a box is in (on the test photos 92% of each box's three
  nearest boxes came from its own image, and person boxes found fewer person neighbours than
  chance); at 600 px boxes get enough cells of their own;
* it is padded at the bottom and right with the normalisation mean (zeros after normalising) to a
  multiple of the feature stride; images are batched only with others of the same padded size,
  so a vector never depends on what else was in its batch;
* each box, scaled to the resized image, is pooled from the (C, h, w) map on an
  ``ROI_OUTPUT_SIZE`` x ``ROI_OUTPUT_SIZE`` grid (``spatial_scale`` = 1 / stride,
  ``sampling_ratio=2``, ``aligned=True``), and the grid goes through the model's own pooling
  (``model.pool``: a global average for EfficientNet), so box vectors live in the pre-logits space.

``method="crop"`` cuts a square around each box (its longer side plus ``margin`` of it on each
side, centred on the box; outside the image filled with the normalisation mean), resizes it to
the model input and embeds it like any image. It sees each object at the model's scale but costs
one forward pass per box.

Both methods also return one vector per image, made in the same data pass with the normal
preprocessing (shorter side resize, centre crop, ``model.features``), so it equals what
``embed_paths`` gives and can stand in for the dataset's image-level set. (The global average of
the 600 px map is a different vector: cosine about 0.6 to the 224 px one on the test photos.)

Boxes are xyxy pixels of the upright image (EXIF orientation applied), as in ``objects.parquet``.

>>> from embedding import create_model
>>> boxes = [np.array([[10, 20, 200, 300.]])]                                # doctest: +SKIP
>>> objects, images = embed_objects(["street.jpg"], boxes, create_model())   # doctest: +SKIP
>>> objects.shape, images.shape                                              # doctest: +SKIP
((1, 1280), (1, 1280))
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from shoal.embedding.backends import Embedder, create_embedder
from shoal.embedding.models import DataConfig, EmbeddingModel
from shoal.embedding.pipeline import (
    DECODE_AHEAD,
    Progress,
    ProgressReporter,
    default_num_workers,
    prefetched,
)
from shoal.embedding.preprocess import (
    RESAMPLE,
    ImageDecodeError,
    load_image,
    resize_crop,
    scale_size,
)

METHODS = ("roi_align", "crop")
#: roi_align input size (Ren et al. 2015, Faster R-CNN): shorter side, cap on the longer side.
ROI_SHORT_SIDE = 600
ROI_MAX_SIDE = 1000
ROI_OUTPUT_SIZE = 7
ROI_SAMPLING_RATIO = 2
#: crop: context added on each side of the box, as a fraction of its longer side.
CROP_MARGIN = 0.1

ProgressCallback = Callable[[Progress], None]


# --------------------------------------------------------------------------- geometry


def resized_size(
    width: int, height: int, *, short_side: int = ROI_SHORT_SIDE, max_side: int = ROI_MAX_SIDE
) -> tuple[int, int]:
    """(width, height) after scaling the shorter side to ``short_side``, the longer one capped.

    >>> resized_size(500, 375)
    (800, 600)
    >>> resized_size(3000, 500)
    (1000, 167)
    """
    scale = short_side / min(width, height)
    if max(width, height) * scale > max_side:
        scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _padded(size: int, stride: int) -> int:
    return int(math.ceil(size / stride) * stride)


def _upright_size(path: str) -> tuple[int, int]:
    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _mean_colour(config: DataConfig) -> tuple[int, int, int]:
    return tuple(int(round(255 * m)) for m in config.mean)  # type: ignore[return-value]


def square_crop(
    image: Image.Image,
    box: Sequence[float],
    *,
    margin: float = CROP_MARGIN,
    fill: tuple[int, int, int] = (0, 0, 0),
) -> Image.Image:
    """The square around ``box`` (xyxy) with ``margin`` x its longer side added on each side.

    Parts outside the image are filled with ``fill``.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0, 1.0) * (1.0 + 2.0 * margin)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left, top = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    size = max(1, int(round(side)))
    inside = (
        max(left, 0),
        max(top, 0),
        min(left + size, image.width),
        min(top + size, image.height),
    )
    canvas = Image.new("RGB", (size, size), fill)
    if inside[2] > inside[0] and inside[3] > inside[1]:
        canvas.paste(image.crop(inside), (inside[0] - left, inside[1] - top))
    return canvas


# --------------------------------------------------------------------------- decoding workers


class _ResizedImages(TorchDataset):
    """Item i: (i, (padded_h, padded_w, 3) uint8 for the boxes, (H, W, 3) uint8 at the model's
    input with the normal preprocessing, why decoding failed or None)."""

    def __init__(
        self,
        paths: Sequence[str],
        sizes: Sequence[tuple[int, int]],
        stride: int,
        config: DataConfig,
    ) -> None:
        self.paths = paths
        self.sizes = sizes
        self.stride = stride
        self.config = config

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor, str | None]:
        width, height = self.sizes[index]
        canvas = np.empty(
            (_padded(height, self.stride), _padded(width, self.stride), 3), dtype=np.uint8
        )
        canvas[:] = _mean_colour(self.config)
        whole = np.zeros((*self.config.image_size, 3), dtype=np.uint8)
        try:
            image = load_image(
                self.paths[index], min_short_side=max(min(width, height), scale_size(self.config))
            )
            whole = resize_crop(image, self.config)
            image = image.resize((width, height), RESAMPLE[self.config.interpolation])
            canvas[:height, :width] = np.asarray(image, dtype=np.uint8)
            return index, torch.from_numpy(canvas), torch.from_numpy(whole), None
        except ImageDecodeError as error:
            return index, torch.from_numpy(canvas), torch.from_numpy(whole), error.reason


class _Crops(TorchDataset):
    """Item i: (i, (n_boxes, H, W, 3) crops, (H, W, 3) whole image, why decoding failed or None)."""

    def __init__(
        self, paths: Sequence[str], boxes: Sequence[np.ndarray], config: DataConfig, margin: float
    ) -> None:
        self.paths = paths
        self.boxes = boxes
        self.config = config
        self.margin = margin

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor, str | None]:
        height, width = self.config.image_size
        boxes = self.boxes[index]
        try:
            image = load_image(self.paths[index])
        except ImageDecodeError as error:
            empty = torch.zeros((len(boxes), height, width, 3), dtype=torch.uint8)
            return index, empty, torch.zeros((height, width, 3), dtype=torch.uint8), error.reason
        fill = _mean_colour(self.config)
        resample = RESAMPLE[self.config.interpolation]
        crops = np.empty((len(boxes), height, width, 3), dtype=np.uint8)
        for row, box in enumerate(boxes):
            crop = square_crop(image, box, margin=self.margin, fill=fill)
            crops[row] = np.asarray(crop.resize((width, height), resample), dtype=np.uint8)
        whole = resize_crop(image, self.config)
        return index, torch.from_numpy(crops), torch.from_numpy(whole), None


def _first(items: list[Any]) -> Any:
    return items[0]


# --------------------------------------------------------------------------- kernel


def _check_boxes(boxes_per_image: Sequence[Any], n_images: int) -> list[np.ndarray]:
    if len(boxes_per_image) != n_images:
        raise ValueError(f"{n_images} images but boxes for {len(boxes_per_image)}")
    checked = []
    for index, boxes in enumerate(boxes_per_image):
        array = (
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
            if len(boxes)
            else np.empty((0, 4), np.float32)
        )
        if not np.isfinite(array).all():
            raise ValueError(f"image {index}: box coordinates must be finite")
        checked.append(array)
    return checked


def embed_objects(
    image_paths: Sequence[str | os.PathLike[str]],
    boxes_per_image: Sequence[np.ndarray],
    model: EmbeddingModel,
    *,
    method: str = "roi_align",
    batch_size: int = 8,
    num_workers: int | None = None,
    precision: str = "auto",
    backend: str | Embedder = "auto",
    short_side: int = ROI_SHORT_SIDE,
    max_side: int = ROI_MAX_SIDE,
    margin: float = CROP_MARGIN,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed every box, and every whole image with the normal preprocessing.

    boxes_per_image: one (n_i, 4) array of xyxy pixel boxes per image (n_i may be 0).
    Returns (object_vectors, image_vectors): (sum n_i, dim) float32 in image-then-box order, and
    (n_images, dim) float32. ``batch_size`` counts images for ``roi_align`` and crops for
    ``crop``; ``short_side`` and ``max_side`` set the roi_align input size, ``margin`` the crop
    context. ``backend``: "auto" (OpenVINO on x86 CPUs: the feature map, the crops and the
    whole images; ROI-Align in torch), "torch", "openvino", or an
    :class:`~shoal.embedding.backends.Embedder` already made for ``model`` (then ``precision`` is
    its own; for roi_align make it with ``feature_map=True``). Raises ImageDecodeError naming a
    file that cannot be decoded, EmbeddingCancelled when ``should_stop()`` turns true (checked
    before every batch).

    >>> objects, images = embed_objects(paths, boxes, create_model())          # doctest: +SKIP
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if short_side < 1 or max_side < short_side:
        raise ValueError(f"need 1 <= short_side <= max_side, got {short_side} and {max_side}")
    paths = [os.fspath(p) for p in image_paths]
    boxes = _check_boxes(boxes_per_image, len(paths))
    embedder = (
        create_embedder(
            model, backend=backend, precision=precision, feature_map=method == "roi_align"
        )
        if isinstance(backend, str)
        else backend
    )
    workers = default_num_workers(model.device) if num_workers is None else num_workers
    reporter = ProgressReporter(len(paths), progress, should_stop=should_stop)
    reporter.start()
    if method == "crop":
        return _embed_crops(
            paths,
            boxes,
            embedder,
            batch_size=batch_size,
            workers=workers,
            margin=margin,
            reporter=reporter,
        )
    originals = [_upright_size(p) for p in paths]
    sizes = [resized_size(w, h, short_side=short_side, max_side=max_side) for w, h in originals]
    scaled = [
        image_boxes * np.array([w / ow, h / oh, w / ow, h / oh], dtype=np.float32)
        for image_boxes, (w, h), (ow, oh) in zip(boxes, sizes, originals, strict=True)
    ]
    return _embed_roi_align(
        paths,
        scaled,
        sizes,
        embedder,
        batch_size=batch_size,
        workers=workers,
        reporter=reporter,
    )


def _loader(
    dataset: TorchDataset,
    batches: list[list[int]],
    workers: int,
    device: torch.device,
    collate: Callable[[list[Any]], Any],
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if workers > 0 else None,
    )


def _stack(
    items: list[tuple[int, torch.Tensor, torch.Tensor, str | None]],
) -> tuple[list[int], torch.Tensor, torch.Tensor, list[str | None]]:
    return (
        [i for i, _, _, _ in items],
        torch.stack([p for _, p, _, _ in items]),
        torch.stack([w for _, _, w, _ in items]),
        [e for _, _, _, e in items],
    )


def _offsets(boxes: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([len(b) for b in boxes])]).astype(np.int64)


def _embed_roi_align(
    paths: list[str],
    boxes: list[np.ndarray],
    sizes: list[tuple[int, int]],
    embedder: Embedder,
    *,
    batch_size: int,
    workers: int,
    reporter: ProgressReporter,
) -> tuple[np.ndarray, np.ndarray]:
    """boxes: per image, xyxy in pixels of the image resized to ``sizes``."""
    model = embedder.model
    device = model.device
    stride = int(model.feature_stride)
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (width, height) in enumerate(sizes):
        groups.setdefault((_padded(height, stride), _padded(width, stride)), []).append(index)
    batches = [
        members[i : i + batch_size]
        for members in groups.values()
        for i in range(0, len(members), batch_size)
    ]

    offsets = _offsets(boxes)
    object_vectors = np.empty((int(offsets[-1]), model.dim), dtype=np.float32)
    image_vectors = np.empty((len(paths), model.dim), dtype=np.float32)
    dataset = _ResizedImages(paths, sizes, stride, model.data_config)
    iterator: Any = iter(_loader(dataset, batches, workers, device, _stack))
    if workers == 0 and embedder.backend == "openvino":
        # Decode the next images while OpenVINO computes this batch's feature maps (48 real
        # photos, 2 cores, alternating runs: 10.1-12.1 img/s inline, 10.5-14.4 ahead).
        iterator = prefetched((batch for batch in iterator), DECODE_AHEAD)
    try:
        for batch in batches:
            reporter.check()
            indices, pixels, wholes, errors = next(iterator)
            if indices != batch:  # pragma: no cover - invariant of the batch sampler
                raise RuntimeError("decoding workers returned batches out of order")
            for index, reason in zip(indices, errors, strict=True):
                if reason is not None:
                    raise ImageDecodeError(paths[index], reason)
            # Not overlapped with the feature map: two compiled models' streams would contend
            # for the same cores (measured: 2-3x slower on 2 cores).
            image_vectors[indices] = embedder.embed(wholes)
            counts = [len(boxes[i]) for i in indices]
            if sum(counts):
                vectors = _pool_boxes(embedder, pixels, [boxes[i] for i in indices])
                for index, chunk in zip(
                    indices, np.split(vectors, np.cumsum(counts)[:-1]), strict=True
                ):
                    object_vectors[offsets[index] : offsets[index + 1]] = chunk
            reporter.advance(len(indices))
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None) or getattr(iterator, "close", None)
        if shutdown is not None:
            shutdown()
    return object_vectors, image_vectors


def _pool_boxes(embedder: Embedder, pixels: torch.Tensor, boxes: list[np.ndarray]) -> np.ndarray:
    """(batch, H, W, 3) uint8 padded images and their boxes in those pixels -> (n_boxes, dim) float32."""
    from torchvision.ops import roi_align

    model = embedder.model
    fmap = embedder.feature_map(pixels)
    device = fmap.device
    rois = []
    for position, image_boxes in enumerate(boxes):
        if len(image_boxes):
            corners = torch.from_numpy(np.ascontiguousarray(image_boxes, dtype=np.float32)).to(
                device
            )
            batch_column = torch.full((len(corners), 1), float(position), device=device)
            rois.append(torch.cat([batch_column, corners], dim=1))
    with torch.inference_mode():
        # Padded sizes are multiples of the stride, so one scale serves x and y.
        spatial_scale = fmap.shape[-1] / pixels.shape[2]
        pooled = roi_align(
            fmap,
            torch.cat(rois),
            output_size=ROI_OUTPUT_SIZE,
            spatial_scale=spatial_scale,
            sampling_ratio=ROI_SAMPLING_RATIO,
            aligned=True,
        )
        return model.pool(pooled).float().cpu().numpy()


def _embed_crops(
    paths: list[str],
    boxes: list[np.ndarray],
    embedder: Embedder,
    *,
    batch_size: int,
    workers: int,
    margin: float,
    reporter: ProgressReporter,
) -> tuple[np.ndarray, np.ndarray]:
    model = embedder.model
    offsets = _offsets(boxes)
    object_vectors = np.empty((int(offsets[-1]), model.dim), dtype=np.float32)
    image_vectors = np.empty((len(paths), model.dim), dtype=np.float32)
    loader = _loader(
        _Crops(paths, boxes, model.data_config, margin),
        [[i] for i in range(len(paths))],
        workers,
        model.device,
        _first,
    )
    # Crops and whole images wait here until a full batch is ready: (destination, rows, pixels).
    pending: list[tuple[np.ndarray, int, torch.Tensor]] = []
    waiting = 0
    finished_images = 0

    def flush() -> None:
        nonlocal waiting
        if not pending:
            return
        vectors = embedder.embed(torch.cat([pixels for _, _, pixels in pending]))
        row = 0
        for destination, first, pixels in pending:
            destination[first : first + len(pixels)] = vectors[row : row + len(pixels)]
            row += len(pixels)
        pending.clear()
        waiting = 0

    iterator = iter(loader)
    try:
        for _ in range(len(paths)):
            reporter.check()
            index, crops, whole, reason = next(iterator)
            if reason is not None:
                raise ImageDecodeError(paths[index], reason)
            pending.append((image_vectors, index, whole[None]))
            waiting += 1
            for start in range(0, len(crops), batch_size):
                chunk = crops[start : start + batch_size]
                pending.append((object_vectors, int(offsets[index]) + start, chunk))
                waiting += len(chunk)
                if waiting >= batch_size:
                    flush()
            finished_images += 1
            if waiting >= batch_size:
                flush()
            if not pending:
                reporter.advance(finished_images - reporter.done)
        flush()
        reporter.advance(len(paths) - reporter.done)
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
    return object_vectors, image_vectors
