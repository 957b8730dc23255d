"""Batched extraction of one layer's activations from a user's model, one vector per image.

Tasks choose the default layer and how a spatial map is pooled:

- ``classification``: the input of the last fully connected layer to run (the pre-logits, e.g.
  ResNet-50's pooled 2048-d vector); a spatial layer is globally average-pooled.
- ``segmentation``: torchvision DeepLabV3 / FCN / LRASPP use their backbone's last stage; any
  other encoder-decoder uses its bottleneck, the most compact spatial map (see
  :func:`shoal.embedding.extract.layers.bottleneck_layer`). The map is average-pooled, channels kept,
  halving height and width until it has at most ``max_elements`` values, then flattened.
- ``detection``: the pooled backbone maps the RPN runs on (see
  :mod:`shoal.embedding.extract.detection`); :func:`extract_detection` also gives per-box vectors.

Deterministic: eval mode, inference mode, float32, fixed pooling plan for the whole run.

Backends (``backend=``, as ``shoal embed``): on an x86 CPU the model up to the chosen layer is
converted for OpenVINO (f32; :class:`shoal.embedding.backends.CompiledModule`), used only once it
gives torch's outputs on a check batch, and cached on disk by weights hash, layer and input shape;
pooling stays in torch. ``"auto"`` converts only for runs of at least
``AUTO_OPENVINO_MIN_IMAGES`` images, as conversion costs seconds (ResNet-50: 2.7 s, then 2.6x
torch fp32's rate, model only, on 2 cores). Where the layer does not convert
(and for TorchScript), the run falls back to torch with a one-line ``RuntimeWarning``. Detectors
(:func:`extract_detection`) run on torch: converted for OpenVINO (height and width dynamic), a
ResNet-50 FPN backbone ran 1.2-1.6x faster than torch alone, but end to end, with the RPN and
ROI heads in torch and a compilation for every new image size, no faster on 2 cores. Images of another shape than the first
(``resize="none"``) run on torch.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from shoal.embedding.backends import CompiledModule, resolve_backend
from shoal.embedding.defaults import AUTO_OPENVINO_MIN_IMAGES, DEFAULT_MAX_ELEMENTS
from shoal.embedding.extract.detection import (
    BOX_LAYER,
    BoxEmbeddings,
    DetectionEmbeddings,
    ImageDetections,
    as_label_boxes,
    check_two_stage_detector,
    detect_batch,
    image_tensor,
)
from shoal.embedding.extract.layers import (
    OUTPUT,
    LayerRef,
    as_tensor,
    bottleneck_layer,
    capture,
    classifier_input_layer,
    is_torchscript,
    parse_layer,
    probe_layers,
    segmentation_backbone_layer,
    torchscript_methods,
)
from shoal.embedding.extract.loading import UserModel
from shoal.embedding.extract.pooling import (
    SpatialPlan,
    TokenPooling,
    plan_spatial_pool,
    pool_activations,
)
from shoal.embedding.extract.preprocessing import (
    ImageInput,
    Preprocess,
    Preprocessing,
    preprocess_images,
)
from shoal.embedding.pipeline import Progress, ProgressReporter

Task = Literal["classification", "detection", "segmentation"]
TASKS: tuple[str, ...] = ("classification", "detection", "segmentation")
TORCHSCRIPT_DEFAULT_METHOD = "embed"


_DEFAULT_LAYERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], str]] = (
    weakref.WeakKeyDictionary()
)


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _unwrap(
    model: UserModel | nn.Module, preprocessing: Preprocessing | Preprocess | None
) -> tuple[nn.Module, Preprocess]:
    if isinstance(model, UserModel):
        return model.module, preprocessing if preprocessing is not None else model.transform()
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a UserModel or torch.nn.Module, got {type(model).__name__}")
    return model, preprocessing if preprocessing is not None else Preprocessing()


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")


@contextmanager
def _inference(module: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Eval mode on ``device`` under ``torch.inference_mode``; the train flag is restored after."""
    was_training = module.training
    module.eval()
    module.to(device)
    try:
        with torch.inference_mode():
            yield module
    finally:
        module.train(was_training)


def _spans(total: int, batch_size: int) -> list[tuple[int, int]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [(start, min(start + batch_size, total)) for start in range(0, total, batch_size)]


def _example_batch(
    images: Sequence[ImageInput] | None, preprocess: Preprocess, device: torch.device
) -> torch.Tensor:
    if images:
        tensors, _ = preprocess_images(images[:1], preprocess)
        return tensors[0][None].to(device)
    size = getattr(preprocess, "size", (224, 224))
    channels = len(getattr(preprocess, "mean", (0, 0, 0)))
    return torch.zeros(1, channels, *size, device=device)


def resolve_layer(
    model: UserModel | nn.Module,
    *,
    task: Task = "classification",
    layer: str | None = None,
    images: Sequence[ImageInput] | None = None,
    preprocessing: Preprocessing | Preprocess | None = None,
    device: str | torch.device | None = None,
) -> str:
    """The layer name :func:`extract_embeddings` uses: ``layer`` checked, or the task's default.

    Defaults need one probe forward pass, on the first of ``images`` when given (else a blank
    input of the preprocessing size). For detection the default is the RPN feature maps,
    reported as ``"backbone"``. TorchScript modules default to their ``embed`` method when they
    export one, else to their output. Raises LayerNotFoundError listing the valid names.

    >>> resolve_layer(torchvision.models.resnet50())                    # doctest: +SKIP
    'fc:input'
    """
    _check_task(task)
    module, preprocess = _unwrap(model, preprocessing)
    if layer is not None:
        return parse_layer(module, layer).name
    if is_torchscript(module):
        return (
            TORCHSCRIPT_DEFAULT_METHOD
            if TORCHSCRIPT_DEFAULT_METHOD in torchscript_methods(module)
            else OUTPUT
        )
    if task == "detection":
        check_two_stage_detector(module)
        return "backbone"
    if task == "segmentation":
        named = segmentation_backbone_layer(module)
        if named is not None:
            return named
    target = torch.device(device) if device is not None else default_device()
    with _inference(module, target):
        example = _example_batch(images, preprocess, target)
        # The choice depends on the architecture and the input shape only, not on pixel values.
        key = (task, tuple(example.shape))
        cached = _DEFAULT_LAYERS.setdefault(module, {})
        if key not in cached:
            records, output = probe_layers(module, example)
            if task == "classification":
                cached[key] = classifier_input_layer(module, records)
            else:
                cached[key] = bottleneck_layer(module, records, output, batch_size=example.shape[0])
    return cached[key]


class _LayerOutput(nn.Module):
    """The user's module up to one layer's activation, as one tensor: what OpenVINO converts."""

    def __init__(self, module: nn.Module, ref: LayerRef) -> None:
        super().__init__()
        self.module = module
        self.ref = ref

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return as_tensor(capture(self.module, self.ref, inputs), self.ref.name)


_COMPILED_LAYERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], Any]] = (
    weakref.WeakKeyDictionary()
)


def _fingerprint(module: nn.Module) -> tuple[tuple[int, int], ...]:
    """Changes when any weight is replaced or modified in place (tensor version counters)."""
    return tuple((t.data_ptr(), t._version) for t in module.state_dict().values())


def _compiled_layer(module: nn.Module, ref: LayerRef, example: torch.Tensor) -> CompiledModule:
    """The module up to ``ref`` on OpenVINO, kept per module object while its weights stay the
    same (a Ray actor calls once per group of images), else read from the disk cache."""
    memo = _COMPILED_LAYERS.setdefault(module, {})
    # As many threads as torch has here: a Ray actor given one CPU sets torch to one.
    threads = torch.get_num_threads()
    key = (ref.name, tuple(example.shape[1:]), threads)
    fingerprint = _fingerprint(module)
    kept = memo.get(key)
    if kept is not None and kept[0] == fingerprint:
        return kept[1]
    compiled = CompiledModule(
        _LayerOutput(module, ref).eval(),
        name=f"{type(module).__module__}.{type(module).__qualname__}:{ref.name}",
        example=example,
        num_threads=threads,
    )
    memo[key] = (fingerprint, compiled)
    return compiled


def _detectors_run_on_torch(backend: str, device: torch.device, *, stacklevel: int) -> None:
    """Detectors run on torch (module docstring); one line says so when OpenVINO is asked for
    by name where it could run."""
    if backend == "openvino" and resolve_backend(backend, device) == "openvino":
        warnings.warn(
            "OpenVINO does not run detectors (its backbone alone ran 1.2-1.6x faster, end to end "
            "no faster on 2 cores); extracting with torch",
            RuntimeWarning,
            stacklevel=stacklevel + 1,
        )


def _layer_runner(
    module: nn.Module,
    ref: LayerRef,
    images: Sequence[ImageInput],
    preprocess: Preprocess,
    *,
    backend: str,
    task: str,
    device: torch.device,
) -> tuple[Callable[[Any], torch.Tensor], str]:
    """(a function from a batch to the layer's activations, the backend it runs on). Only a
    conversion preprocesses an example (the first image)."""

    def on_torch(batch: Any) -> torch.Tensor:
        return as_tensor(capture(module, ref, batch), ref.name)

    chosen = resolve_backend(backend, device)  # refuses openvino on a GPU or where it is missing
    if task == "detection":  # a list of images of their own sizes, as extract_detection takes
        _detectors_run_on_torch(backend, device, stacklevel=3)
        return on_torch, "torch"
    if (
        chosen == "torch"
        or not images
        or (backend == "auto" and len(images) < AUTO_OPENVINO_MIN_IMAGES)
    ):
        return on_torch, "torch"
    why = None
    if is_torchscript(module):
        why = "a TorchScript module"
    else:
        try:
            compiled = _compiled_layer(module, ref, _example_batch(images, preprocess, device))
        except Exception as error:  # conversion fails with many types (tracing, frontends, check)
            why = f"{type(error).__name__}: {str(error)[:200]}"
    if why is not None:
        warnings.warn(
            f"OpenVINO cannot run layer {ref.name!r} of {type(module).__name__} ({why}); "
            "extracting with torch",
            RuntimeWarning,
            stacklevel=3,
        )
        return on_torch, "torch"

    def on_openvino(batch: Any) -> torch.Tensor:
        if tuple(batch.shape[1:]) != compiled.shape:  # an image of another size: torch
            return on_torch(batch)
        return compiled(batch)

    return on_openvino, "openvino"


def extraction_backend(
    model: UserModel | nn.Module,
    images: Sequence[ImageInput],
    *,
    task: Task = "classification",
    layer: str | None = None,
    preprocessing: Preprocessing | Preprocess | None = None,
    backend: str = "auto",
    device: str | torch.device | None = None,
) -> str:
    """The backend :func:`extract_embeddings` would run ``images`` on: "openvino" once the layer
    has converted and passed its check (the compiled graph is then cached on disk and in this
    process), else "torch" (with the same one-line warning). Callers that hand the work to others
    (Ray actors) decide here, once, and pass the answer on as ``backend``."""
    _check_task(task)
    module, preprocess = _unwrap(model, preprocessing)
    target = torch.device(device) if device is not None else default_device()
    if task == "detection" and layer in (None, "backbone") and not is_torchscript(module):
        return "torch"
    name = resolve_layer(
        module, task=task, layer=layer, images=images, preprocessing=preprocess, device=target
    )
    with _inference(module, target):
        return _layer_runner(
            module,
            parse_layer(module, name),
            images,
            preprocess,
            backend=backend,
            task=task,
            device=target,
        )[1]


def extract_embeddings(
    model: UserModel | nn.Module,
    images: Sequence[ImageInput],
    *,
    task: Task = "classification",
    layer: str | None = None,
    preprocessing: Preprocessing | Preprocess | None = None,
    batch_size: int = 16,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    token_pooling: TokenPooling = "mean",
    feature_level: str | None = None,
    device: str | torch.device | None = None,
    backend: str = "auto",
    details: dict[str, Any] | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """(n_images, dim) float32 vectors: one pooled layer activation per image, in input order.

    model: a :class:`UserModel` (its preprocessing applies) or a plain ``nn.Module``.
    images: PIL images, image file paths or uint8 arrays.
    layer: a name from :func:`list_layers` (``"avgpool"``, ``"fc:input"``, ``"encoder.bottleneck"``),
        or None for the task's default (:func:`resolve_layer`).
    preprocessing: overrides the model's; ImageNet 224 px for a bare module. Not used for
        detection, where the detector's own transform normalises and resizes.
    max_elements: segmentation only, the most values per vector after pooling.
    token_pooling: (batch, tokens, channels) layers: ``"mean"`` of tokens or ``"cls"`` (token 0).
    feature_level: detection only, one backbone level (``"0"``, ``"pool"``); None concatenates all.
    device: default CUDA when available, else CPU; the model is moved there.
    backend: "auto", "torch" or "openvino" (see the module docstring); ``details``, when given,
        receives the ``backend`` and ``precision`` the run used.
    progress: called with :class:`shoal.embedding.pipeline.Progress` after each batch.
    should_stop: polled before each batch; True raises ``EmbeddingCancelled``.

    >>> user = load_user_model("net.py:build_model")                     # doctest: +SKIP
    >>> extract_embeddings(user, ["a.jpg", "b.jpg"]).shape                # doctest: +SKIP
    (2, 2048)
    """
    _check_task(task)
    module, preprocess = _unwrap(model, preprocessing)
    target = torch.device(device) if device is not None else default_device()
    if details is not None:
        details.update(backend="torch", precision="fp32")
    if task == "detection" and layer in (None, "backbone") and not is_torchscript(module):
        return extract_detection(
            module,
            images,
            batch_size=batch_size,
            feature_level=feature_level,
            device=target,
            backend=backend,
            details=details,
            progress=progress,
            should_stop=should_stop,
            with_detections=False,
        ).image_vectors
    name = resolve_layer(
        module, task=task, layer=layer, images=images, preprocessing=preprocess, device=target
    )
    ref = parse_layer(module, name)
    total = len(images)
    reporter = ProgressReporter(total, progress, should_stop=should_stop)
    reporter.start()
    outputs: list[np.ndarray] = []
    plan: SpatialPlan | None = None

    def pool(activations: torch.Tensor) -> torch.Tensor:
        nonlocal plan
        if task == "segmentation" and activations.ndim == 4 and plan is None:
            # Planned once, on the first batch, so every image gets the same length.
            plan = plan_spatial_pool(*activations.shape[1:], max_elements=max_elements)
        return pool_activations(
            activations, plan=plan if task == "segmentation" else None, token_pooling=token_pooling
        )

    with _inference(module, target):
        run, used = _layer_runner(
            module, ref, images, preprocess, backend=backend, task=task, device=target
        )
        if details is not None:
            details["backend"] = used
        for start, end in _spans(total, batch_size):
            reporter.check()
            if task == "detection":
                tensors = [image_tensor(image) for image in images[start:end]]
            else:
                tensors, _ = preprocess_images(images[start:end], preprocess)
            vectors = _pooled_batch(
                run, ref, tensors, target, pool=pool, as_list=task == "detection"
            )
            outputs.append(vectors.cpu().numpy())
            reporter.advance(end - start)
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(outputs), dtype=np.float32)


def _pooled_batch(
    run: Callable[[Any], torch.Tensor],
    ref: LayerRef,
    tensors: list[torch.Tensor],
    device: torch.device,
    *,
    pool: Callable[[torch.Tensor], torch.Tensor],
    as_list: bool = False,
) -> torch.Tensor:
    """(batch, dim) pooled activations. Images of different sizes (``resize='none'``, detectors)
    run in groups of one size, so no image is padded or resized for another's sake.
    ``as_list`` passes a list of (C, H, W) tensors, as torchvision detectors take."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault(tuple(tensor.shape), []).append(index)
    rows: dict[int, torch.Tensor] = {}
    for indices in groups.values():
        group = [tensors[i].to(device) for i in indices]
        activations = run(group if as_list else torch.stack(group))
        if activations.shape[0] != len(indices):
            raise ValueError(
                f"layer {ref.name!r} gives {activations.shape[0]} rows for {len(indices)} images "
                f"(a per-box layer?); use extract_detection for per-box vectors ({BOX_LAYER})"
            )
        rows.update(zip(indices, pool(activations), strict=True))
    lengths = {row.shape for row in rows.values()}
    if len(lengths) > 1:
        raise ValueError(
            f"layer {ref.name!r} gives vectors of lengths {sorted(lengths)} for images of "
            "different sizes; use a resize policy other than 'none'"
        )
    return torch.stack([rows[i] for i in range(len(tensors))])


def extract_detection(
    model: UserModel | nn.Module,
    images: Sequence[ImageInput],
    *,
    label_boxes: Sequence[Any] | None = None,
    batch_size: int = 4,
    feature_level: str | None = None,
    device: str | torch.device | None = None,
    backend: str = "auto",
    details: dict[str, Any] | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    with_detections: bool = True,
) -> DetectionEmbeddings:
    """Per-image, per-detection and per-label vectors from a torchvision two-stage detector.

    images: PIL images, paths or uint8 arrays (fed at their own size as [0, 1] RGB).
    label_boxes: one (n_boxes, 4) x1, y1, x2, y2 array per image, in original pixels, or None.
    feature_level: one backbone level (``"0"`` finest ... ``"pool"`` coarsest for an FPN); None
        concatenates every level's pooled vector (FPN: 5 x 256 = 1280-d for ResNet-50).
    with_detections: False skips the RPN and ROI heads (image vectors and labels only).
    backend: detectors run on torch (see the module docstring); ``"openvino"`` asked for by
        name gets a one-line ``RuntimeWarning``; ``details`` receives the backend used.
    Detections are exactly those of ``model([image])``: tune them with the model's own settings
    (``model.roi_heads.score_thresh``, ``nms_thresh``, ``detections_per_img``). Within a batch,
    images of one size run together and other sizes run apart, because the detector pads a batch
    to its largest image and padding changes every vector of backbones that pool globally
    (squeeze-excitation); so an image's vectors do not depend on its batch-mates.

    >>> result = extract_detection(model, ["street.jpg"])                # doctest: +SKIP
    >>> result.inferences.vectors.shape, result.inferences.boxes.shape   # doctest: +SKIP
    ((12, 1024), (12, 4))
    """
    module, _ = _unwrap(model, None)
    check_two_stage_detector(module)
    target = torch.device(device) if device is not None else default_device()
    _detectors_run_on_torch(backend, target, stacklevel=2)
    if details is not None:
        details.update(backend="torch", precision="fp32")
    if label_boxes is not None and len(label_boxes) != len(images):
        raise ValueError(
            f"label_boxes has {len(label_boxes)} entries for {len(images)} images; give one "
            "(n_boxes, 4) array per image"
        )
    labels = (
        [as_label_boxes(b, i) for i, b in enumerate(label_boxes)]
        if label_boxes is not None
        else None
    )
    total = len(images)
    reporter = ProgressReporter(total, progress, should_stop=should_stop)
    reporter.start()
    results: list[ImageDetections] = []
    with _inference(module, target):
        for start, end in _spans(total, batch_size):
            reporter.check()
            tensors = [image_tensor(image).to(target) for image in images[start:end]]
            by_size: dict[tuple[int, ...], list[int]] = {}
            for offset, tensor in enumerate(tensors):
                by_size.setdefault(tuple(tensor.shape), []).append(offset)
            span: dict[int, ImageDetections] = {}
            for offsets in by_size.values():
                group_labels = (
                    [torch.from_numpy(labels[start + o]).to(target) for o in offsets]
                    if labels is not None
                    else None
                )
                group = detect_batch(
                    module,
                    [tensors[o] for o in offsets],
                    label_boxes=group_labels,
                    feature_level=feature_level,
                    with_detections=with_detections,
                )
                span.update(zip(offsets, group, strict=True))
            results.extend(span[offset] for offset in range(end - start))
            reporter.advance(end - start)
    return _assemble(results, labels, feature_level)


def _numpy(tensor: torch.Tensor | None, dtype: Any = np.float32) -> np.ndarray:
    assert tensor is not None
    return tensor.detach().cpu().numpy().astype(dtype, copy=False)


def _assemble(
    results: list[ImageDetections], labels: list[np.ndarray] | None, feature_level: str | None
) -> DetectionEmbeddings:
    detected = [r for r in results if r.vectors is not None]
    box_dims = [r.vectors.shape[1] for r in detected if r.vectors is not None]
    box_dims += [r.label_vectors.shape[1] for r in results if r.label_vectors is not None]
    box_dim = box_dims[0] if box_dims else 0
    image_dim = results[0].image_vector.shape[0] if results else 0
    inferences = BoxEmbeddings(
        image_index=_concat(
            [
                np.full(len(r.vectors), i, dtype=np.int64)
                for i, r in enumerate(results)
                if r.vectors is not None
            ],
            (0,),
            np.int64,
        ),
        boxes=_concat([_numpy(r.boxes) for r in detected], (0, 4)),
        vectors=_concat([_numpy(r.vectors) for r in detected], (0, box_dim)),
        scores=_concat([_numpy(r.scores) for r in detected], (0,)),
        categories=_concat([_numpy(r.categories, np.int64) for r in detected], (0,), np.int64),
    )
    label_embeddings = None
    if labels is not None:
        label_embeddings = BoxEmbeddings(
            image_index=np.repeat(np.arange(len(labels), dtype=np.int64), [len(b) for b in labels]),
            boxes=_concat(labels, (0, 4)),
            vectors=_concat(
                [_numpy(r.label_vectors) for r in results if r.label_vectors is not None],
                (0, box_dim),
            ),
        )
    return DetectionEmbeddings(
        image_vectors=_concat([_numpy(r.image_vector)[None] for r in results], (0, image_dim)),
        inferences=inferences,
        labels=label_embeddings,
        image_layer="backbone" if feature_level is None else f"backbone[{feature_level}]",
    )


def _concat(
    parts: list[np.ndarray], empty_shape: tuple[int, ...], dtype: Any = np.float32
) -> np.ndarray:
    parts = [p for p in parts if len(p)]
    if not parts:
        return np.zeros(empty_shape, dtype=dtype)
    return np.ascontiguousarray(np.concatenate(parts), dtype=dtype)
