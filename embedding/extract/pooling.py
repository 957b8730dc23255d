"""Pool a layer's activations into one fixed-length vector per image.

Shapes: (batch, dim) stays; (batch, tokens, channels) takes the mean or the first (CLS) token;
(batch, channels, height, width) is average-pooled, globally or down to a size plan; anything with
more dimensions is averaged over everything after the channels.

>>> pool_activations(torch.ones(2, 64, 7, 7)).shape
torch.Size([2, 64])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

TokenPooling = Literal["mean", "cls"]


@dataclass(frozen=True)
class SpatialPlan:
    """Target of the adaptive average pooling of a (channels, height, width) map.

    height, width: pooled spatial size; channels: kept channels (fewer only when the channels
    alone exceed the element budget, then adjacent channels are averaged).
    """

    channels: int
    height: int
    width: int

    @property
    def elements(self) -> int:
        return self.channels * self.height * self.width


def plan_spatial_pool(channels: int, height: int, width: int, *, max_elements: int) -> SpatialPlan:
    """Halve height and width (rounding up) step by step until ``channels * h * w <= max_elements``.

    Channels are kept; only if ``channels > max_elements`` at 1x1 are adjacent channels averaged
    down to ``max_elements``.

    >>> plan_spatial_pool(256, 32, 32, max_elements=10_000)
    SpatialPlan(channels=256, height=4, width=4)
    """
    if max_elements < 1:
        raise ValueError(f"max_elements must be positive, got {max_elements}")
    while channels * height * width > max_elements and (height > 1 or width > 1):
        height, width = math.ceil(height / 2), math.ceil(width / 2)
    return SpatialPlan(min(channels, max_elements), height, width)


def pool_activations(
    activations: torch.Tensor,
    *,
    plan: SpatialPlan | None = None,
    token_pooling: TokenPooling = "mean",
) -> torch.Tensor:
    """(batch, ...) activations -> (batch, dim) float32 vectors.

    A 4-d map is globally average-pooled when ``plan`` is None, else adaptively average-pooled to
    ``plan`` and flattened channel-major (c, h, w). Tokens: ``"mean"`` over all tokens or
    ``"cls"`` (the first token, as in ViT).
    """
    activations = activations.float()
    if activations.ndim == 1:
        return activations[:, None]
    if activations.ndim == 2:
        return activations
    if activations.ndim == 3:
        if token_pooling == "cls":
            return activations[:, 0]
        if token_pooling == "mean":
            return activations.mean(dim=1)
        raise ValueError(f"token_pooling must be 'mean' or 'cls', got {token_pooling!r}")
    if activations.ndim == 4:
        if plan is None:
            return activations.mean(dim=(2, 3))
        pooled = F.adaptive_avg_pool2d(activations, (plan.height, plan.width))
        if plan.channels < pooled.shape[1]:
            batch, channels, height, width = pooled.shape
            per_position = pooled.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
            per_position = F.adaptive_avg_pool1d(per_position, plan.channels)
            pooled = per_position.reshape(batch, height, width, plan.channels).permute(0, 3, 1, 2)
        return pooled.flatten(1)
    return activations.flatten(2).mean(dim=2)
