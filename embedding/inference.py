"""The per-batch step: a model readied for fast inference, and one batch of pixels to vectors.

``embed_batch`` depends on nothing but the model, the batch and the precision, so any engine
(the local pipeline, a Ray actor) can map it over batches and get the same vectors. On a CPU the
model runs channels-last with BatchNorm folded into the convolutions, under bf16 autocast where
the CPU has native bf16 (AMX or AVX512-BF16); on CUDA under fp16.

>>> embed_batch(model, torch.zeros(2, 224, 224, 3, dtype=torch.uint8)).shape  # doctest: +SKIP
(2, 1280)
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch import nn

from shoal.embedding.models import DataConfig, EmbeddingModel

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``fp16`` on CUDA, ``bf16`` on a CPU with native bf16, else ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    kind = torch.device(device).type
    if precision == "auto":
        if kind == "cuda":
            return "fp16"
        return "bf16" if kind == "cpu" and cpu_supports_bf16() else "fp32"
    if precision == "fp16" and kind == "cpu":
        raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast to bf16 or fp16 for a resolved ``precision`` ('fp32': no autocast)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def normalize_pixels(batch: torch.Tensor, config: DataConfig) -> torch.Tensor:
    """(batch, H, W, 3) uint8 -> (batch, 3, H, W) float32 normalised, channels-last in memory."""
    mean = torch.tensor(config.mean, dtype=torch.float32, device=batch.device)
    std = torch.tensor(config.std, dtype=torch.float32, device=batch.device)
    scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1)
    shift = (-mean / std).view(1, 3, 1, 1)
    return batch.permute(0, 3, 1, 2).float().mul_(scale).add_(shift)


def embed_batch(
    model: EmbeddingModel, batch: torch.Tensor, *, precision: str = "auto"
) -> np.ndarray:
    """Pre-logits vectors of one batch: (batch, dim) float32.

    batch: (batch, H, W, 3) uint8 RGB at the model's input size (see ``preprocess.resize_crop``),
    or (batch, 3, H, W) float already normalised with ``model.data_config``. The output depends
    on nothing but the model, the batch and the precision; the first call readies the model in
    place (``prepare_for_inference``).

    >>> embed_batch(model, torch.zeros(2, 224, 224, 3, dtype=torch.uint8)).shape  # doctest: +SKIP
    (2, 1280)
    """
    device = model.device
    precision = resolve_precision(precision, device)
    prepare_for_inference(model)
    batch = batch.to(device, non_blocking=True)
    if batch.dtype == torch.uint8:
        inputs = normalize_pixels(batch, model.data_config)
    else:
        inputs = batch.float().contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, precision):
        vectors = model(inputs)
    return vectors.float().cpu().numpy()


def prepare_for_inference(model: EmbeddingModel) -> EmbeddingModel:
    """Ready ``model`` for fast inference, in place: eval mode, BatchNorm folded into the
    convolutions before it (timm EfficientNet family; same outputs up to float rounding),
    ``model.full_precision`` submodules pinned to float32, channels-last weights. Idempotent."""
    if not model.channels_last:
        model.eval()
        fold_batchnorm(model)
        for name in model.full_precision:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, attr, _Float32(getattr(parent, attr)))
        model.to(memory_format=torch.channels_last)
        model.channels_last = True
    return model


class _Float32(nn.Module):
    """Runs ``module`` in float32 even inside a reduced-precision autocast region."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.module(x.float())


# (block type, [(conv, batchnorm), ...]) in timm's EfficientNet family, where each conv feeds the
# batchnorm directly in ``forward``; only these exact pairs are folded.
_FOLDABLE = {
    "EfficientNet": [("conv_stem", "bn1"), ("conv_head", "bn2")],
    "EfficientNetFeatures": [("conv_stem", "bn1")],
    "ConvBnAct": [("conv", "bn1")],
    "DepthwiseSeparableConv": [("conv_s2d", "bn_s2d"), ("conv_dw", "bn1"), ("conv_pw", "bn2")],
    "InvertedResidual": [
        ("conv_s2d", "bn_s2d"),
        ("conv_pw", "bn1"),
        ("conv_dw", "bn2"),
        ("conv_pwl", "bn3"),
    ],
    "EdgeResidual": [("conv_exp", "bn1"), ("conv_pwl", "bn2")],
}


@torch.no_grad()
def fold_batchnorm(module: nn.Module) -> int:
    """Fold eval-mode BatchNorm into the preceding convolution of known timm blocks; in place.

    Returns how many pairs were folded. The BatchNorm is replaced by its dropout and activation.
    """
    try:
        from timm.layers.norm_act import BatchNormAct2d
    except ImportError:  # pragma: no cover - timm is a core dependency
        return 0
    folded = 0
    for block in list(module.modules()):
        if not type(block).__module__.startswith("timm."):
            continue
        for conv_name, bn_name in _FOLDABLE.get(type(block).__name__, []):
            conv, bn = getattr(block, conv_name, None), getattr(block, bn_name, None)
            if not isinstance(bn, nn.BatchNorm2d) or not isinstance(conv, nn.Conv2d):
                continue
            if type(bn) not in (BatchNormAct2d, nn.BatchNorm2d):  # subclasses may differ
                continue
            if bn.training or not bn.track_running_stats or bn.num_features != conv.out_channels:
                continue
            assert bn.running_var is not None and bn.running_mean is not None
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale
            if bn.bias is not None:
                shift = shift + bn.bias
            if conv.bias is not None:
                shift = shift + conv.bias * scale
            conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
            conv.bias = nn.Parameter(shift, requires_grad=False)
            after = (
                nn.Sequential(bn.drop, bn.act) if isinstance(bn, BatchNormAct2d) else nn.Identity()
            )
            setattr(block, bn_name, after)
            folded += 1
    return folded
