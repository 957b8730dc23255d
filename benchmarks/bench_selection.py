"""Benchmark: picking what to label next (shoal.analysis.selection) — time, memory and coverage.

Data:

* ``real``: the 5,000 real Fashion-MNIST embeddings of tests/fixtures/real_embeddings.npz
  (EfficientNet-Lite0, 1280-d, 500 per class).
* ``tiled``: a larger set *built by tiling* those 5,000 vectors (``--tiled-samples``, 200k by
  default, so 40 noisy copies of each): every copy is the real unit vector plus isotropic
  Gaussian noise of about a quarter of the median nearest-neighbour cosine distance, then
  renormalised; labels are tiled with it. It keeps the real set's geometry at scale, but it is
  not new data: 40 near-copies of each image make coverage easier than real 200k images would.

Both are written to a float32 ``.npy`` file and read as a memory map, as Shoal stores them.
k-center runs twice: reading every row at each pick, and pruned by its PCA copy (the default
from ``PRUNE_MIN_CANDIDATES`` candidates and ``PRUNE_MIN_PICKS`` picks on; forced here for every
size); both give the same picks, so only time and memory differ. Each (data, method, N) run happens in its own process, so its time and peak memory are its own:
``peak_rss_mb`` is getrusage's peak resident set (it counts the memory-mapped file's pages that
were read, which the page cache shares), ``peak_anon_mb`` the peak anonymous memory sampled
every 50 ms (what the selection itself allocated). Coverage is then measured exactly on the full
vectors (shoal.analysis.selection.selection_coverage): the mean and the largest cosine distance from a
sample to its nearest pick, and the 1-NN label accuracy of the picks (each sample gets the label
of its nearest pick), against random picks of the same N (mean of ``--random-seeds`` draws).

    .venv/bin/python benchmarks/bench_selection.py [--tiled-samples 200000] [--skip-tiled]

Writes benchmarks/results/selection.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from real_data import RESULTS, load_real  # a sibling; it puts the repository on sys.path

import shoal.analysis.selection
from shoal.analysis.blocks import BLOCK_ROWS, l2_normalize
from shoal.analysis.knn import build_knn_graph
from shoal.analysis.selection import Selection, select_samples, selection_coverage

OUT = RESULTS / "selection.json"
N_SELECT = (100, 1000)
#: (method, prune) runs per data set and N: k-center reading every row per pick, k-center pruned
#: by its PCA copy (the default from PRUNE_MIN_CANDIDATES rows on; same picks), k-means.
RUNS = (("k-center", False), ("k-center", True), ("k-means", False))


# --------------------------------------------------------------------------- data


def tiled_embeddings(base: np.ndarray, labels: np.ndarray, n_samples: int, path: Path) -> None:
    """Write (n_samples, dim) float32 unit vectors to ``path``: ``base`` repeated with noise."""
    unit = l2_normalize(base)
    typical = float(np.median(build_knn_graph(unit, n_neighbors=1).distances[:, 0]))
    # Per-axis noise so |noise|^2 = typical / 2: a copy sits near typical / 4 (cosine) from its
    # source, inside the gap to the source's real nearest neighbour.
    sigma = np.float32(np.sqrt(typical / 2 / base.shape[1]))
    rng = np.random.default_rng(0)
    matrix = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float32, shape=(n_samples, base.shape[1])
    )
    for start in range(0, n_samples, BLOCK_ROWS):
        rows = np.arange(start, min(n_samples, start + BLOCK_ROWS)) % len(base)
        noisy = unit[rows] + sigma * rng.normal(size=(len(rows), base.shape[1])).astype(np.float32)
        matrix[start : start + len(rows)] = l2_normalize(noisy)
    matrix.flush()
    np.save(path.with_suffix(".labels.npy"), labels[np.arange(n_samples) % len(base)])


# --------------------------------------------------------------------------- one run per process


class AnonymousPeak:
    """Peak anonymous resident memory (RssAnon of /proc/self/status), sampled in a thread."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak_kb, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self._read())
            time.sleep(self.interval)

    def __enter__(self) -> AnonymousPeak:
        self.before_kb = self._read()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, self._read())


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    embeddings = np.load(spec["path"], mmap_mode="r")
    shoal.analysis.selection.PRUNE_MIN_CANDIDATES = 0 if spec["prune"] else 1 << 62
    shoal.analysis.selection.PRUNE_MIN_PICKS = 0
    with AnonymousPeak() as anonymous:
        started = time.perf_counter()
        result = select_samples(
            embeddings,
            spec["n_select"],
            method=spec["method"],
            random_state=0,
        )
        seconds = time.perf_counter() - started
    np.save(spec["selected_path"], result.selected)
    return {
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_anon_mb": anonymous.peak_kb / 1024,
        "anon_before_mb": anonymous.before_kb / 1024,
        "params": result.params,
    }


def run_in_process(spec: dict[str, Any]) -> dict[str, Any]:
    output = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


# --------------------------------------------------------------------------- coverage


def figures_of(result: Selection, labels: np.ndarray) -> dict[str, float]:
    covered = result.nearest_pick >= 0
    predicted = labels[result.selected[result.nearest_pick[covered]]]
    return {
        "mean_distance": result.mean_distance,
        "radius": result.radius,
        "nn_accuracy": float(np.mean(predicted == labels[covered])),
    }


def random_figures(
    embeddings: np.ndarray, labels: np.ndarray, n_select: int, seeds: int
) -> dict[str, float]:
    draws = [
        figures_of(
            selection_coverage(
                embeddings,
                np.random.default_rng(seed).choice(len(embeddings), n_select, replace=False),
            ),
            labels,
        )
        for seed in range(seeds)
    ]
    return {key: float(np.mean([d[key] for d in draws])) for key in draws[0]}


def bench_data(
    name: str, path: Path, labels: np.ndarray, *, seeds: int, work: Path
) -> list[dict[str, Any]]:
    embeddings = np.load(path, mmap_mode="r")
    rows = []
    for n_select in N_SELECT:
        baseline = random_figures(embeddings, labels, n_select, seeds)
        rows.append({"data": name, "method": "random", "n_select": n_select, **baseline})
        print(f"{name} N={n_select} random: {baseline}", file=sys.stderr, flush=True)
        for method, prune in RUNS:
            selected_path = work / f"{name}-{method}-{prune}-{n_select}.npy"
            spec = {
                "path": str(path),
                "n_select": n_select,
                "method": method,
                "prune": prune,
                "selected_path": str(selected_path),
            }
            measured = run_in_process(spec)
            coverage = figures_of(selection_coverage(embeddings, np.load(selected_path)), labels)
            row = {
                "data": name,
                "n_samples": len(embeddings),
                "method": method,
                "pruned": prune,
                "n_select": n_select,
                **measured,
                **coverage,
            }
            rows.append(row)
            print(
                f"{name} N={n_select} {method} pruned={prune}: {row['seconds']:.1f}s, "
                f"peak anon {row['peak_anon_mb']:.0f} MB, {coverage}",
                file=sys.stderr,
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tiled-samples", type=int, default=200_000)
    parser.add_argument("--skip-tiled", action="store_true")
    parser.add_argument("--random-seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker)), default=float))
        return {}

    real = load_real()
    base, labels = real["fmnist"], real["fmnist_labels"]
    load_before = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-selection-") as directory:
        work = Path(directory)
        real_path = work / "real.npy"
        np.save(real_path, base.astype(np.float32))
        rows += bench_data("real", real_path, labels, seeds=args.random_seeds, work=work)
        if not args.skip_tiled:
            tiled_path = work / "tiled.npy"
            tiled_embeddings(base, labels, args.tiled_samples, tiled_path)
            tiled_labels = np.load(tiled_path.with_suffix(".labels.npy"))
            rows += bench_data(
                "tiled", tiled_path, tiled_labels, seeds=args.random_seeds, work=work
            )
    report = {
        "benchmark": "selection",
        "data": {
            "real": "5,000 real Fashion-MNIST EfficientNet-Lite0 embeddings (1280-d)",
            "tiled": f"{args.tiled_samples:,} rows built by tiling the real 5,000 with Gaussian "
            "noise (a copy sits at about a quarter of the median nearest-neighbour distance "
            "from its source); memory-mapped float32",
        },
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        "python": platform.python_version(),
        "note": "shared 2-core machine: seconds are noisy; coverage is exact on the full vectors",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float))
    print(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Selection benchmark (load average {report['load_average_before']:.1f} -> "
        f"{report['load_average_after']:.1f} on {report['cpu_count']} CPUs)",
        "",
        "| data | N | method | seconds | peak RSS MB | peak anon MB | mean dist | radius | 1-NN acc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        method = row["method"] + (" (PCA-pruned)" if row.get("pruned") else "")
        timing = (
            f"{row['seconds']:.1f} | {row['peak_rss_mb']:.0f} | {row['peak_anon_mb']:.0f}"
            if "seconds" in row
            else "- | - | -"
        )
        lines.append(
            f"| {row['data']} | {row['n_select']} | {method} | {timing} | "
            f"{row['mean_distance']:.4f} | {row['radius']:.3f} | {row['nn_accuracy']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
