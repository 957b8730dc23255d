"""What the benchmarks share: the repository on ``sys.path``, where results go, the real
embeddings fixture, the draws made from it, and a timer.

A benchmark run as a script imports it as a sibling (``from real_data import ...``), which
also makes the repository's packages importable; tests import ``benchmarks.real_data`` for the
same draws. It imports nothing of ``tests``.

Draws from the 5,000 real Fashion-MNIST vectors (EfficientNet-Lite0 features, 500 per class):

* null split: 2n samples drawn without replacement, split at random into reference (n) and
  current (n). Both sides come from one distribution, so a calibrated test rejects at
  alpha = 0.05 in about 5 % of splits.
* class-prior shift: one class ``c`` (cycling over the ten) makes up 10 % of the reference (the
  reference is class-balanced, n/10 per class) and 20 % of the current set; the other nine
  classes share the remaining 80 % of the current set equally (about 8.9 % each instead of
  10 %). So 10 percentage points of mass move onto one class. Reference and current are
  disjoint draws; the images of one class are exchangeable between the two sides.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: EfficientNet-Lite0 embeddings of Fashion-MNIST (train and test), photos and digits
#: (scripts/make_fixtures.py builds it).
FIXTURE = ROOT / "tests" / "fixtures" / "real_embeddings.npz"
RESULTS = ROOT / "benchmarks" / "results"


def load_real(path: Path = FIXTURE) -> dict[str, np.ndarray]:
    """Every array of the fixture; float16 vectors as float32."""
    with np.load(path, allow_pickle=False) as data:
        return {
            key: data[key].astype(np.float32) if data[key].dtype == np.float16 else data[key]
            for key in data.files
        }


def null_split(
    embeddings: np.ndarray, n_reference: int, n_current: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Reference and current rows drawn from one pool without replacement (no shift)."""
    rows = rng.choice(len(embeddings), size=n_reference + n_current, replace=False)
    return embeddings[rows[:n_reference]], embeddings[rows[n_reference:]]


def prior_shift_rows(
    labels: np.ndarray, n: int, shifted_class: int, rng: np.random.Generator, *, share: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of a class-balanced reference (n) and a current set (n) where
    ``shifted_class`` makes up ``share`` and the other classes split the rest equally."""
    classes = np.unique(labels)
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}

    def take(label: int, count: int) -> list[int]:
        taken, pools[label] = pools[label][:count], pools[label][count:]
        if len(taken) < count:
            raise ValueError(f"class {label} has too few samples for this draw")
        return taken

    per_class = np.full(len(classes), n // len(classes))
    per_class[: n - per_class.sum()] += 1
    reference = [row for c, count in zip(classes, per_class, strict=True) for row in take(c, count)]
    n_shifted = int(round(share * n))
    others = [c for c in classes if c != shifted_class]
    other_counts = np.full(len(others), (n - n_shifted) // len(others))
    other_counts[: n - n_shifted - other_counts.sum()] += 1
    current = take(shifted_class, n_shifted) + [
        row for c, count in zip(others, other_counts, strict=True) for row in take(c, count)
    ]
    return np.array(reference), np.array(current)


def timed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """(function's value, seconds it took)."""
    started = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - started


def flip_labels(
    labels: np.ndarray, share: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Labels with ``share`` of them changed to a different random class, and the flip mask."""
    classes = np.unique(labels)
    flipped = np.zeros(len(labels), dtype=bool)
    flipped[rng.choice(len(labels), int(round(share * len(labels))), replace=False)] = True
    noisy = labels.copy()
    for row in np.flatnonzero(flipped):
        noisy[row] = rng.choice(classes[classes != labels[row]])
    return noisy, flipped
