"""shoal.app.thumbnails: square JPEG thumbnails and outlined box crops, cached on disk."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from shoal.app.thumbnails import box_thumbnail, box_thumbnail_path, thumbnail, thumbnail_path
from shoal.store import Workspace


def test_thumbnails_are_square_jpegs_cached_on_disk(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    image = tmp_path / ("ab" * 32 + ".png")
    picture = Image.new("RGBA", (300, 120), (255, 0, 0, 0))
    picture.paste((0, 0, 255, 255), (100, 20, 200, 100))
    picture.save(image)
    data = thumbnail(workspace, image, size=64)
    with Image.open(io.BytesIO(data)) as thumb:
        assert thumb.format == "JPEG" and thumb.size == (64, 64)
        assert thumb.getpixel((2, 2))[0] > 240  # transparent areas come out white, not black
    cached = thumbnail_path(workspace, image, size=64)
    assert cached.exists() and cached.read_bytes() == data
    image.unlink()
    assert thumbnail(workspace, image, size=64) == data  # served from the cache


def test_box_thumbnail_crops_the_box_and_outlines_it(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    source = np.zeros((200, 300, 3), dtype=np.uint8)
    source[50:150, 100:200] = (0, 0, 255)  # a blue square, the object
    image = tmp_path / "scene.png"
    Image.fromarray(source).save(image)

    data = box_thumbnail(ws, image, (100, 50, 200, 150), size=120, margin=0.2)
    tile = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
    assert tile.shape == (120, 120, 3)
    # The crop is the box plus 20 px each side: 140 px -> 120, so the box spans ~17..103.
    centre = tile[50:70, 50:70]
    assert (centre[..., 2] > 200).all() and (centre[..., :2] < 60).all()
    border = tile[18:102, 17]  # the box's left edge: drawn in the outline colour
    reddish = (border[:, 0] > 150) & (border[:, 1] < 110) & (border[:, 2] < 140)
    assert reddish.mean() > 0.9
    margin = tile[60, 5]  # context around the box (black in the source), not white padding
    assert (margin < 40).all()

    cached = box_thumbnail_path(ws, image, (100, 50, 200, 150), size=120, margin=0.2)
    assert cached.exists() and cached.read_bytes() == data
    other = box_thumbnail(ws, image, (0, 0, 50, 50), size=120, margin=0.2)
    assert other != data


def test_box_thumbnail_of_a_box_running_off_the_image(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    image = tmp_path / "scene.png"
    Image.fromarray(np.full((60, 80, 3), 128, dtype=np.uint8)).save(image)
    data = box_thumbnail(ws, image, (-20, 40, 120, 90), size=64)
    assert Image.open(io.BytesIO(data)).size == (64, 64)
