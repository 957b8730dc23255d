"""Benchmark: is Shoal's reference-vs-current test calibrated, powerful and fast, next to
alibi-detect's MMDDrift on the same draws?

Data: the real Fashion-MNIST embeddings of tests/fixtures/real_embeddings.npz (EfficientNet-Lite0,
1280-d). Draws as defined in benchmarks/real_data.py (and used by tests/analysis/test_compare_real.py):

* null: 1000 vs 1000 random disjoint samples of the one pool (false-positive rate at 0.05);
* shift: a class-balanced reference (10 % per class) vs a current set where one class (cycling)
  makes up 20 % and the other nine share the rest (power at 0.05).

Methods, all run on the same draws in this process:

* ``shoal mmd (default)`` and ``shoal classifier``: ``shoal.analysis.two_sample.two_sample_test``.
* ``alibi-detect MMDDrift``: the real library (``MMDDrift(x_ref, backend="pytorch")`` with its
  defaults: raw embeddings, Gaussian kernel with median-heuristic bandwidth from the reference,
  100 permutations, drift when p < 0.05). alibi-detect 0.13 pins numpy<2, pandas<3 and
  Pillow<11, so it cannot live in Shoal's venv; point ``--alibi-path`` (or $SHOAL_ALIBI_PATH) at
  a directory where it was installed with ``pip install --no-deps --target DIR alibi-detect``
  plus its import-time dependencies. It is slow on CPU, so it runs on the first
  ``--alibi-null`` / ``--alibi-shift`` draws.
* ``alibi-default reimplementation``: the same algorithm as MMDDrift's defaults, vectorised with
  numpy, run on every draw; its statistic is checked against the real library on shared draws.

Also timed: the full ``compare`` (test + novelty + clusters) at 1000 vs 1000, and at
``--large-n`` vs ``--large-n`` (resampled real vectors with small noise).

Timings on a shared machine are noisy: the table gives each method's time relative to the
alibi baseline measured in the same run.

    .venv/bin/python benchmarks/bench_compare.py [--null 200] [--shift 100] [--large-n 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from real_data import (  # a sibling module; it also puts the repository on sys.path
    FIXTURE,
    RESULTS,
    ROOT,
    load_real,
    null_split,
    prior_shift_rows,
    timed,
)

from shoal.analysis.compare import compare
from shoal.analysis.two_sample import DEFAULT_N_PERMUTATIONS, two_sample_test

ALPHA = 0.05
N_PER_SIDE = 1000


# --------------------------------------------------------------------------- the peer


def alibi_default_reimplementation(
    x_ref: np.ndarray, x: np.ndarray, *, n_permutations: int = 100, rng: np.random.Generator
) -> tuple[float, float]:
    """(p-value, MMD²) as alibi-detect's MMDDrift computes them with its defaults.

    Kernel exp(-|a-b|² / (2 sigma²)) with sigma² = half the median of the reference's pairwise
    squared distances (zeros of the diagonal included in the count, as alibi's sigma_median
    does); unbiased MMD² with a zeroed diagonal; p = share of permutations with MMD² >= observed.
    """
    x_ref = np.asarray(x_ref, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    pooled = np.vstack([x_ref, x])
    squared_norms = (pooled**2).sum(1)
    squared = np.maximum(squared_norms[:, None] + squared_norms[None, :] - 2 * pooled @ pooled.T, 0)
    n_ref, n_cur = len(x_ref), len(x)
    reference_block = squared[:n_ref, :n_ref].ravel()
    n_median = n_ref + (reference_block.size - n_ref) // 2 - 1
    sigma_squared = 0.5 * np.partition(reference_block, n_median)[n_median]
    kernel = np.exp(-0.5 * squared / sigma_squared)
    np.fill_diagonal(kernel, 0.0)

    def mmd2(order: np.ndarray) -> np.ndarray:
        # order: (n_total, n_draws) row permutations; the last n_cur rows play "current".
        is_current = np.zeros((len(pooled), order.shape[1]))
        np.put_along_axis(is_current, order[n_ref:], 1.0, axis=0)
        kernel_current = kernel @ is_current
        current_current = (is_current * kernel_current).sum(0)
        reference_current = kernel_current.sum(0) - current_current
        reference_reference = kernel.sum() - 2 * reference_current - current_current
        return (
            reference_reference / (n_ref * (n_ref - 1))
            + current_current / (n_cur * (n_cur - 1))
            - 2 * reference_current / (n_ref * n_cur)
        )

    observed = mmd2(np.arange(len(pooled))[:, None])[0]
    orders = np.stack([rng.permutation(len(pooled)) for _ in range(n_permutations)], axis=1)
    permuted = mmd2(orders)
    return float((observed <= permuted).mean()), float(observed)


def load_alibi(path: str | None) -> tuple[Callable[..., Any] | None, str]:
    if path:
        sys.path.insert(0, path)
    try:
        import alibi_detect
        from alibi_detect.cd import MMDDrift
    except Exception as error:  # any import failure means "not available here"
        return None, f"not importable ({type(error).__name__}: {str(error)[:120]})"
    return MMDDrift, f"alibi-detect {alibi_detect.__version__}"


def run_alibi(
    mmd_drift: Callable[..., Any], x_ref: np.ndarray, x: np.ndarray
) -> tuple[float, float]:
    detector = mmd_drift(x_ref.astype(np.float32), backend="pytorch", p_val=ALPHA)
    data = detector.predict(x.astype(np.float32))["data"]
    return float(data["p_val"]), float(data["distance"])


# --------------------------------------------------------------------------- the run


def draws(
    embeddings: np.ndarray, labels: np.ndarray, n_null: int, n_shift: int
) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(2024)
    out = []
    for i in range(n_null):
        reference, current = null_split(embeddings, N_PER_SIDE, N_PER_SIDE, rng)
        out.append(("null", i, reference, current))
    for i in range(n_shift):
        reference_rows, current_rows = prior_shift_rows(labels, N_PER_SIDE, i % 10, rng)
        out.append(("shift", i, embeddings[reference_rows], embeddings[current_rows]))
    return out


def summarise(records: list[dict[str, Any]], method: str) -> dict[str, Any]:
    rows = [r for r in records if r["method"] == method]
    null = [r for r in rows if r["kind"] == "null"]
    shift = [r for r in rows if r["kind"] == "shift"]
    return {
        "method": method,
        "null_draws": len(null),
        "fpr": float(np.mean([r["rejected"] for r in null])) if null else None,
        "shift_draws": len(shift),
        "power": float(np.mean([r["rejected"] for r in shift])) if shift else None,
        "median_seconds": float(np.median([r["seconds"] for r in rows])) if rows else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--null", type=int, default=200, help="null splits")
    parser.add_argument("--shift", type=int, default=100, help="shifted draws")
    parser.add_argument("--alibi-null", type=int, default=30, help="null splits for real alibi")
    parser.add_argument("--alibi-shift", type=int, default=15, help="shifted draws for real alibi")
    parser.add_argument("--alibi-path", default=os.environ.get("SHOAL_ALIBI_PATH"))
    parser.add_argument("--large-n", type=int, default=50_000, help="per side; 0 skips")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fixture", type=Path, default=FIXTURE)
    parser.add_argument("--out", type=Path, default=RESULTS / "compare.json")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    real = load_real(args.fixture)
    embeddings, labels = real["fmnist"], real["fmnist_labels"]
    mmd_drift, alibi_version = load_alibi(args.alibi_path)
    print(f"alibi-detect: {alibi_version}", flush=True)

    records: list[dict[str, Any]] = []
    statistic_gaps: list[float] = []
    peer_rng = np.random.default_rng(7)
    all_draws = draws(embeddings, labels, args.null, args.shift)
    for number, (kind, index, reference, current) in enumerate(all_draws):
        seed = 10_000 * (kind == "shift") + index
        for method in ("auto", "classifier"):
            outcome, seconds = timed(
                two_sample_test, reference, current, method=method, random_state=seed
            )
            name = "shoal mmd (default)" if method == "auto" else "shoal classifier"
            records.append(
                {
                    "method": name,
                    "kind": kind,
                    "draw": index,
                    "p_value": outcome.p_value,
                    "rejected": outcome.p_value <= ALPHA,
                    "seconds": seconds,
                }
            )
        (p_value, statistic), seconds = timed(
            alibi_default_reimplementation, reference, current, rng=peer_rng
        )
        records.append(
            {
                "method": "alibi-default reimplementation",
                "kind": kind,
                "draw": index,
                "p_value": p_value,
                "rejected": p_value < ALPHA,
                "seconds": seconds,
            }
        )
        limit = args.alibi_null if kind == "null" else args.alibi_shift
        if mmd_drift is not None and index < limit:
            (alibi_p, alibi_statistic), seconds = timed(run_alibi, mmd_drift, reference, current)
            records.append(
                {
                    "method": "alibi-detect MMDDrift",
                    "kind": kind,
                    "draw": index,
                    "p_value": alibi_p,
                    "rejected": alibi_p < ALPHA,
                    "seconds": seconds,
                }
            )
            statistic_gaps.append(abs(alibi_statistic - statistic) / max(abs(statistic), 1e-12))
        if (number + 1) % 20 == 0:
            print(f"  {number + 1}/{len(all_draws)} draws", flush=True)

    methods = [
        "shoal mmd (default)",
        "shoal classifier",
        "alibi-detect MMDDrift",
        "alibi-default reimplementation",
    ]
    summary = [summarise(records, m) for m in methods if any(r["method"] == m for r in records)]
    baseline_name = (
        "alibi-detect MMDDrift" if mmd_drift is not None else "alibi-default reimplementation"
    )
    baseline = next(s["median_seconds"] for s in summary if s["method"] == baseline_name)
    for row in summary:
        row["time_vs_baseline"] = row["median_seconds"] / baseline

    # The whole comparison (test + novelty + clusters), 1000 vs 1000 and large.
    rng = np.random.default_rng(11)
    reference, current = null_split(embeddings, N_PER_SIDE, N_PER_SIDE, rng)
    _, full_seconds = timed(compare, reference, current)
    timings: dict[str, Any] = {"compare_1000_vs_1000_seconds": full_seconds}
    if args.large_n:
        jitter = 0.05 * embeddings.std()
        big_reference = embeddings[rng.integers(len(embeddings), size=args.large_n)]
        big_current = embeddings[rng.integers(len(embeddings), size=args.large_n)]
        big_reference = (big_reference + rng.normal(scale=jitter, size=big_reference.shape)).astype(
            np.float16
        )
        big_current = (big_current + rng.normal(scale=jitter, size=big_current.shape)).astype(
            np.float16
        )
        result, large_seconds = timed(compare, big_reference, big_current)
        timings.update(
            {
                "large_n_per_side": args.large_n,
                "compare_large_seconds": large_seconds,
                "large_n_used": result.n_used,
                "large_novelty_search": result.params["novelty_search"],
            }
        )

    report = {
        "benchmark": "compare",
        "data": f"{args.fixture.name}: fmnist (5000 x 1280, EfficientNet-Lite0), {N_PER_SIDE} vs {N_PER_SIDE}",
        "alpha": ALPHA,
        "shoal_n_permutations": DEFAULT_N_PERMUTATIONS,
        "alibi": alibi_version,
        "alibi_statistic_max_relative_gap_vs_reimplementation": max(statistic_gaps)
        if statistic_gaps
        else None,
        "baseline": baseline_name,
        "threads": args.threads,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}",
        "summary": summary,
        "timings": timings,
        "records": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float))

    print()
    print(
        "| method | FPR (null draws) | power (shift draws) | median s / test | time vs baseline |"
    )
    print("|---|---|---|---|---|")
    for row in summary:
        fpr = "-" if row["fpr"] is None else f"{row['fpr']:.3f} ({row['null_draws']})"
        power = "-" if row["power"] is None else f"{row['power']:.2f} ({row['shift_draws']})"
        print(
            f"| {row['method']} | {fpr} | {power} | {row['median_seconds']:.2f} | {row['time_vs_baseline']:.2f}x |"
        )
    print()
    print(f"baseline: {baseline_name}; full compare 1000 vs 1000: {full_seconds:.1f} s", end="")
    if args.large_n:
        print(
            f"; {args.large_n} vs {args.large_n}: {timings['compare_large_seconds']:.0f} s", end=""
        )
    print()
    gap = report["alibi_statistic_max_relative_gap_vs_reimplementation"]
    if gap is not None:
        print(f"reimplementation vs alibi-detect MMD² on shared draws: max relative gap {gap:.2g}")
    shown = args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out
    print(f"written to {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
