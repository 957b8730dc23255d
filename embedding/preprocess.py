"""Decode and resize images to a model's input, as uint8 RGB; normalisation happens on the model side.

Keeping the worker output uint8 (height, width, 3) makes batches 4x smaller to move between
processes, and a stacked (batch, height, width, 3) tensor viewed as (batch, 3, height, width) is
already channels-last.

>>> from embedding.models import DataConfig
>>> pixels = resize_crop(Image.new("RGB", (500, 375)), DataConfig())
>>> pixels.shape, pixels.dtype
((224, 224, 3), dtype('uint8'))
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from embedding.models import DataConfig

_RESAMPLE = {
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
            return to_rgb(ImageOps.exif_transpose(image))
    except ImageDecodeError:
        raise
    except Exception as error:  # PIL raises many types for damaged files
        raise ImageDecodeError(path, f"{type(error).__name__}: {error}") from error


def resize_crop(image: Image.Image | np.ndarray, config: DataConfig) -> np.ndarray:
    """Resize the short side to ``scale_size(config)``, centre-crop to the model's input size.

    image: PIL image, or (height, width) / (height, width, 3|4) uint8 array.
    Returns (height, width, 3) uint8 RGB.
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(_as_uint8(image))
    image = to_rgb(image)
    out_h, out_w = config.image_size
    short = scale_size(config)
    width, height = image.size
    if width <= height:
        new_w, new_h = short, max(1, int(short * height / width))
    else:
        new_w, new_h = max(1, int(short * width / height)), short
    left = int(round((new_w - out_w) / 2.0))
    top = int(round((new_h - out_h) / 2.0))
    resample = _RESAMPLE[config.interpolation]
    if left >= 0 and top >= 0 and (new_w, new_h) != (width, height):
        # Resample only the pixels the centre crop keeps: Pillow places the filter taps as for
        # the full resize (and reads outside the box), so the result is the same, with less work.
        x_scale, y_scale = width / new_w, height / new_h
        box = (left * x_scale, top * y_scale, (left + out_w) * x_scale, (top + out_h) * y_scale)
        return np.array(image.resize((out_w, out_h), resample, box=box), dtype=np.uint8)
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), resample)
    if left < 0 or top < 0:  # crop_pct > 1: pad symmetrically with black like torchvision
        canvas = Image.new("RGB", (max(new_w, out_w), max(new_h, out_h)))
        canvas.paste(image, (max(0, -left), max(0, -top)))
        image, left, top = canvas, max(0, left), max(0, top)
    image = image.crop((left, top, left + out_w, top + out_h))
    return np.array(image, dtype=np.uint8)  # writable, so torch.from_numpy needs no copy


def _as_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating) and array.size and float(np.nanmax(array)) <= 1.0:
        array = array * 255.0
    return np.clip(np.nan_to_num(array), 0, 255).astype(np.uint8)
