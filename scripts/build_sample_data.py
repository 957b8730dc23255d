"""Build sample_data/tuxpaint: a small, real, labelled photo/clip-art set with a train/test shift.

Source: Debian's tuxpaint-stamps-default (GPL-2), cut-out photos and drawings in category folders.
Each stamp is flattened onto white and shrunk to at most 192 px, saved as JPEG. The test split
plays production: 60% of the birds and mammals but 15% of every other class, plus a class that
training never saw ("space"), so the compare page has a real shift and real novelty to find. Deterministic: the same package gives the same files.

    python scripts/build_sample_data.py [--stamps /usr/share/tuxpaint/stamps] [--out sample_data/tuxpaint]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

from PIL import Image

CLASSES = {
    "birds": "animals/birds",
    "mammals": "animals/mammals",
    "insects": "animals/insects",
    "food": "food",
    "plants": "plants",
    "vehicles": "vehicles",
    "town": "town",
}
TEST_ONLY = {"space": "space"}
# The test split is "production": animals are over-represented, and space was never seen in training.
TEST_SHARE = {"birds": 0.6, "mammals": 0.6}
DEFAULT_TEST_SHARE = 0.15
MAX_SIDE = 192


def _order(path: Path) -> str:
    return hashlib.sha1(path.name.encode()).hexdigest()


def _save(source: Path, target: Path) -> None:
    with Image.open(source) as image:
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        canvas.alpha_composite(image)
        flat = canvas.convert("RGB")
        flat.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        target.parent.mkdir(parents=True, exist_ok=True)
        flat.save(target, "JPEG", quality=88, optimize=True)


def build(stamps: Path, out: Path) -> dict[str, int]:
    if out.exists():
        shutil.rmtree(out)
    counts: dict[str, int] = {}
    for label, folder in {**CLASSES, **TEST_ONLY}.items():
        files = sorted((stamps / folder).rglob("*.png"), key=_order)
        share = TEST_SHARE.get(label, DEFAULT_TEST_SHARE)
        n_test = len(files) if label in TEST_ONLY else round(len(files) * share)
        for index, file in enumerate(files):
            split = "test" if index < n_test else "train"
            _save(file, out / split / label / f"{file.stem}.jpg")
            counts[f"{split}/{label}"] = counts.get(f"{split}/{label}", 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stamps", type=Path, default=Path("/usr/share/tuxpaint/stamps"))
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "sample_data" / "tuxpaint"
    )
    args = parser.parse_args()
    if not args.stamps.exists():
        raise SystemExit(f"{args.stamps} not found: apt-get install tuxpaint-stamps-default")
    for key, value in sorted(build(args.stamps, args.out).items()):
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
