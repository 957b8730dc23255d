"""Decode and resize images to a model's input, as uint8 RGB; normalisation happens on the model side.

Keeping the worker output uint8 (height, width, 3) makes batches 4x smaller to move between
processes, and a stacked (batch, height, width, 3) tensor viewed as (batch, 3, height, width) is
already channels-last.

>>> from shoal.embedding.models import DataConfig
>>> pixels = resize_crop(Image.new("RGB", (500, 375)), DataConfig())
>>> pixels.shape, pixels.dtype
((224, 224, 3), dtype('uint8'))
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from shoal.embedding.models import DataConfig

#: Pillow resampling filter for each ``DataConfig.interpolation`` name.
RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

# JPEG draft decoding (DCT scaling) stops at this multiple of the resize target, so the final
# bicubic step still sees at least twice the output resolution and the result stays faithful.
_DRAFT_MARGIN = 2
_EXIF_ORIENTATION = 0x0112


class ImageDecodeError(ValueError):
    """An image file could not be read or decoded."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot decode image {str(path)!r}: {reason}")
        self.path = str(path)
        self.reason = reason


def scale_size(config: DataConfig) -> int:
    """Short-side length before the centre crop (timm: floor(input size / crop_pct))."""
    return math.floor(min(config.image_size) / config.crop_pct)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of ``image``; transparent areas are composited on white (cut-out photos)."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        array = (array - low) * (255.0 / (high - low)) if high > low else array * 0
        return Image.fromarray(array.astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def load_image(
    path: str | Path, *, data: bytes | None = None, min_short_side: int | None = None
) -> Image.Image:
    """Decode ``path`` (or its already-read bytes ``data``) to RGB, honouring EXIF orientation.

    With ``min_short_side``, JPEGs decode at a reduced scale that keeps the short side at least
    twice that length. Raises ImageDecodeError naming the file.
    """
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as image:
            if min_short_side is not None and image.format == "JPEG":
                width, height = image.size
                target = _DRAFT_MARGIN * min_short_side
                if min(width, height) > target:
                    ratio = min(width, height) / target
                    image.draft("RGB", (math.ceil(width / ratio), math.ceil(height / ratio)))
            image.load()
            if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:  # exif_transpose always copies
                return to_rgb(ImageOps.exif_transpose(image))
            return to_rgb(image)
    except ImageDecodeError:
        raise
    except Exception as error:  # PIL raises many types for damaged files
        raise ImageDecodeError(path, f"{type(error).__name__}: {error}") from error


def rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """(height, width, 3) uint8 RGB of a PIL image or a grey / RGB / RGBA array."""
    if isinstance(image, np.ndarray):
        array = _as_uint8(image)
        if array.ndim == 2:
            return np.repeat(array[:, :, None], 3, axis=2)
        if array.ndim == 3 and array.shape[2] == 3:
            return array
        image = Image.fromarray(array)
    return np.array(to_rgb(image), dtype=np.uint8)  # a writable copy, for torch.from_numpy


def resized_shape(height: int, width: int, config: DataConfig) -> tuple[int, int]:
    """(height, width) after scaling the short side to ``scale_size(config)``."""
    short = scale_size(config)
    if width <= height:
        return max(1, int(short * height / width)), short
    return short, max(1, int(short * width / height))


def resize_crop(image: Image.Image | np.ndarray, config: DataConfig) -> np.ndarray:
    """Resize the short side to ``scale_size(config)``, centre-crop to the model's input size.

    image: PIL image, or (height, width) / (height, width, 3|4) uint8 array.
    Returns (height, width, 3) uint8 RGB.

    Bilinear and bicubic use torch's antialiased uint8 kernels, which follow Pillow's filters
    (within 2 grey levels of Pillow, in a few pixels) at about a fifth of the cost; other
    interpolations use Pillow. Runs on the calling thread's torch intra-op threads.
    """
    array = rgb_array(image)
    height, width = array.shape[:2]
    out_h, out_w = config.image_size
    new_h, new_w = resized_shape(height, width, config)
    if (new_h, new_w) == (height, width):
        resized = array
    elif config.interpolation in ("bicubic", "bilinear"):
        pixels = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)  # channels-last view
        resized = (
            F.interpolate(pixels, size=(new_h, new_w), mode=config.interpolation, antialias=True)
            .squeeze(0)
            .permute(1, 2, 0)
            .numpy()
        )
    else:
        resample = RESAMPLE[config.interpolation]
        resized = np.asarray(Image.fromarray(array).resize((new_w, new_h), resample))
    top = int(round((new_h - out_h) / 2.0))
    left = int(round((new_w - out_w) / 2.0))
    if top < 0 or left < 0:  # crop_pct > 1: pad symmetrically with black like torchvision
        canvas = np.zeros((max(new_h, out_h), max(new_w, out_w), 3), dtype=np.uint8)
        canvas[max(0, -top) : max(0, -top) + new_h, max(0, -left) : max(0, -left) + new_w] = resized
        resized, top, left = canvas, max(0, top), max(0, left)
    return resized[top : top + out_h, left : left + out_w].copy()  # writable, owns its memory


def _as_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating) and array.size and float(np.nanmax(array)) <= 1.0:
        array = array * 255.0
    return np.clip(np.nan_to_num(array), 0, 255).astype(np.uint8)
