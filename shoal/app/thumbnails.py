"""Thumbnails: small square JPEGs of images and of boxes in them, cached on disk.

They live beside the workspace (``.cache/thumbnails``), keyed by the content-addressed image
name (and the box), so each is made once whoever asks for it.

Example:
    >>> jpeg = thumbnail(Workspace("/tmp/ws"), Path("photo.jpg"), size=96)   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from shoal.store import Workspace, atomic_path

THUMBNAIL_SIZE = 160
#: Context kept around a box in its thumbnail, as a fraction of the box's longer side.
BOX_MARGIN = 0.15
BOX_COLOUR = (255, 45, 85)


def thumbnail_path(workspace: Workspace, image: Path, *, size: int = THUMBNAIL_SIZE) -> Path:
    """Where the JPEG thumbnail of a stored image lives (images are content-addressed, so is this)."""
    image = Path(image)
    digest = (
        image.stem
        if re.fullmatch(r"[0-9a-f]{64}", image.stem)
        else hashlib.sha256(str(image).encode()).hexdigest()
    )
    return workspace.root / ".cache" / "thumbnails" / f"sq{size}" / digest[:2] / f"{digest}.jpg"


def thumbnail(workspace: Workspace, image: Path, *, size: int = THUMBNAIL_SIZE) -> bytes:
    """A ``size`` x ``size`` JPEG of ``image`` (fitted, padded white), made once and cached on disk."""
    target = thumbnail_path(workspace, image, size=size)
    if target.exists():
        return target.read_bytes()
    from PIL import Image

    with Image.open(image) as opened:
        opened.draft("RGB", (size * 2, size * 2))  # JPEG: decode at reduced scale, much faster
        picture = (
            opened.convert("RGBA") if opened.mode in ("P", "LA", "RGBA") else opened.convert("RGB")
        )
        picture.thumbnail((size, size))
        # A square white tile: galleries line up whatever the images' aspect ratios.
        tile = Image.new("RGB", (size, size), (255, 255, 255))
        offset = ((size - picture.width) // 2, (size - picture.height) // 2)
        tile.paste(
            picture, offset, mask=picture.getchannel("A") if picture.mode == "RGBA" else None
        )
        picture = tile
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=82, optimize=True)
    return _keep(target, buffer.getvalue())


def object_box(samples: pd.DataFrame, row: int) -> tuple[float, float, float, float] | None:
    """The (x0, y0, x1, y1) pixel box of an object row; None for sample rows or missing boxes."""
    if not all(c in samples for c in ("object_id", "x0", "y0", "x1", "y1")):
        return None
    record = samples.iloc[int(row)]
    box = [record[c] for c in ("x0", "y0", "x1", "y1")]
    if any(pd.isna(v) for v in box):
        return None
    return tuple(float(v) for v in box)  # type: ignore[return-value]


def box_thumbnail_path(
    workspace: Workspace,
    image: Path,
    box: Sequence[float],
    *,
    size: int = THUMBNAIL_SIZE,
    margin: float = BOX_MARGIN,
) -> Path:
    """Where the box-crop thumbnail of ``box`` in ``image`` is cached (keyed by image and box)."""
    base = thumbnail_path(workspace, image, size=size)
    key = hashlib.sha256(
        json.dumps([base.stem, [round(float(v), 2) for v in box], margin]).encode()
    ).hexdigest()
    return workspace.root / ".cache" / "thumbnails" / f"box{size}" / key[:2] / f"{key}.jpg"


def box_thumbnail(
    workspace: Workspace,
    image: Path,
    box: Sequence[float],
    *,
    size: int = THUMBNAIL_SIZE,
    margin: float = BOX_MARGIN,
    colour: tuple[int, int, int] = BOX_COLOUR,
) -> bytes:
    """A ``size`` x ``size`` JPEG of one object: its box (x0, y0, x1, y1 in pixels) with
    ``margin`` (a fraction of the box's longer side) of context around it, fitted and padded white,
    and the box outlined in ``colour``. Made once and cached on disk like :func:`thumbnail`."""
    target = box_thumbnail_path(workspace, image, box, size=size, margin=margin)
    if target.exists():
        return target.read_bytes()
    from PIL import Image, ImageDraw

    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    pad = margin * max(x1 - x0, y1 - y0, 1.0)
    with Image.open(image) as opened:
        picture = opened.convert("RGB")
    left = int(np.clip(np.floor(x0 - pad), 0, picture.width - 1))
    top = int(np.clip(np.floor(y0 - pad), 0, picture.height - 1))
    right = int(np.clip(np.ceil(x1 + pad), left + 1, picture.width))
    bottom = int(np.clip(np.ceil(y1 + pad), top + 1, picture.height))
    crop = picture.crop((left, top, right, bottom))
    scale = min(size / crop.width, size / crop.height)
    fitted = crop.resize(
        (max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
        Image.Resampling.LANCZOS,
    )
    tile = Image.new("RGB", (size, size), (255, 255, 255))
    offset = ((size - fitted.width) // 2, (size - fitted.height) // 2)
    tile.paste(fitted, offset)
    # The box in tile coordinates, clipped to the crop (a box may run off the image).
    corners = [
        offset[0] + (np.clip(x0, left, right) - left) * scale,
        offset[1] + (np.clip(y0, top, bottom) - top) * scale,
        offset[0] + (np.clip(x1, left, right) - left) * scale - 1,
        offset[1] + (np.clip(y1, top, bottom) - top) * scale - 1,
    ]
    corners[2], corners[3] = max(corners[2], corners[0]), max(corners[3], corners[1])
    ImageDraw.Draw(tile).rectangle(corners, outline=colour, width=max(2, size // 80))
    buffer = io.BytesIO()
    tile.save(buffer, format="JPEG", quality=85, optimize=True, subsampling=0)  # crisp box edge
    return _keep(target, buffer.getvalue())


def _keep(target: Path, data: bytes) -> bytes:
    """Cache ``data`` at ``target`` and return it."""
    try:
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
    except OSError:
        pass  # a read-only workspace still gets its thumbnails, just not cached
    return data
