"""Name, find and capture a layer of a user's network.

A layer name is one of:

- a module name from ``named_modules()`` (``"layer4"``, ``"backbone.body.layer3"``): its output,
  at its first call in the forward pass (captured with a forward hook, so any model works);
- a module name with ``":input"`` (``"fc:input"``): the first argument given to that module,
  e.g. the pre-logits vector that enters a classifier;
- a torch.fx node name (``"flatten"``, ``"layer4.2.relu_2"``; see
  ``torchvision.models.feature_extraction.get_graph_node_names``) for functional operations,
  extracted with ``create_feature_extractor`` when the model is fx-traceable;
- ``"output"``: the model's own output;
- for a TorchScript module (hooks do not run there): the name of an exported method taking the
  image batch (``"embed"``, ``"forward_features"``) or ``"output"``.

>>> list_layers(torchvision.models.resnet18())[:3]                   # doctest: +SKIP
['conv1', 'bn1', 'relu']
"""

from __future__ import annotations

import difflib
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from shoal.embedding.extract.loading import UserModel

OUTPUT = "output"
INPUT_SUFFIX = ":input"
_MAX_LISTED = 200
_POOLING_TYPES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.LPPool1d,
    nn.LPPool2d,
    nn.FractionalMaxPool2d,
)

LayerKind = Literal["module_output", "module_input", "node", "method", "output"]


class LayerNotFoundError(ValueError):
    """A layer name that the model does not have; ``valid`` lists the names it does have."""

    def __init__(self, layer: str, valid: Sequence[str]) -> None:
        self.layer = layer
        self.valid = list(valid)
        self.closest = closest_layers(layer, self.valid)
        close = self.closest
        listed = ", ".join(self.valid[:_MAX_LISTED])
        if len(self.valid) > _MAX_LISTED:
            listed += f", ... and {len(self.valid) - _MAX_LISTED} more (see list_layers)"
        message = f"unknown layer {layer!r}."
        if close:
            message += f" Closest matches: {', '.join(close)}."
        message += (
            f" Valid layers ({len(self.valid)}, in forward order where known; add "
            f"{INPUT_SUFFIX!r} to a module name for its input): {listed}"
        )
        super().__init__(message)


def closest_layers(layer: str, valid: Sequence[str], *, n: int = 8) -> list[str]:
    """Up to ``n`` names most like ``layer``; names as deep (as many dots) as it come first."""
    close = difflib.get_close_matches(layer, valid, n=n, cutoff=0.4)
    depth = layer.count(".")
    return sorted(close, key=lambda name: name.count(".") != depth)


@dataclass(frozen=True)
class LayerRef:
    """A resolved layer: ``name`` as given (``"fc:input"``), ``kind`` how it is captured."""

    name: str
    kind: LayerKind

    @property
    def module_name(self) -> str:
        return self.name[: -len(INPUT_SUFFIX)] if self.kind == "module_input" else self.name


@dataclass(frozen=True)
class LayerRecord:
    """One module seen in a probe forward pass (first call only).

    order: when its forward finished (0 = first); shape: its output shape, or None when the
    output is not a single tensor; input_shape: likewise for its first argument.
    """

    name: str
    type: str
    order: int
    start: int
    shape: tuple[int, ...] | None
    input_shape: tuple[int, ...] | None


class _StopForward(BaseException):
    """Raised from a hook once the wanted activation is captured, to skip the rest of the model.

    A BaseException so that a model's own ``except Exception`` cannot swallow it.
    """


def is_torchscript(model: nn.Module) -> bool:
    return isinstance(model, torch.jit.ScriptModule)


def torchscript_methods(model: nn.Module) -> list[str]:
    """Methods compiled into a TorchScript module (``forward`` and any ``@torch.jit.export``)."""
    names = model._c._method_names()  # type: ignore[union-attr,operator]
    return sorted(n for n in names if not n.startswith("__"))


def _fx_node_names(model: nn.Module) -> list[str]:
    """Eval-mode torch.fx node names, or [] when the model cannot be traced symbolically."""
    if is_torchscript(model):
        return []
    from torchvision.models.feature_extraction import get_graph_node_names

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return list(get_graph_node_names(model)[1])
    except Exception:  # fx raises many types (TraceError, TypeError, ...) on dynamic code
        return []


def list_layers(model: UserModel | nn.Module, *, include_functional: bool = True) -> list[str]:
    """Names accepted as ``layer``: module names in registration order, then fx-only nodes.

    include_functional: also list torch.fx nodes that are not modules (``flatten``, ``add``);
        tracing costs a fraction of a second and is skipped when the model is not traceable.
    TorchScript modules list their methods and ``"output"``.

    >>> "avgpool" in list_layers(torchvision.models.resnet18())          # doctest: +SKIP
    True
    """
    if isinstance(model, UserModel):
        model = model.module
    if is_torchscript(model):
        return [*torchscript_methods(model), OUTPUT]
    names = [name for name, _ in model.named_modules() if name]
    if include_functional:
        known = set(names)
        names += [n for n in _fx_node_names(model) if n not in known and n != "x"]
    return [*names, OUTPUT]


def parse_layer(model: nn.Module, layer: str) -> LayerRef:
    """Resolve ``layer`` against ``model`` or raise :class:`LayerNotFoundError`."""
    if is_torchscript(model):
        if layer == OUTPUT:
            return LayerRef(layer, "output")
        if layer in torchscript_methods(model):
            return LayerRef(layer, "method")
        raise LayerNotFoundError(layer, list_layers(model))
    modules = dict(model.named_modules())
    if layer in modules and layer:
        return LayerRef(layer, "module_output")
    if layer.endswith(INPUT_SUFFIX) and layer[: -len(INPUT_SUFFIX)] in modules:
        return LayerRef(layer, "module_input")
    if layer == OUTPUT:
        return LayerRef(layer, "output")
    if layer in _fx_node_names(model):
        return LayerRef(layer, "node")
    raise LayerNotFoundError(layer, list_layers(model))


_FX_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[str, nn.Module]] = weakref.WeakKeyDictionary()


def _fx_extractor(model: nn.Module, node: str) -> nn.Module:
    cached = _FX_CACHE.setdefault(model, {})
    if node not in cached:
        from torchvision.models.feature_extraction import create_feature_extractor

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cached[node] = create_feature_extractor(model, return_nodes={node: "layer"}).eval()
    return cached[node]


def capture(model: nn.Module, ref: LayerRef, inputs: Any) -> Any:
    """Run ``model(inputs)`` (or a method) and return the activation ``ref`` names.

    The forward pass stops as soon as the activation is captured.
    """
    if ref.kind == "output":
        return model(inputs)
    if ref.kind == "method":
        return getattr(model, ref.name)(inputs)
    if ref.kind == "node":
        return _fx_extractor(model, ref.name)(inputs)["layer"]
    module = model.get_submodule(ref.module_name)
    captured: list[Any] = []

    def on_input(_module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0] if args else None)
        raise _StopForward

    def on_output(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
        captured.append(output)
        raise _StopForward

    if ref.kind == "module_input":
        handle = module.register_forward_pre_hook(on_input)
    else:
        handle = module.register_forward_hook(on_output)
    try:
        model(inputs)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"layer {ref.name!r} did not run in the forward pass")
    return captured[0]


def as_tensor(activation: Any, layer: str) -> torch.Tensor:
    """The tensor in a layer's output: itself; a dict's ``"out"`` entry, else its last (for a
    torchvision ``IntermediateLayerGetter`` or FPN, the deepest level); a tuple's first tensor."""
    if isinstance(activation, torch.Tensor):
        return activation
    if isinstance(activation, Mapping) and activation:
        if "out" in activation:
            return as_tensor(activation["out"], layer)
        return as_tensor(list(activation.values())[-1], layer)
    if isinstance(activation, (tuple, list)):
        for item in activation:
            if isinstance(item, torch.Tensor):
                return item
    raise TypeError(f"layer {layer!r} returns {type(activation).__name__}, not a tensor")


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def probe_layers(model: nn.Module, inputs: Any) -> tuple[list[LayerRecord], Any]:
    """Run ``model(inputs)`` once and record every module's first call, plus the model output.

    Not available for TorchScript modules (they run no hooks).
    """
    if is_torchscript(model):
        raise TypeError("TorchScript modules run no hooks; name an exported method or 'output'")
    starts: dict[str, int] = {}
    records: dict[str, LayerRecord] = {}
    counter = [0, 0]
    handles = []

    def pre_hook(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            if name not in starts:
                starts[name] = counter[1]
                counter[1] += 1

        return hook

    def post_hook(name: str, module: nn.Module) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if name in records:
                return
            records[name] = LayerRecord(
                name=name,
                type=type(module).__name__,
                order=counter[0],
                start=starts.get(name, -1),
                shape=_shape(output),
                input_shape=_shape(args[0]) if args else None,
            )
            counter[0] += 1

        return hook

    for name, module in model.named_modules():
        if not name:
            continue
        handles.append(module.register_forward_pre_hook(pre_hook(name)))
        handles.append(module.register_forward_hook(post_hook(name, module)))
    try:
        output = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return sorted(records.values(), key=lambda r: r.order), output


def classifier_input_layer(model: nn.Module, records: Sequence[LayerRecord]) -> str:
    """``"<name>:input"`` of the last ``nn.Linear`` to run (else the last ``nn.Conv2d``): the
    pre-logits activations right before a classifier's final fully connected layer."""
    modules = dict(model.named_modules())
    for kind in (nn.Linear, nn.Conv2d):
        started = [r for r in records if isinstance(modules[r.name], kind) and r.start >= 0]
        if started:
            return max(started, key=lambda r: r.start).name + INPUT_SUFFIX
    raise ValueError(
        "found no Linear or Conv2d layer to take the pre-logits from; name a layer "
        "(see list_layers)"
    )


def segmentation_backbone_layer(model: nn.Module) -> str | None:
    """The last backbone stage of a torchvision segmentation model (DeepLabV3, FCN, LRASPP),
    whose backbone is an ``IntermediateLayerGetter``; None for other models."""
    backbone = getattr(model, "backbone", None)
    return_layers = getattr(backbone, "return_layers", None)
    if not isinstance(backbone, nn.Module) or not isinstance(return_layers, Mapping):
        return None
    by_role = {role: name for name, role in return_layers.items()}
    name = by_role.get("out") or by_role.get("high") or list(return_layers)[-1]
    return f"backbone.{name}"


def bottleneck_layer(
    model: nn.Module, records: Sequence[LayerRecord], output: Any, *, batch_size: int
) -> str:
    """The most compact spatial feature map of an encoder-decoder: the module output of shape
    (batch, C, H, W) with the fewest elements C * H * W.

    Not candidates: pooling layers (a subsampled copy of an earlier map), 1x1 maps (pooled
    vectors, e.g. squeeze-excitation or ASPP image pooling), and maps with as many channels as a
    spatial model output (the logits). Ties go to the module that finished last, so a block's own
    output wins over the layers inside it.
    """
    modules = dict(model.named_modules())
    logit_channels = {t.shape[1] for t in _tensors(output) if t.ndim == 4}
    candidates = [
        r
        for r in records
        if r.shape is not None
        and len(r.shape) == 4
        and r.shape[0] == batch_size
        and r.shape[2] * r.shape[3] > 1
        and r.shape[1] not in logit_channels
        and not isinstance(modules[r.name], _POOLING_TYPES)
    ]
    if not candidates:
        raise ValueError(
            "found no spatial (batch, C, H, W) feature map to use as the bottleneck; name a "
            "layer (see list_layers)"
        )
    return min(candidates, key=lambda r: (r.shape[1] * r.shape[2] * r.shape[3], -r.order)).name  # type: ignore[index]


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []
