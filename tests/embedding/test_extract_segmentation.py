"""Own-model extraction for segmentation: bottleneck found and pooled to at most max_elements.

Random weights (no download); inputs are real photos from scikit-image.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from skimage import data
from torch import nn

from shoal.embedding.extract import (
    Preprocessing,
    extract_embeddings,
    plan_spatial_pool,
    resolve_layer,
)

PREP = Preprocessing(size=128, resize="stretch")


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [
        Image.fromarray(data.astronaut()),
        Image.fromarray(data.chelsea()),
        Image.fromarray(data.coffee()),
    ]


def _batch(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([PREP(image) for image in images])


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """The original U-Net shape, small: channels double at each of 3 poolings, the bottleneck
    doubles again, the decoder upsamples and concatenates the skips."""

    def __init__(self, *, base: int = 16, num_classes: int = 3) -> None:
        super().__init__()
        self.enc1 = _double_conv(3, base)
        self.enc2 = _double_conv(base, base * 2)
        self.enc3 = _double_conv(base * 2, base * 4)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _double_conv(base * 4, base * 8)
        self.up3 = nn.ConvTranspose2d(base * 8, base * 4, 2, stride=2)
        self.dec3 = _double_conv(base * 8, base * 4)
        self.up2 = nn.ConvTranspose2d(base * 4, base * 2, 2, stride=2)
        self.dec2 = _double_conv(base * 4, base * 2)
        self.up1 = nn.ConvTranspose2d(base * 2, base, 2, stride=2)
        self.dec1 = _double_conv(base * 2, base)
        self.head = nn.Conv2d(base, num_classes, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        skip1 = self.enc1(x)
        skip2 = self.enc2(self.pool(skip1))
        skip3 = self.enc3(self.pool(skip2))
        return skip1, skip2, skip3, self.bottleneck(self.pool(skip3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip1, skip2, skip3, bottom = self.encode(x)
        x = self.dec3(torch.cat([self.up3(bottom), skip3], 1))
        x = self.dec2(torch.cat([self.up2(x), skip2], 1))
        x = self.dec1(torch.cat([self.up1(x), skip1], 1))
        return self.head(x)


def test_unet_bottleneck_is_found_and_pooled(photos: list[Image.Image]) -> None:
    torch.manual_seed(0)
    unet = UNet().eval()
    assert (
        resolve_layer(unet, task="segmentation", preprocessing=PREP, device="cpu") == "bottleneck"
    )

    vectors = extract_embeddings(
        unet, photos, task="segmentation", preprocessing=PREP, device="cpu"
    )
    with torch.inference_mode():
        bottom = unet.encode(_batch(photos))[3]  # (3, 128, 16, 16): 32768 values per image
    expected = F.adaptive_avg_pool2d(bottom, (8, 8)).flatten(1).numpy()  # 8192 <= 10000
    assert vectors.shape == (3, 8192)
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        extract_embeddings(unet, photos, task="segmentation", preprocessing=PREP, device="cpu"),
        vectors,
    )

    tight = extract_embeddings(
        unet, photos, task="segmentation", preprocessing=PREP, max_elements=1000, device="cpu"
    )
    assert tight.shape == (3, 512)  # 128 channels at 2 x 2
    np.testing.assert_allclose(
        tight, F.adaptive_avg_pool2d(bottom, (2, 2)).flatten(1).numpy(), rtol=1e-5, atol=1e-6
    )
    # Classification pools any spatial layer globally.
    pooled = extract_embeddings(unet, photos, layer="bottleneck", preprocessing=PREP, device="cpu")
    np.testing.assert_allclose(pooled, bottom.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)


def test_deeplabv3_uses_backbone_last_stage(photos: list[Image.Image]) -> None:
    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None
    ).eval()
    assert resolve_layer(model, task="segmentation") == "backbone.16"
    vectors = extract_embeddings(
        model, photos, task="segmentation", preprocessing=PREP, device="cpu"
    )
    with torch.inference_mode():
        stage = model.backbone(_batch(photos))["out"]  # (3, 960, 8, 8)
    plan = plan_spatial_pool(*stage.shape[1:], max_elements=10_000)
    assert (plan.channels, plan.height, plan.width) == (960, 2, 2)
    expected = F.adaptive_avg_pool2d(stage, (2, 2)).flatten(1).numpy()
    assert vectors.shape == (3, 3840)
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "builder",
    [
        torchvision.models.segmentation.fcn_resnet50,
        torchvision.models.segmentation.deeplabv3_resnet50,
        torchvision.models.segmentation.lraspp_mobilenet_v3_large,
    ],
)
def test_torchvision_segmenters_pool_backbone_under_budget(
    builder, photos: list[Image.Image]
) -> None:
    torch.manual_seed(0)
    model = builder(weights=None, weights_backbone=None).eval()
    layer = resolve_layer(model, task="segmentation")
    vectors = extract_embeddings(
        model, photos, task="segmentation", preprocessing=PREP, device="cpu"
    )
    with torch.inference_mode():
        features = model.backbone(_batch(photos))
    stage = features["out"] if "out" in features else features["high"]
    plan = plan_spatial_pool(*stage.shape[1:], max_elements=10_000)
    expected = F.adaptive_avg_pool2d(stage, (plan.height, plan.width)).flatten(1).numpy()
    assert layer.startswith("backbone.") and vectors.shape[1] <= 10_000
    np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-5)


def test_automatic_bottleneck_skips_pooled_vectors_and_logits(photos: list[Image.Image]) -> None:
    """A squeeze-excitation branch (1x1 maps) and low-resolution logits are not the bottleneck."""

    class SqueezeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=4, padding=1)
            self.squeeze = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 8, 1), nn.Sigmoid())
            self.deep = nn.Conv2d(8, 16, 3, stride=4, padding=1)
            self.logits = nn.Conv2d(16, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            x = self.deep(x * self.squeeze(x))
            return F.interpolate(self.logits(x), scale_factor=16.0)

    net = SqueezeNet().eval()
    assert resolve_layer(net, task="segmentation", preprocessing=PREP, device="cpu") == "deep"


@given(
    channels=st.integers(1, 4096),
    height=st.integers(1, 200),
    width=st.integers(1, 200),
    max_elements=st.integers(1, 50_000),
)
def test_spatial_plan_is_the_first_halving_under_budget(
    channels: int, height: int, width: int, max_elements: int
) -> None:
    plan = plan_spatial_pool(channels, height, width, max_elements=max_elements)
    assert plan.elements <= max_elements
    assert plan.channels == min(channels, max_elements)
    sizes = [(height, width)]
    while sizes[-1] != (1, 1):
        sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
    assert (plan.height, plan.width) in sizes
    position = sizes.index((plan.height, plan.width))
    if position > 0:  # the previous, larger size did not fit
        previous = sizes[position - 1]
        assert channels * previous[0] * previous[1] > max_elements
