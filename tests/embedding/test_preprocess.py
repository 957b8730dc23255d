from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shoal.embedding.models import DataConfig
from shoal.embedding.preprocess import ImageDecodeError, load_image, resize_crop, scale_size

CONFIG = DataConfig(input_size=(3, 224, 224), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.875)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (500, 375)),
        Image.new("RGB", (375, 500)),
        Image.new("L", (28, 28)),
        Image.new("RGBA", (64, 300)),
        np.zeros((28, 28), dtype=np.uint8),
        np.zeros((40, 30, 3), dtype=np.float64),
    ],
)
def test_resize_crop_gives_the_model_input_size(image):
    pixels = resize_crop(image, CONFIG)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8


def test_resize_crop_matches_timm_eval_transform(skimage_photos, stamp_photos):
    """Same resize (short side floor(224 / 0.875) = 256, bicubic) and centre crop as timm.

    The palm stamp caught a Pillow resize(box=crop) shortcut that was up to 18 grey levels off.
    """
    import timm.data
    import torch

    from shoal.embedding.preprocess import to_rgb

    transform = timm.data.create_transform(
        input_size=(3, 224, 224),
        interpolation="bicubic",
        crop_pct=0.875,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )
    assert scale_size(CONFIG) == 256
    photos = [Image.fromarray(skimage_photos["chelsea"])]
    photos += [to_rgb(Image.open(p)) for p in stamp_photos["plants"] if "palm" in p.name]
    for photo in photos:
        ours = torch.from_numpy(resize_crop(photo, CONFIG)).permute(2, 0, 1).float() / 127.5 - 1
        difference = (ours - transform(photo)).abs() * 127.5  # in grey levels
        assert float(difference.max()) <= 2.0 + 1e-3
        assert float(difference.mean()) < 0.02


def test_transparent_pixels_become_white_and_grey_becomes_rgb():
    rgba = np.zeros((50, 50, 4), dtype=np.uint8)
    rgba[10:40, 10:40] = (200, 0, 0, 255)
    pixels = resize_crop(rgba, CONFIG)
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert tuple(pixels[112, 112]) == (200, 0, 0)
    grey = resize_crop(np.full((28, 28), 77, dtype=np.uint8), CONFIG)
    assert np.all(grey == 77)


def test_float_arrays_in_unit_range_are_scaled():
    pixels = resize_crop(np.full((30, 30, 3), 0.5), CONFIG)
    assert np.all(pixels == 127)


def test_large_jpeg_draft_decode_stays_faithful(tmp_path, skimage_photos):
    big = Image.fromarray(skimage_photos["astronaut"]).resize(
        (2400, 2400), Image.Resampling.BICUBIC
    )
    path = tmp_path / "big.jpg"
    big.save(path, quality=92)
    drafted = load_image(path, min_short_side=scale_size(CONFIG))
    assert 2 * 256 <= min(drafted.size) < 2400
    full = load_image(path)
    difference = np.abs(
        resize_crop(drafted, CONFIG).astype(int) - resize_crop(full, CONFIG).astype(int)
    )
    assert difference.mean() < 1.5


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (60, 30), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (30, 60)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\0" * 40])
def test_undecodable_file_names_the_file(tmp_path, content):
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match="broken.jpg") as caught:
        load_image(path)
    assert caught.value.path == str(path)


def test_truncated_jpeg_is_an_error(tmp_path, skimage_photos):
    path = tmp_path / "cut.jpg"
    Image.fromarray(skimage_photos["coffee"]).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="cut.jpg"):
        load_image(path)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="absent.png"):
        load_image(tmp_path / "absent.png")
