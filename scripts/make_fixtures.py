"""Build tests/fixtures/real_embeddings.npz: real EfficientNet-Lite0 embeddings of real images.

Deterministic (fixed seeds, sorted file lists, fp32 inference); takes a few minutes of CPU.

Keys (vectors are float16, 1280-d pre-logits of the default model):
  fmnist (5000, 1280), fmnist_labels, fmnist_indices   Fashion-MNIST train, 500 per class, seed 0
  fmnist_test (1000, 1280), fmnist_test_labels, fmnist_test_indices   t10k, 100 per class, seed 0
  photos (100, 1280), photos_paths, photos_categories  photographic Tux Paint stamps (cut-outs on white)
  digits (300, 1280), digits_labels, digits_indices   sklearn load_digits, 30 per class, seed 0,
      upscaled to 28x28 grey 0-255 with bright ink on a dark background, as Fashion-MNIST objects
  meta  JSON string: model, precision, versions, sources

Sources: Debian dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), Debian
tuxpaint-stamps-default (/usr/share/tuxpaint/stamps), scikit-learn's load_digits.

    .venv/bin/python scripts/make_fixtures.py [--out tests/fixtures/real_embeddings.npz]
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "real_embeddings.npz"
SEED = 0

# A stamp counts as a photo when its opaque pixels hold at least this many distinct colours;
# clip-art stamps have a few hundred to a few thousand, cut-out photos tens of thousands.
MIN_PHOTO_COLOURS = 8000


def read_idx(path: Path) -> np.ndarray:
    """Array stored in an IDX file (optionally gzipped): images (n, rows, cols) or labels (n,)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 28, 28) uint8, labels (n,) int) for split 'train' or 't10k'."""
    images = read_idx(FASHION_MNIST_DIR / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST_DIR / f"{split}-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


def balanced_indices(labels: np.ndarray, per_class: int, *, seed: int) -> np.ndarray:
    """Sorted indices with ``per_class`` random members of every class."""
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(labels == label), size=per_class, replace=False)
        for label in np.unique(labels)
    ]
    return np.sort(np.concatenate(chosen))


def photographic_stamps(root: Path = STAMPS_DIR) -> list[Path]:
    """Sorted Tux Paint stamps that are cut-out photos, not clip-art, mirrors or symbols."""
    found = []
    for path in sorted(root.rglob("*.png")):
        relative = path.relative_to(root).as_posix()
        if "cartoon" in relative.split("/") or relative.startswith("symbols/"):
            continue
        if "mirror" in path.stem or "flip" in path.stem:
            continue
        rgba = np.asarray(Image.open(path).convert("RGBA"))
        opaque = rgba[rgba[..., 3] > 250][:, :3]
        colours = len(np.unique(opaque.astype(np.uint32) @ np.array([65536, 256, 1], np.uint32)))
        if colours >= MIN_PHOTO_COLOURS:
            found.append(path)
    return found


def digits_as_fashion_mnist(
    per_class: int, *, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sklearn digits as (n, 28, 28) uint8 with bright ink on dark, plus labels and indices."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    indices = balanced_indices(digits.target, per_class, seed=seed)
    images = []
    for index in indices:
        # load_digits holds ink density 0..16; Fashion-MNIST holds object brightness 0..255.
        small = Image.fromarray(
            (digits.images[index] * (255.0 / 16.0)).astype(np.float32), mode="F"
        )
        large = np.asarray(small.resize((28, 28), Image.Resampling.BICUBIC))
        images.append(np.clip(np.rint(large), 0, 255).astype(np.uint8))
    return np.stack(images), digits.target[indices].astype(np.int64), indices


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--photos", type=int, default=100, help="photographic stamps to keep")
    args = parser.parse_args(argv)

    import torch

    from shoal.embedding import DEFAULT_MODEL, create_model, embed_images

    torch.manual_seed(SEED)
    model = create_model(DEFAULT_MODEL)
    precision = "fp32"  # the reference numbers, identical on any CPU

    def embed(name: str, images: list) -> np.ndarray:
        started = time.perf_counter()
        vectors = embed_images(images, model, batch_size=50, precision=precision)
        elapsed = time.perf_counter() - started
        print(f"{name}: {len(images)} images in {elapsed:.0f} s ({len(images) / elapsed:.1f}/s)")
        return vectors.astype(np.float16)

    arrays: dict[str, np.ndarray] = {}

    train_images, train_labels = fashion_mnist("train")
    train_indices = balanced_indices(train_labels, 500, seed=SEED)
    arrays["fmnist"] = embed("fmnist", list(train_images[train_indices]))
    arrays["fmnist_labels"] = train_labels[train_indices]
    arrays["fmnist_indices"] = train_indices

    test_images, test_labels = fashion_mnist("t10k")
    test_indices = balanced_indices(test_labels, 100, seed=SEED)
    arrays["fmnist_test"] = embed("fmnist_test", list(test_images[test_indices]))
    arrays["fmnist_test_labels"] = test_labels[test_indices]
    arrays["fmnist_test_indices"] = test_indices

    stamps = photographic_stamps()
    keep = np.sort(
        np.random.default_rng(SEED).choice(
            len(stamps), size=min(args.photos, len(stamps)), replace=False
        )
    )
    chosen = [stamps[i] for i in keep]
    arrays["photos"] = embed("photos", [Image.open(p) for p in chosen])
    relative = [p.relative_to(STAMPS_DIR).as_posix() for p in chosen]
    arrays["photos_paths"] = np.array(relative)
    arrays["photos_categories"] = np.array([r.split("/")[0] for r in relative])

    digit_images, digit_labels, digit_indices = digits_as_fashion_mnist(30, seed=SEED)
    arrays["digits"] = embed("digits", list(digit_images))
    arrays["digits_labels"] = digit_labels
    arrays["digits_indices"] = digit_indices

    import sklearn
    import timm

    meta = {
        "model": model.name,
        "model_source": model.source,
        "dim": model.dim,
        "precision": precision,
        "stored_dtype": "float16",
        "data_config": model.data_config.to_dict(),
        "seed": SEED,
        "photo_rule": f"png stamps outside cartoon/ and symbols/, no mirror/flip, >= {MIN_PHOTO_COLOURS} colours",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "timm": timm.__version__,
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
        },
        "script": "scripts/make_fixtures.py",
    }
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    with open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    tmp.replace(args.out)
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB): "
        + ", ".join(f"{k} {v.shape}" for k, v in arrays.items() if k != "meta")
    )


if __name__ == "__main__":
    main()
