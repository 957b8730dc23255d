"""Shared real inputs for the embedding tests: the offline default model and real photos."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def _fixture_builder():
    spec = importlib.util.spec_from_file_location(
        "make_fixtures", ROOT / "scripts" / "make_fixtures.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def lite0():
    from shoal.embedding import create_model

    return create_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def skimage_photos() -> dict[str, np.ndarray]:
    """Real RGB photos shipped with scikit-image, by name."""
    data = pytest.importorskip("skimage.data")
    names = [
        "chelsea",
        "coffee",
        "astronaut",
        "rocket",
        "camera",
        "hubble_deep_field",
        "immunohistochemistry",
        "retina",
        "moon",
        "coins",
        "clock",
        "brick",
    ]
    photos = {}
    for name in names:
        loader = getattr(data, name, None)
        if loader is None:
            continue
        try:
            image = loader()
        except Exception:  # some loaders fetch optional files; skip what is not bundled
            continue
        photos[name] = image[..., 0] if image.ndim == 3 and image.shape[-1] == 2 else image
    return photos


@pytest.fixture(scope="session")
def stamp_photos() -> dict[str, list[Path]]:
    """Photographic Tux Paint stamps grouped by top-level category (animals, food, vehicles, ...)."""
    builder = _fixture_builder()
    if not builder.STAMPS_DIR.is_dir():
        pytest.skip(
            "needs Debian tuxpaint-stamps-default (apt-get install tuxpaint-stamps-default)"
        )
    groups: dict[str, list[Path]] = {}
    for path in builder.photographic_stamps():
        groups.setdefault(path.relative_to(builder.STAMPS_DIR).parts[0], []).append(path)
    return groups


def write_photo(
    image: Image.Image | np.ndarray, path: Path, *, size: tuple[int, int] | None = None
) -> Path:
    """Save a real photo (RGB, alpha composited on white) at ``size`` as JPEG or PNG by suffix."""
    from shoal.embedding.preprocess import to_rgb

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = to_rgb(image)
    if size is not None:
        image = image.resize(size, Image.Resampling.LANCZOS)
    image.save(path, quality=90) if path.suffix.lower() in (".jpg", ".jpeg") else image.save(path)
    return path


@pytest.fixture(scope="session")
def photo_files(tmp_path_factory, skimage_photos, stamp_photos) -> list[Path]:
    """About 24 real photos on disk as 500x375 / 375x500 JPEGs and PNGs."""
    folder = tmp_path_factory.mktemp("photos")
    images = list(skimage_photos.values())[:8]
    for category in ("animals", "food", "vehicles", "plants"):
        images += [Image.open(p) for p in stamp_photos.get(category, [])[:4]]
    files = []
    for i, image in enumerate(images):
        size = (375, 500) if i % 3 == 2 else (500, 375)
        files.append(
            write_photo(image, folder / f"photo{i:02d}.{'png' if i % 4 == 3 else 'jpg'}", size=size)
        )
    return files
