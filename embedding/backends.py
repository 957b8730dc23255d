"""Inference backends for the embedder: ``torch`` (every device) and ``openvino`` (x86 CPUs).

An :class:`Embedder` turns (batch, H, W, 3) uint8 pixels at the model's input size into
(batch, dim) float32 pre-logits vectors, and pixels of any size into the final feature map that
object embeddings pool boxes from (ROI-Align itself runs in torch). ``create_embedder`` picks
the backend:

* ``auto``: ``openvino`` on an x86-64 CPU where OpenVINO imports and the model's graph
  converts and compiles; ``torch`` otherwise (on CUDA always torch). A graph that does not
  convert falls back to torch with a one-line warning.
* ``torch``: :func:`shoal.embedding.inference.embed_batch` (channels-last, BatchNorm folded, bf16
  autocast on CPUs with native bf16, fp16 on CUDA).
* ``openvino``: the pre-logits graph, normalisation included, converted from the torch module
  with ``openvino.convert_model``, compiled with the THROUGHPUT hint and fed through async infer
  requests, one group of requests per batch, so the next batch decodes while this one runs.

OpenVINO precision. ``auto`` means ``fp32`` here. On the 354 real photos of ``sample_data/``
(lite0, 224 px) OpenVINO f32 matches torch fp32 (mean and min cosine 1.000000, same 5-NN
category accuracy 0.8475), and on 2 cores runs the model at 360 img/s against 147 for torch's
bf16 path (benchmarks/bench_embed.py, same run, 2026-12-02). OpenVINO bf16 (AMX kernels) runs it
at 670 img/s but reaches mean cosine 0.99885 (min 0.984), below the 0.999 this project asks of a
default; keeping the stem in f32 did not change that. Ask for ``precision="bf16"`` to trade that
fidelity for speed.

A converted graph is used only once it gives the torch module's float32 outputs on a check input
of another shape than the traced one (:class:`ConversionMismatch` otherwise, so a size frozen
into the graph by tracing is caught), and is cached on disk (``cache_dir``, default
``$XDG_CACHE_HOME/shoal/openvino``) under a key of graph, model name, weights hash, input size,
normalisation and OpenVINO version; an entry whose key or file hashes do not match is rebuilt,
never used. :func:`convert_cached` does the same for a user's own module (``shoal extract``).

>>> embedder = create_embedder(create_model(), backend="auto")          # doctest: +SKIP
>>> embedder.embed(np.zeros((2, 224, 224, 3), np.uint8)).shape          # doctest: +SKIP
(2, 1280)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from shoal.embedding.defaults import BACKENDS
from shoal.embedding.inference import autocast, embed_batch, normalize_pixels, prepare_for_inference
from shoal.embedding.inference import resolve_precision as resolve_torch_precision
from shoal.embedding.models import EmbeddingModel

CACHE_FORMAT = 2
_INSTALL_HINT = "the openvino backend needs OpenVINO on an x86-64 CPU: pip install openvino"
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


class Pending(Protocol):
    """A batch being embedded; ``result()`` waits for its (batch, dim) float32 vectors."""

    def result(self) -> np.ndarray: ...


class Embedder(Protocol):
    """One model readied on one backend, at one resolved precision."""

    backend: str
    precision: str
    model: EmbeddingModel

    def submit(self, pixels: np.ndarray | torch.Tensor) -> Pending:
        """Start embedding (batch, H, W, 3) uint8 pixels; may return before the work is done."""
        ...

    def embed(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        """(batch, dim) float32 vectors of (batch, H, W, 3) uint8 pixels."""
        ...

    def feature_map(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(batch, C, h, w) float32 final feature map of (batch, H, W, 3) uint8 pixels of any
        size (multiples of the model's stride): what object embeddings pool boxes from."""
        ...


# --------------------------------------------------------------------------- selection


def openvino_available() -> bool:
    """Whether the openvino backend can load here: an x86-64 CPU and an importable OpenVINO."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device | str = "cpu") -> str:
    """``auto`` -> ``torch`` on CUDA, ``openvino`` on a CPU where it loads, else ``torch``.

    Raises ValueError for an unknown name or ``openvino`` on a GPU, ImportError (with the
    install hint) for ``openvino`` where it cannot load.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = torch.device(device).type == "cuda"
    if backend == "auto":
        return "openvino" if not on_cuda and openvino_available() else "torch"
    if backend == "openvino":
        if on_cuda:
            raise ValueError("the openvino backend runs on the CPU; use 'torch' on a GPU")
        if not openvino_available():
            raise ImportError(_INSTALL_HINT)
    return backend


def default_device(backend: str = "auto") -> str:
    """Where to build the model: ``cuda`` when a GPU is there and ``backend`` may use it
    (``auto``, ``torch``), else ``cpu``."""
    return "cuda" if backend in ("auto", "torch") and torch.cuda.is_available() else "cpu"


def resolve_precision(backend: str, precision: str, device: torch.device | str = "cpu") -> str:
    """The precision a resolved ``backend`` runs at: for ``openvino`` ``auto`` -> ``fp32``
    (see the module docstring for why), ``bf16`` on request; for ``torch`` as
    :func:`shoal.embedding.inference.resolve_precision`."""
    if backend != "openvino":
        return resolve_torch_precision(precision, device)
    if precision == "auto":
        return "fp32"
    if precision not in _OV_PRECISION:
        raise ValueError(f"the openvino backend runs 'fp32' or 'bf16', not {precision!r}")
    return precision


def create_embedder(
    model: EmbeddingModel,
    *,
    backend: str = "auto",
    precision: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    num_threads: int | None = None,
    feature_map: bool = False,
) -> Embedder:
    """``model`` readied on ``backend`` (see the module docstring for the choice).

    ``num_threads``: CPU threads OpenVINO may use (default: all cores; a Ray actor given one
    CPU passes 1). torch takes ``torch.set_num_threads`` from the caller. ``feature_map``: ready
    the feature-map graph too (object embeddings), so a model whose map does not convert falls
    back to torch here, whole, rather than halfway through a run.

    >>> create_embedder(create_model(), backend="torch").backend       # doctest: +SKIP
    'torch'
    """
    chosen = resolve_backend(backend, model.device)
    if chosen == "openvino":
        ov_precision = resolve_precision("openvino", precision)
        try:
            return OpenVINOEmbedder(
                model,
                precision=ov_precision,
                cache_dir=cache_dir,
                num_threads=num_threads,
                feature_map=feature_map,
            )
        except Exception as error:  # conversion fails with many types (tracing, frontends)
            if backend == "openvino":
                raise
            warnings.warn(
                f"OpenVINO could not compile {model.name!r} "
                f"({type(error).__name__}: {str(error)[:200]}); embedding with torch",
                RuntimeWarning,
                stacklevel=2,
            )
    return TorchEmbedder(model, precision=precision)


# --------------------------------------------------------------------------- torch


class _Done:
    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    def result(self) -> np.ndarray:
        return self.vectors


class TorchEmbedder:
    """Today's torch path: :func:`shoal.embedding.inference.embed_batch`, synchronous."""

    backend = "torch"

    def __init__(self, model: EmbeddingModel, *, precision: str = "auto") -> None:
        self.model = prepare_for_inference(model)
        self.precision = resolve_torch_precision(precision, model.device)

    def submit(self, pixels: np.ndarray | torch.Tensor) -> Pending:
        return _Done(self.embed(pixels))

    def embed(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        return embed_batch(self.model, _tensor(pixels), precision=self.precision)

    def feature_map(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(batch, C, h, w) float32 final feature map of (batch, H, W, 3) uint8 pixels of any size
        (H and W multiples of the model's stride), on the model's device."""
        device = self.model.device
        inputs = normalize_pixels(
            _tensor(pixels).to(device, non_blocking=True), self.model.data_config
        )
        inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(device, self.precision):
            return self.model.feature_map(inputs).float()


def _tensor(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    return pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(pixels)


def _uint8(pixels: np.ndarray | torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(pixels, dtype=np.uint8))


# --------------------------------------------------------------------------- OpenVINO graphs


class _FromPixels(nn.Module):
    """(batch, H, W, 3) uint8 -> ``model.<output>`` of the normalised pixels: the graph OpenVINO
    converts (``"features"``: pre-logits vectors; ``"feature_map"``: the final map, objects)."""

    def __init__(self, model: EmbeddingModel, output: str) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.output)(normalize_pixels(pixels, self.model.data_config))


#: What can be converted from an EmbeddingModel: its vectors at the input size, or its feature
#: map at any size (height and width dynamic).
GRAPHS = ("vectors", "feature_map")


def weights_sha256(model: nn.Module) -> str:
    """sha256 of every parameter and buffer of ``model`` (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}\0".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "shoal" / "openvino"


def _cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def cache_key(model: EmbeddingModel, graph: str = "vectors") -> dict[str, Any]:
    """What the converted ``graph`` depends on; a cache entry with another key is stale."""
    import openvino

    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
    config = model.data_config
    return {
        "format": CACHE_FORMAT,
        "graph": graph,
        "model": model.name,
        "source": model.source,
        "weights_sha256": weights_sha256(model),
        "input_size": list(config.input_size),
        "mean": list(config.mean),
        "std": list(config.std),
        "openvino": openvino.get_version(),
    }


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _entry_name(key: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in key["model"])
    return f"{safe}-{digest}"


class ConversionMismatch(RuntimeError):
    """A converted graph whose outputs differ from the torch module's (shape-dependent constants
    frozen by tracing, an unsupported operation converted loosely): it is never used."""


def _check_conversion(
    module: nn.Module, converted: Any, check: torch.Tensor, *, tolerance: float = 1e-3
) -> None:
    """Run ``check`` through the torch module and the converted graph (both float32); raise
    :class:`ConversionMismatch` when the largest difference exceeds ``tolerance`` times the
    largest torch output (at least 1)."""
    import openvino

    with torch.inference_mode():
        expected = module(check).float().cpu().numpy()
    compiled = openvino.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    actual = compiled.create_infer_request().infer({0: check.cpu().numpy()})[0]
    if actual.shape != expected.shape:
        raise ConversionMismatch(
            f"converted graph gives shape {actual.shape} where torch gives {expected.shape}"
        )
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    error = float(np.abs(actual - expected).max(initial=0.0)) / scale
    if not error <= tolerance:
        raise ConversionMismatch(
            f"converted graph differs from torch by {error:.2g} (relative; at most {tolerance:g})"
        )


def convert_cached(
    module: nn.Module,
    key: dict[str, Any],
    *,
    example: torch.Tensor,
    input_shape: list[int],
    check: torch.Tensor,
    cache_dir: str | os.PathLike[str] | None = None,
    on_convert: Callable[[], None] | None = None,
) -> Any:
    """``module`` as an ``openvino.Model``, read from the cache when a valid entry of ``key``
    exists, else converted, checked and stored (atomically).

    ``example`` is traced; ``input_shape`` (-1 for a dynamic dimension) and the example's dtype
    make the graph's input; ``check``, of another shape than ``example`` where dimensions are
    dynamic, must give the torch module's outputs (:func:`_check_conversion`), else
    :class:`ConversionMismatch` is raised and nothing is stored.

    The entry's directory is named by a hash of the key, and it is used only if the key it
    records and the sha256 of its files match; a damaged entry is replaced. Entries of other keys
    (older weights, another OpenVINO) are left alone: the directory can be deleted at any time.
    ``on_convert`` is called before a conversion (tests count them).
    """
    import openvino

    root = _cache_root(cache_dir)
    name = _entry_name(key)
    entry = root / name
    core = openvino.Core()
    with contextlib.suppress(Exception):  # any damage means "not cached"
        meta = json.loads((entry / "entry.json").read_text())
        if meta["key"] == key and all(
            _file_sha256(entry / file) == digest for file, digest in meta["files"].items()
        ):
            return core.read_model(entry / "model.xml")

    if on_convert is not None:
        on_convert()
    element = openvino.Type.u8 if example.dtype == torch.uint8 else openvino.Type.f32
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about constant tensors
        converted = openvino.convert_model(
            module, example_input=example, input=[(input_shape, element)]
        )
    _check_conversion(module, converted, check)

    root.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # an unwritable cache only costs the next conversion
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            # compress_to_fp16=False: the cache must hold the weights bit for bit.
            openvino.save_model(converted, staging / "model.xml", compress_to_fp16=False)
            files = {f: _file_sha256(staging / f) for f in ("model.xml", "model.bin")}
            (staging / "entry.json").write_text(json.dumps({"key": key, "files": files}))
            shutil.rmtree(entry, ignore_errors=True)  # a damaged entry under this key
            os.replace(staging, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return converted


def _noise(shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)


def load_or_convert(
    model: EmbeddingModel,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    key: dict[str, Any] | None = None,
    on_convert: Callable[[], None] | None = None,
    graph: str = "vectors",
) -> Any:
    """The model's uint8-pixels -> pre-logits graph (``graph="vectors"``; batch dynamic) or
    -> final feature map graph (``"feature_map"``; batch, height and width dynamic) as an
    ``openvino.Model``, cached on disk (:func:`convert_cached`)."""
    key = key or cache_key(model, graph)
    height, width = model.data_config.image_size
    if graph == "vectors":
        module = _FromPixels(model, "features")
        input_shape = [-1, height, width, 3]
        check = _noise((3, height, width, 3))
    else:
        module = _FromPixels(model, "feature_map")
        input_shape = [-1, -1, -1, 3]
        stride = int(model.feature_stride)
        # Another size than the traced one: a size frozen into the graph shows here.
        check = _noise((1, height + 2 * stride, width + 3 * stride, 3))
    return convert_cached(
        module,
        key,
        example=torch.zeros((2, height, width, 3), dtype=torch.uint8),
        input_shape=input_shape,
        check=check,
        cache_dir=cache_dir,
        on_convert=on_convert,
    )


# --------------------------------------------------------------------------- OpenVINO runs


class _OpenVINOPending:
    def __init__(self, requests: list[Any]) -> None:
        self.requests = requests

    def result(self) -> np.ndarray:
        parts = []
        for request in self.requests:
            request.wait()
            parts.append(request.get_output_tensor(0).data)
        # One copy out of the requests' buffers, which their next run overwrites.
        return np.concatenate(parts) if len(parts) > 1 else parts[0].copy()


_COMPILED: dict[tuple[str, str, str], Any] = {}  # insertion order: least recently used first
_COMPILED_KEPT = 4


def compile_cached(memo: str, load: Callable[[], Any], config: dict[str, Any]) -> Any:
    """``load()``'s graph compiled for the CPU with ``config``, kept per process (a few), so a
    caller that embeds block after block (a Ray actor) compiles once. ``memo`` names the graph
    (its cache entry)."""
    import openvino

    key = (memo, json.dumps(config, sort_keys=True), "CPU")
    compiled = _COMPILED.pop(key, None)
    if compiled is None:
        compiled = openvino.Core().compile_model(load(), "CPU", config)
    _COMPILED[key] = compiled
    while len(_COMPILED) > _COMPILED_KEPT:
        _COMPILED.pop(next(iter(_COMPILED)))
    return compiled


def compile_config(precision: str, num_threads: int | None) -> dict[str, Any]:
    """The THROUGHPUT hint at ``precision`` ("fp32" or "bf16"), on ``num_threads`` threads."""
    if precision not in _OV_PRECISION:
        raise ValueError(f"the openvino backend runs 'fp32' or 'bf16', not {precision!r}")
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": "THROUGHPUT",
        "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],
    }
    if num_threads is not None:
        config["INFERENCE_NUM_THREADS"] = num_threads
    return config


#: Infer requests per stream of the THROUGHPUT hint. A batch split in as many parts as there
#: are streams finishes when its slowest part does, and on a machine whose cores also decode
#: images one part is always slowed; small parts queue, and a stream that is done takes the next.
#: Lite0, 256 real photos, 2 cores: 1 -> 8 per stream raised the model-only rate from about 300
#: to 360 img/s and the pipeline from about 200 to 265.
REQUESTS_PER_STREAM = 8


class AsyncRuns:
    """A compiled model's infer requests: each batch is split over ``REQUESTS_PER_STREAM`` times
    the model's optimal number of requests (one per stream of the THROUGHPUT hint), which queue
    on the streams; two groups alternate, so one batch can be submitted while the previous one
    is being collected."""

    def __init__(self, compiled: Any) -> None:
        streams = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        count = streams * REQUESTS_PER_STREAM
        self._groups = [[compiled.create_infer_request() for _ in range(count)] for _ in range(2)]
        self._next = 0

    def submit(self, inputs: np.ndarray) -> _OpenVINOPending:
        """Start the (non-empty) batch ``inputs``; ``result()`` gives the outputs in order."""
        requests = self._groups[self._next]
        self._next = 1 - self._next
        for request in requests:
            request.wait()  # a caller that never collected the group's last batch
        count = len(inputs)
        share = -(-count // len(requests))
        used = []
        for request, start in zip(requests, range(0, count, share), strict=False):
            request.start_async({0: inputs[start : start + share]})
            used.append(request)
        return _OpenVINOPending(used)


class OpenVINOEmbedder:
    """The model's pre-logits graph compiled by OpenVINO for the CPU, run by :class:`AsyncRuns`.

    ``feature_map=True`` also readies the feature-map graph (height and width dynamic) that
    object embeddings pool boxes from; otherwise it is compiled on first use.
    """

    backend = "openvino"

    def __init__(
        self,
        model: EmbeddingModel,
        *,
        precision: str = "fp32",
        cache_dir: str | os.PathLike[str] | None = None,
        num_threads: int | None = None,
        feature_map: bool = False,
    ) -> None:
        self.model = model
        self.precision = precision
        self._config = compile_config(precision, num_threads)
        self._root = _cache_root(cache_dir)
        self._runs = self._compile("vectors")
        self._map_runs = self._compile("feature_map") if feature_map else None

    def _compile(self, graph: str) -> AsyncRuns:
        key = cache_key(self.model, graph)
        memo = f"{self._root}/{_entry_name(key)}"
        compiled = compile_cached(
            memo,
            lambda: load_or_convert(self.model, self._root, key=key, graph=graph),
            self._config,
        )
        return AsyncRuns(compiled)

    def submit(self, pixels: np.ndarray | torch.Tensor) -> Pending:
        pixels = _uint8(pixels)
        if len(pixels) == 0:
            return _Done(np.empty((0, self.model.dim), dtype=np.float32))
        return self._runs.submit(pixels)

    def embed(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.submit(pixels).result()

    def feature_map(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """As :meth:`TorchEmbedder.feature_map`, computed by OpenVINO (a CPU tensor)."""
        if self._map_runs is None:
            self._map_runs = self._compile("feature_map")
        return torch.from_numpy(self._map_runs.submit(_uint8(pixels)).result())


# --------------------------------------------------------------------------- a user's own module


class CompiledModule:
    """A user's torch module from a float32 (batch, ...) tensor to one tensor, converted with a
    dynamic batch, checked against torch (:func:`convert_cached`), compiled at f32 and run by
    :class:`AsyncRuns`: OpenVINO under ``shoal extract``. Calls must use the example's shape
    past the batch dimension (``shape``)."""

    backend = "openvino"
    precision = "fp32"

    def __init__(
        self,
        module: nn.Module,
        *,
        name: str,
        example: torch.Tensor,
        cache_dir: str | os.PathLike[str] | None = None,
        num_threads: int | None = None,
        on_convert: Callable[[], None] | None = None,
    ) -> None:
        import openvino

        self.shape = tuple(example.shape[1:])
        key = {
            "format": CACHE_FORMAT,
            "graph": "module",
            "model": name,
            "weights_sha256": weights_sha256(module),
            "input_shape": list(self.shape),
            "openvino": openvino.get_version(),
        }
        root = _cache_root(cache_dir)
        example = example.detach().float().cpu()
        generator = torch.Generator().manual_seed(0)
        # Another batch size than the traced one, and other values.
        check = torch.randn((len(example) + 1, *self.shape), generator=generator)
        compiled = compile_cached(
            f"{root}/{_entry_name(key)}",
            lambda: convert_cached(
                module,
                key,
                example=example,
                input_shape=[-1, *self.shape],
                check=check,
                cache_dir=root,
                on_convert=on_convert,
            ),
            compile_config("fp32", num_threads),
        )
        self._runs = AsyncRuns(compiled)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if tuple(inputs.shape[1:]) != self.shape:
            raise ValueError(
                f"compiled for inputs of shape {self.shape}, got {tuple(inputs.shape[1:])}"
            )
        batch = np.ascontiguousarray(inputs.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self._runs.submit(batch).result())
