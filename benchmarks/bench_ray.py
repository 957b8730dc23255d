"""Embedding on a Ray cluster against the local path, on this machine's cores.

In one run and on the same real photos (benchmarks/bench_embed.py's set), the same model and
precision:
  local          shoal's local pipeline (embed_dataset), all cores of the machine
  ray 1 node     a one-node Ray cluster of 1 CPU, one actor
  ray 2 nodes    a head and a worker node of 1 CPU each (ray.cluster_utils.Cluster on 127.0.0.1),
                 two actors
Each setting embeds two sets of different sizes (default 256 and 1,024 photos) from a fresh
start; the difference gives the marginal rate (images/s once running) and the fixed cost
(cluster connection, actor start-up: importing torch and OpenVINO, receiving the model,
compiling it). Ray's results reach the driver in bursts, so a rate read off the progress
callback would be wrong. The clusters share this machine's 2 cores, so "2 nodes" shows the
engine's overhead and its scaling from one node's core to two, not a real cluster's speed; on
separate machines the marginal rate grows with the actors as long as the driver keeps up (it only
copies vectors and writes checkpoints).

    .venv/bin/python benchmarks/bench_ray.py [--images 256 1024] [--precision fp32]

Writes benchmarks/results/ray.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "ray.json"


def run(images: list[int], precision: str, batch_size: int) -> list[dict[str, Any]]:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # bind 127.0.0.1 only
    import ray
    from ray.cluster_utils import Cluster

    from benchmarks.bench_embed import write_photos
    from shoal.ingest.images import import_source
    from shoal.store import Workspace
    from shoal.workflows.embed import embed_dataset
    from shoal.workflows.ray_engine import embed_dataset_on_ray

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        write_photos(folder, max(images))
        files = sorted(folder.iterdir())
        ws = Workspace(Path(tmp) / "ws")
        for count in images:
            subset = Path(tmp) / f"photos-{count}"
            subset.mkdir()
            for path in files[:count]:
                (subset / path.name).symlink_to(path)
            import_source(ws, subset, dataset=f"p{count}")

        def timed(engine: str, nodes: int, count: int, embed: Any) -> None:
            started = time.perf_counter()
            reports: list[Any] = []
            embed(ws.open(f"p{count}"), reports)
            seconds = time.perf_counter() - started
            row = {"engine": engine, "nodes": nodes, "images": count, "seconds": round(seconds, 2)}
            if reports:
                row["rows_per_node"] = sorted(reports[0].rows_per_node.values())
            rows.append(row)
            print(row, flush=True)

        for count in images:
            timed(
                "local",
                1,
                count,
                lambda ds, _: embed_dataset(
                    ds, name="local", batch_size=batch_size, precision=precision
                ),
            )
        for nodes in (1, 2):
            for count in images:
                # A fresh cluster per run: the fixed cost includes the actors' start-up.
                cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
                try:
                    for _ in range(nodes - 1):
                        cluster.add_node(num_cpus=1)
                    cluster.wait_for_nodes()
                    timed(
                        "ray",
                        nodes,
                        count,
                        lambda ds, reports, cluster=cluster, nodes=nodes: embed_dataset_on_ray(
                            ds,
                            address=cluster.address,
                            name=f"ray-{nodes}",
                            batch_size=batch_size,
                            precision=precision,
                            report=reports.append,
                        ),
                    )
                finally:
                    ray.shutdown()
                    cluster.shutdown()
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting: fixed seconds and marginal images/s from its smallest and largest run."""
    settings: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        settings.setdefault((row["engine"], row["nodes"]), []).append(row)
    summary = []
    for (engine, nodes), runs in settings.items():
        small, large = min(runs, key=lambda r: r["images"]), max(runs, key=lambda r: r["images"])
        rate = (large["images"] - small["images"]) / max(large["seconds"] - small["seconds"], 1e-9)
        summary.append(
            {
                "engine": engine,
                "nodes": nodes,
                "marginal_images_per_s": round(rate, 1),
                "fixed_s": round(small["seconds"] - small["images"] / rate, 1),
                **{f"seconds_{r['images']}": r["seconds"] for r in runs},
            }
        )
    local = summary[0]["marginal_images_per_s"]
    for row in summary:
        row["marginal_vs_local"] = round(row["marginal_images_per_s"] / local, 2)
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, nargs=2, default=[256, 1024])
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    rows = run(sorted(args.images), args.precision, args.batch_size)
    summary = summarise(rows)
    result = {
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "images": sorted(args.images),
        "precision": args.precision,
        "batch_size": args.batch_size,
        "runs": rows,
        "summary": summary,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    small, large = sorted(args.images)
    print(f"\nRay engine vs local, real photos, {args.precision}, {result['machine']}")
    print(
        f"| engine | nodes x CPUs | {small} images s | {large} images s | fixed s "
        "| marginal img/s | vs local |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in summary:
        print(
            f"| {row['engine']} | {row['nodes']} x {2 if row['engine'] == 'local' else 1} | "
            f"{row[f'seconds_{small}']} | {row[f'seconds_{large}']} | {row['fixed_s']} | "
            f"{row['marginal_images_per_s']} | {row['marginal_vs_local']} |"
        )
    print(f"\nwrote {RESULTS}")
    return result


if __name__ == "__main__":
    main()
