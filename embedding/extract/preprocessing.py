"""How a user's model wants its images: size, resize policy, mean, std and channel order.

>>> prep = Preprocessing(size=160, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
>>> prep(Image.new("RGB", (320, 240))).shape
torch.Size([3, 160, 160])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ResizePolicy = Literal["center_crop", "stretch", "pad", "none"]
ImageInput = Image.Image | str | Path | np.ndarray
"""A PIL image, a path to an image file, or an (H, W) / (H, W, 3) uint8 array."""

_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_CHANNELS = {"RGB": 3, "BGR": 3, "L": 1}


@dataclass(frozen=True)
class Preprocessing:
    """Turn a PIL image into a normalised (channels, height, width) float32 tensor.

    size: (height, width) of the model input; an int means a square.
    resize: ``"center_crop"`` resizes so the image covers ``size / crop_pct`` keeping its aspect,
        then crops the centre (torchvision's ``Resize(int(224 / 0.875)) + CenterCrop(224)`` for a
        square size); ``"stretch"`` resizes to exactly ``size``; ``"pad"`` fits the whole image
        inside ``size`` and pads with the mean colour; ``"none"`` feeds the image at its own size.
    crop_pct: fraction of the resized image kept by ``"center_crop"`` (1.0 keeps the short side).
    mean, std: per channel, on pixel values scaled to [0, 1]; a model trained on 0-255 inputs
        with mean M uses ``mean = M / 255, std = 1 / 255``.
    channel_order: ``"RGB"``, ``"BGR"`` (Caffe/OpenCV-trained models) or ``"L"`` (grey, 1 channel).
    interpolation: ``"bilinear"``, ``"bicubic"``, ``"nearest"`` or ``"lanczos"``.

    The defaults are ImageNet's: 224 px centre crop at 0.875, ImageNet mean and std, RGB.
    """

    size: tuple[int, int] = (224, 224)
    resize: ResizePolicy = "center_crop"
    crop_pct: float = 0.875
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channel_order: Literal["RGB", "BGR", "L"] = "RGB"
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        size = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
        if len(size) != 2 or any(int(s) < 1 for s in size):
            raise ValueError(f"size must be a positive int or (height, width), got {self.size!r}")
        object.__setattr__(self, "size", (int(size[0]), int(size[1])))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.resize not in ("center_crop", "stretch", "pad", "none"):
            raise ValueError(
                f"resize must be 'center_crop', 'stretch', 'pad' or 'none', got {self.resize!r}"
            )
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.channel_order not in _CHANNELS:
            raise ValueError(
                f"channel_order must be 'RGB', 'BGR' or 'L', got {self.channel_order!r}"
            )
        channels = _CHANNELS[self.channel_order]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"{self.channel_order} needs {channels} mean and std values, "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.interpolation not in _INTERPOLATION:
            raise ValueError(
                f"interpolation must be one of {sorted(_INTERPOLATION)}, got {self.interpolation!r}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Preprocessing:
        """Build from a mapping of field names (what ``to_dict`` writes, or a module's dict)."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(
                f"unknown preprocessing fields {sorted(unknown)}; valid fields: {sorted(known)}"
            )
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, for the embedding set's metadata."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("L" if self.channel_order == "L" else "RGB")
        resample = _INTERPOLATION[self.interpolation]
        height, width = self.size
        pad_to: tuple[int, int] | None = None
        if self.resize == "stretch":
            image = image.resize((width, height), resample)
        elif self.resize == "center_crop":
            image = _resize_and_center_crop(image, self.size, self.crop_pct, resample)
        elif self.resize == "pad":
            scale = min(height / image.height, width / image.width)
            fitted = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(fitted, resample)
            pad_to = (height, width)
        array = np.asarray(image, dtype=np.float32) / 255.0
        if array.ndim == 2:
            array = array[:, :, None]
        if self.channel_order == "BGR":
            array = array[:, :, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        tensor = (tensor - mean) / std
        if pad_to is not None:
            # Padding after normalisation with 0 is padding with the mean colour.
            top = (pad_to[0] - tensor.shape[1]) // 2
            left = (pad_to[1] - tensor.shape[2]) // 2
            padded = torch.zeros(tensor.shape[0], *pad_to)
            padded[:, top : top + tensor.shape[1], left : left + tensor.shape[2]] = tensor
            tensor = padded
        return tensor


Preprocess = Callable[[Image.Image], torch.Tensor]
"""Any callable from a PIL image to a (channels, height, width) float tensor."""


def _resize_and_center_crop(
    image: Image.Image, size: tuple[int, int], crop_pct: float, resample: Image.Resampling
) -> Image.Image:
    height, width = size
    if height == width:
        # Same arithmetic as torchvision's Resize(int) + CenterCrop, so results match it exactly.
        short_target = int(math.floor(height / crop_pct))
        short, long = sorted((image.width, image.height))
        long_target = int(short_target * long / short)
        if image.width <= image.height:
            new_width, new_height = short_target, long_target
        else:
            new_width, new_height = long_target, short_target
    else:
        scale = max(height / crop_pct / image.height, width / crop_pct / image.width)
        new_width = max(width, round(image.width * scale))
        new_height = max(height, round(image.height * scale))
    image = image.resize((new_width, new_height), resample)
    if new_width < width or new_height < height:  # tiny images: pad (PIL centre) before cropping
        image = ImageOps.pad(image, (max(width, new_width), max(height, new_height)))
    top = int(round((image.height - height) / 2.0))
    left = int(round((image.width - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


def load_image(image: ImageInput) -> Image.Image:
    """``image`` (path, PIL image or uint8 array) as an RGB PIL image, decoded like the main
    pipeline: EXIF rotation applied, transparency composited on white."""
    from shoal.embedding.preprocess import load_image as decode
    from shoal.embedding.preprocess import to_rgb

    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"image arrays must be uint8, got {image.dtype}")
        return to_rgb(Image.fromarray(image))
    if isinstance(image, (str, Path)):
        return decode(image)
    raise TypeError(f"expected a PIL image, a path or a uint8 array, got {type(image).__name__}")


def preprocess_images(
    images: Sequence[ImageInput], preprocess: Preprocess
) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """Preprocessed (C, H, W) float32 tensors for ``images``, and each original (height, width)."""
    tensors = []
    sizes = []
    for image in images:
        pil = load_image(image)
        sizes.append((pil.height, pil.width))
        tensor = preprocess(pil)
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 3:
            raise TypeError(
                "preprocess must return a (channels, height, width) tensor, got "
                f"{getattr(tensor, 'shape', type(tensor).__name__)}"
            )
        tensors.append(tensor.float())
    return tensors, sizes
