"""Outlier detection on real embeddings: Shoal's scorers against cleanlab's OutOfDistribution.

Inliers: 5,000 real Fashion-MNIST embeddings (tests/fixtures/real_embeddings.npz). Planted:
(a) real photos at 1%, (b) scanned digits in same-class clumps of several sizes and totals (the
digits resemble each other far more than any garment, so all of them together form one foreign
group). Reports AUROC (higher = better; 0.5 = chance) per scorer, mean and SD over seeds, and the
share of planted / clean samples each default rule flags.

    .venv/bin/python benchmarks/bench_outliers_vs_cleanlab.py [--seeds 5]

Writes benchmarks/results/outliers_vs_cleanlab.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings

import numpy as np
from real_data import RESULTS, load_real  # a sibling; it puts the repository on sys.path

from shoal.analysis.knn import build_knn_graph
from shoal.analysis.outliers import DEFAULT_METHOD, SCORERS, score_outliers

OUT = RESULTS / "outliers_vs_cleanlab.json"

#: (name, planted kind, clump size, number of planted samples)
SCENARIOS = [
    ("photos 1%", "photos", 1, 50),
    ("digits 10 singles", "digits", 1, 10),
    ("digits 3 clumps of 5", "digits", 5, 15),
    ("digits 10 clumps of 5 (1%)", "digits", 5, 50),
    ("digits 5 clumps of 10 (1%)", "digits", 10, 50),
    ("digits 20 clumps of 5 (2%)", "digits", 5, 100),
]


def planted_set(real: dict[str, np.ndarray], kind: str, clump: int, total: int, seed: int):
    rng = np.random.default_rng(seed)
    if kind == "photos":
        outliers = real["photos"][rng.choice(len(real["photos"]), total, replace=False)]
    else:
        labels = real["digits_labels"]
        classes = rng.permutation(np.unique(labels))
        chosen: list[np.ndarray] = []
        for number in range(total // clump):
            pool = np.flatnonzero(labels == classes[number % len(classes)])
            pool = np.setdiff1d(pool, np.concatenate(chosen) if chosen else [])
            chosen.append(rng.choice(pool, clump, replace=False))
        outliers = real["digits"][np.concatenate(chosen)]
    x = np.concatenate([real["fmnist"], outliers])
    truth = np.r_[np.zeros(len(real["fmnist"]), bool), np.ones(len(outliers), bool)]
    order = rng.permutation(len(x))
    return x[order], truth[order]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    from cleanlab.outlier import OutOfDistribution
    from sklearn.metrics import roc_auc_score

    real = load_real()
    methods = [DEFAULT_METHOD, *sorted(m for m in SCORERS if m != DEFAULT_METHOD)]
    rows = []
    started = time.perf_counter()
    for name, kind, clump, total in SCENARIOS:
        aurocs: dict[str, list[float]] = {m: [] for m in [*methods, "cleanlab"]}
        flagged_true, flagged_clean = [], []
        for seed in range(args.seeds):
            x, truth = planted_set(real, kind, clump, total, seed)
            graph = build_knn_graph(x, n_neighbors=15)
            for method in methods:
                result = score_outliers(x, graph=graph, method=method, random_state=seed)
                aurocs[method].append(roc_auc_score(truth, result.scores))
                if method == DEFAULT_METHOD:
                    flagged_true.append(result.flagged[truth].mean())
                    flagged_clean.append(result.flagged[~truth].mean())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                typicality = OutOfDistribution().fit_score(
                    features=x, verbose=False
                )  # higher = more typical
            aurocs["cleanlab"].append(roc_auc_score(truth, -typicality))
        rows.append(
            {
                "scenario": name,
                "auroc_mean": {m: float(np.mean(v)) for m, v in aurocs.items()},
                "auroc_sd": {m: float(np.std(v)) for m, v in aurocs.items()},
                "default_flags_planted": float(np.mean(flagged_true)),
                "default_flags_clean": float(np.mean(flagged_clean)),
            }
        )
        print(f"{name}: done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    report = {
        "benchmark": "outliers_vs_cleanlab",
        "seeds": args.seeds,
        "inliers": "5,000 real Fashion-MNIST EfficientNet-Lite0 embeddings",
        "python": platform.python_version(),
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    columns = [*methods, "cleanlab"]
    print(
        f"| scenario (AUROC, mean ± sd over {args.seeds} seeds) | "
        + " | ".join(columns)
        + " | default flags planted / clean |"
    )
    print("|---" * (len(columns) + 2) + "|")
    for row in rows:
        cells = [f"{row['auroc_mean'][m]:.3f} ± {row['auroc_sd'][m]:.3f}" for m in columns]
        flags = f"{row['default_flags_planted']:.2f} / {row['default_flags_clean']:.4f}"
        print(f"| {row['scenario']} | " + " | ".join(cells) + f" | {flags} |")
    return report


if __name__ == "__main__":
    main()
