"""Build a larger real demo: Fashion-MNIST with a production-like shift and a few foreign photos.

Writes PNG files and a ``manifest.csv`` (path, label, split) under OUT, then, unless --no-import,
imports it as a dataset. ``train`` is a class-balanced sample of Fashion-MNIST's training set;
``production`` comes from its test set with a shifted class mix (more bags and sneakers, fewer
shirts) plus 1% real photos from tuxpaint stamps, labelled "unknown": the kind of drift and
never-seen data the compare and outlier pages are for.

    python scripts/build_demo_dataset.py --out /tmp/fmnist-demo [--train 5000 --production 2000]
    shoal embed fmnist-demo
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

FMNIST = Path("/usr/share/datasets/fashion-mnist")
STAMPS = Path("/usr/share/tuxpaint/stamps")
CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]
PRODUCTION_MIX = np.array([0.08, 0.08, 0.1, 0.08, 0.1, 0.1, 0.04, 0.16, 0.18, 0.08])


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion_mnist(kind: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if kind == "train" else "t10k"
    if not FMNIST.exists():
        raise SystemExit(f"{FMNIST} not found: apt-get install dataset-fashion-mnist")
    return read_idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz"), read_idx(
        FMNIST / f"{prefix}-labels-idx1-ubyte.gz"
    )


def sample_by_mix(
    labels: np.ndarray, mix: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    counts = np.round(mix / mix.sum() * n).astype(int)
    return np.concatenate(
        [
            rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
            for c, k in enumerate(counts)
        ]
    )


def build(out: Path, *, n_train: int, n_production: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for split, source, mix, n in (
        ("train", "train", np.full(10, 0.1), n_train),
        ("production", "test", PRODUCTION_MIX, n_production),
    ):
        images, labels = load_fashion_mnist(source)
        for index in sample_by_mix(labels, mix, n, rng):
            path = Path(split) / f"{source}-{index:05d}.png"
            (out / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index]).save(out / path)
            rows.append({"path": path.as_posix(), "label": CLASSES[labels[index]], "split": split})
    photos = sorted(STAMPS.glob("animals/mammals/*.png"))[: max(1, n_production // 100)]
    for photo in photos:
        path = Path("production") / f"photo-{photo.stem}.png"
        with Image.open(photo) as image:
            flat = Image.new("RGBA", image.size, "white")
            flat.alpha_composite(image.convert("RGBA"))
            flat.convert("RGB").resize((28, 28)).save(out / path)
        rows.append({"path": path.as_posix(), "label": "unknown", "split": "production"})
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--production", type=int, default=2000)
    parser.add_argument("--dataset", default="fmnist-demo")
    parser.add_argument("--workspace", default=None)
    parser.add_argument("--no-import", action="store_true")
    args = parser.parse_args()
    manifest = build(args.out, n_train=args.train, n_production=args.production)
    print(f"wrote {manifest}")
    if not args.no_import:
        from shoal.ingest.images import import_source
        from shoal.store import Workspace

        report = import_source(Workspace(args.workspace), manifest, dataset=args.dataset)
        print(
            f"imported {report.imported} samples as {args.dataset!r}; next: shoal embed {args.dataset}"
        )


if __name__ == "__main__":
    main()
