"""End-to-end embedding throughput: image files on disk -> stored float32 .npy.

Compares, in one run and on the same real photos (JPEG/PNG at 500x375 and 375x500):
  baseline          same timm model, fp32, NCHW, one process, images decoded inline one at a
                    time with timm's eval transform, batches of 32 (the naive loop)
  pipeline_torch    embed_paths on the torch backend (today's path: channels-last, bf16
                    autocast where the CPU has it, in-process decoding)
  model_torch       the torch backend alone on already-decoded uint8 batches (its ceiling)
  pipeline_openvino embed_paths on the OpenVINO backend at its default precision (f32)
  model_openvino    the OpenVINO backend alone on decoded batches
  pipeline_openvino_bf16 / model_openvino_bf16   the same at precision bf16
  objects_torch     embed_objects (ROI-Align, 600 px feature maps) over --object-images of the
                    photos with OBJECTS_PER_IMAGE boxes each (placed at random, seeded), torch
  objects_openvino  the same with the feature maps, crops and whole images from OpenVINO (f32)
  extract_torch     extract_embeddings (``shoal extract``) of a torchvision ResNet-50 at its
                    pre-logits (fc:input), float32 on torch, over --object-images photos (the
                    weights are random: no download here; the speed does not depend on them)
  extract_openvino  the same, the model up to that layer converted for OpenVINO (f32)
Each phase runs in its own process, so its peak memory (getrusage peak RSS of the process plus
its largest child) is its own; building the model and the backend (OpenVINO: reading the
converted graph from its cache, which a warm-up converts once) is not timed. Rounds alternate
the phases, so load from other users hits all of them; the report gives every round and the
median ratios, and each variant's cosine to the naive fp32 loop's vectors.

    .venv/bin/python benchmarks/bench_embed.py [--images 512] [--rounds 3] [--threads 2]

Writes benchmarks/results/embed.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "embed.json"
TARGET_SPEEDUP = 2.5  # the torch pipeline vs the naive loop
TARGET_MODEL_FRACTION = 0.85  # a pipeline vs its own model-only rate
TARGET_OPENVINO_VS_TORCH = 2.0  # the OpenVINO pipeline vs the torch pipeline
TARGET_OPENVINO_VS_NAIVE = 8.0
OBJECTS_PER_IMAGE = 5

#: (phase, kind, backend, precision); precision None: the --precision option (torch) or auto.
VARIANTS = [
    ("baseline", "baseline", "torch", "fp32"),
    ("pipeline_torch", "pipeline", "torch", None),
    ("model_torch", "model", "torch", None),
    ("pipeline_openvino", "pipeline", "openvino", "auto"),
    ("model_openvino", "model", "openvino", "auto"),
    ("pipeline_openvino_bf16", "pipeline", "openvino", "bf16"),
    ("model_openvino_bf16", "model", "openvino", "bf16"),
    ("objects_torch", "objects", "torch", None),
    ("objects_openvino", "objects", "openvino", "auto"),
    ("extract_torch", "extract", "torch", None),
    ("extract_openvino", "extract", "openvino", None),
]


# --------------------------------------------------------------------------- test images


def write_photos(folder: Path, count: int) -> list[Path]:
    """``count`` real photos as files: 7 of 8 JPEG (quality 90), 1 of 8 PNG, 500x375 or 375x500."""
    from PIL import Image, ImageOps
    from sklearn.datasets import load_sample_images

    from shoal.embedding.preprocess import to_rgb

    sources = [Image.fromarray(a) for a in load_sample_images().images]
    try:
        import skimage.data as data

        for name in ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "retina"):
            sources.append(Image.fromarray(getattr(data, name)()))
    except ImportError:
        pass
    stamps = Path("/usr/share/tuxpaint/stamps")
    if stamps.is_dir():
        sys.path.insert(0, str(ROOT / "scripts"))
        from make_fixtures import photographic_stamps

        sources += [to_rgb(Image.open(p)) for p in photographic_stamps(stamps)[:60]]
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        image = to_rgb(sources[i % len(sources)])
        # A random crop and flip per file, so repeated sources are not byte-identical.
        width, height = image.size
        left, top = rng.integers(0, width // 8 + 1), rng.integers(0, height // 8 + 1)
        image = image.crop(
            (
                left,
                top,
                width - rng.integers(0, width // 8 + 1),
                height - rng.integers(0, height // 8 + 1),
            )
        )
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        size = (375, 500) if i % 3 == 2 else (500, 375)
        image = ImageOps.fit(image, size, Image.Resampling.LANCZOS)
        path = folder / f"img{i:05d}.{'png' if i % 8 == 7 else 'jpg'}"
        image.save(path, quality=90) if path.suffix == ".jpg" else image.save(path)
        files.append(path)
    return files


# --------------------------------------------------------------------------- memory


def children_peak_kb() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def peak_rss_mb(children_before: int) -> float:
    """Peak resident memory of this process plus that of its largest child (MB).

    ``children_before``: children_peak_kb() when the measured work began. Children that finished
    earlier (``import torch`` forks one, which "has" all of the parent's resident pages) only
    count if the work's own children exceeded them. Read from getrusage, so measuring costs
    nothing (sampling /proc while the pipeline runs slowed it down several-fold). With worker
    processes it is an upper bound: pages they share with the parent count twice.
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = children_peak_kb()
    return (own + (children if children > children_before else 0)) / 1024


# --------------------------------------------------------------------------- phases (one process each)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (decoding workers)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextlib.contextmanager
def measured(count: int) -> Iterator[dict[str, float]]:
    """Measure the block: the yielded dict receives its seconds, CPU ms per image (this process
    and finished children), images per second over ``count`` and peak RSS (MB)."""
    result: dict[str, float] = {}
    started, cpu_started, children = time.perf_counter(), cpu_seconds(), children_peak_kb()
    yield result
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    result.update(
        seconds=seconds,
        cpu_ms_per_image=1000 * cpu / count,
        images_per_second=count / seconds,
        peak_rss_mb=peak_rss_mb(children),
    )


def phase_baseline(files: list[Path], out: Path) -> dict[str, float]:
    import timm.data
    import torch
    from PIL import Image

    from shoal.embedding import create_model

    model = create_model("efficientnet_lite0")  # NCHW, fp32, as created
    config = model.data_config
    transform = timm.data.create_transform(
        input_size=config.input_size,
        interpolation=config.interpolation,
        crop_pct=config.crop_pct,
        mean=config.mean,
        std=config.std,
    )
    with measured(len(files)) as result:
        rows = []
        with torch.inference_mode():
            for start in range(0, len(files), 32):
                batch = torch.stack(
                    [transform(Image.open(p).convert("RGB")) for p in files[start : start + 32]]
                )
                rows.append(model(batch).numpy())
        np.save(out, np.concatenate(rows).astype(np.float32))
    return result


def phase_pipeline(
    files: list[Path], out: Path, num_workers: int | None, precision: str, backend: str
) -> dict[str, float]:
    from shoal.embedding import create_model, embed_paths
    from shoal.embedding.backends import create_embedder

    embedder = create_embedder(
        create_model("efficientnet_lite0"), backend=backend, precision=precision
    )
    with measured(len(files)) as result:
        vectors = embed_paths(
            files, embedder.model, batch_size=32, num_workers=num_workers, backend=embedder
        )
        np.save(out, vectors)
    return result


def phase_model(files: list[Path], precision: str, backend: str) -> dict[str, float]:
    from shoal.embedding import create_model
    from shoal.embedding.backends import create_embedder
    from shoal.embedding.preprocess import load_image, resize_crop

    embedder = create_embedder(
        create_model("efficientnet_lite0"), backend=backend, precision=precision
    )
    pixels = np.stack([resize_crop(load_image(p), embedder.model.data_config) for p in files])
    batches = [pixels[i : i + 32] for i in range(0, len(pixels), 32)]
    embedder.embed(batches[0])  # warm-up: one-off kernel selection
    with measured(len(files)) as result:
        # Submitted one batch ahead, as the pipeline does (the torch backend runs synchronously).
        running = None
        for batch in batches:
            submitted = embedder.submit(batch)
            if running is not None:
                running.result()
            running = submitted
        if running is not None:
            running.result()
    return result


def random_boxes(count: int, width: int, height: int, seed: int) -> np.ndarray:
    """``count`` xyxy boxes inside a ``width`` x ``height`` image, 1/8 to 1/2 of each side."""
    rng = np.random.default_rng(seed)
    sizes = rng.uniform(0.125, 0.5, (count, 2)) * (width, height)
    corners = rng.uniform(0, 1, (count, 2)) * ((width, height) - sizes)
    return np.hstack([corners, corners + sizes]).astype(np.float32)


def phase_objects(
    files: list[Path], out: Path, num_workers: int | None, precision: str, backend: str
) -> dict[str, float]:
    from PIL import Image

    from shoal.embedding import create_model
    from shoal.embedding.backends import create_embedder
    from shoal.embedding.objects import embed_objects

    boxes = []
    for seed, path in enumerate(files):
        with Image.open(path) as image:
            boxes.append(random_boxes(OBJECTS_PER_IMAGE, *image.size, seed))
    embedder = create_embedder(
        create_model("efficientnet_lite0"), backend=backend, precision=precision, feature_map=True
    )
    with measured(len(files)) as result:
        vectors, _ = embed_objects(
            files, boxes, embedder.model, num_workers=num_workers, backend=embedder
        )
        np.save(out, vectors)
    result["boxes_per_second"] = len(vectors) / result["seconds"]
    return result


def phase_extract(files: list[Path], out: Path, backend: str) -> dict[str, float]:
    import torch
    import torchvision

    from shoal.embedding.extract import extract_embeddings

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    with measured(len(files)) as result:
        used: dict[str, str] = {}
        vectors = extract_embeddings(
            model, files, backend=backend, details=used, batch_size=16, device="cpu"
        )
        if used["backend"] != backend:
            raise RuntimeError(f"asked for {backend}, ran on {used['backend']}")
        np.save(out, vectors)
    return result


def run_phase(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    files = json.loads(Path(args.files).read_text())
    if args.phase == "baseline":
        result = phase_baseline(files, Path(args.out))
    elif args.phase == "pipeline":
        result = phase_pipeline(
            files, Path(args.out), args.num_workers, args.precision, args.backend
        )
    elif args.phase == "extract":
        result = phase_extract(files, Path(args.out), args.backend)
    elif args.phase == "objects":
        result = phase_objects(
            files, Path(args.out), args.num_workers, args.precision, args.backend
        )
    else:
        result = phase_model(files, args.precision, args.backend)
    print("RESULT " + json.dumps(result))


def spawn(
    phase: str,
    files_json: Path,
    out: Path,
    args: argparse.Namespace,
    *,
    backend: str = "torch",
    precision: str | None = None,
) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--backend",
        backend,
        "--files",
        str(files_json),
        "--out",
        str(out),
        "--threads",
        str(args.threads),
        "--precision",
        precision or args.precision,
    ]
    if args.num_workers is not None:
        command += ["--num-workers", str(args.num_workers)]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": str(args.threads),
        "XDG_CACHE_HOME": str(files_json.parent / "cache"),  # OpenVINO's converted graph
    }
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"phase {phase} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


# --------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--object-images",
        type=int,
        default=64,
        help="photos for the object and extract phases (0: skip them)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the model process")
    parser.add_argument(
        "--num-workers", type=int, default=None, help="pipeline decoding workers (default: auto)"
    )
    parser.add_argument("--precision", default="auto", help="of the torch phases")
    parser.add_argument("--backend", default="torch", help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--phase",
        choices=["baseline", "pipeline", "model", "objects", "extract"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--files", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        run_phase(args)
        return

    from shoal.embedding.backends import openvino_available
    from shoal.embedding.inference import cpu_supports_bf16, resolve_precision
    from shoal.embedding.pipeline import default_num_workers

    variants = [
        v
        for v in VARIANTS
        if (v[2] == "torch" or openvino_available())
        and (v[1] not in ("objects", "extract") or args.object_images)
    ]
    rounds = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        folder = Path(tmp)
        files = write_photos(folder, args.images)
        files_json = folder / "files.json"
        files_json.write_text(json.dumps([str(p) for p in files]))
        objects_json = folder / "objects.json"
        objects_json.write_text(json.dumps([str(p) for p in files[: args.object_images]]))
        if openvino_available():  # converts the graphs into the cache once, untimed
            spawn("model", files_json, folder / "unused.npy", args, backend="openvino")
            if args.object_images:
                spawn("objects", objects_json, folder / "unused.npy", args, backend="openvino")
                spawn("extract", objects_json, folder / "unused.npy", args, backend="openvino")
        for index in range(args.rounds):
            load_before = os.getloadavg()[0]
            phases = {
                name: spawn(
                    kind,
                    objects_json if kind in ("objects", "extract") else files_json,
                    folder / f"{name}.npy",
                    args,
                    backend=backend,
                    precision=precision,
                )
                for name, kind, backend, precision in variants
            }
            reference = np.load(folder / "baseline.npy")
            for name, kind, _, _ in variants:
                if kind == "pipeline":
                    similarity = cosine(reference, np.load(folder / f"{name}.npy"))
                    phases[name]["cosine_to_baseline_mean"] = float(similarity.mean())
                    phases[name]["cosine_to_baseline_min"] = float(similarity.min())
            if "objects_torch" in phases and "objects_openvino" in phases:
                similarity = cosine(
                    np.load(folder / "objects_torch.npy"), np.load(folder / "objects_openvino.npy")
                )
                phases["objects_openvino"]["cosine_to_torch_mean"] = float(similarity.mean())
                phases["objects_openvino"]["cosine_to_torch_min"] = float(similarity.min())
            if "extract_torch" in phases and "extract_openvino" in phases:
                similarity = cosine(
                    np.load(folder / "extract_torch.npy"), np.load(folder / "extract_openvino.npy")
                )
                phases["extract_openvino"]["cosine_to_torch_mean"] = float(similarity.mean())
                phases["extract_openvino"]["cosine_to_torch_min"] = float(similarity.min())
            phases["load_average_1min"] = [load_before, os.getloadavg()[0]]  # type: ignore[assignment]
            rounds.append(phases)
            print(
                f"round {index + 1}: "
                + ", ".join(f"{n} {phases[n]['images_per_second']:.1f}/s" for n, *_ in variants),
                flush=True,
            )
        sizes = sorted({f.suffix for f in files})

    def rate(phase: dict[str, Any]) -> float:
        return float(phase["images_per_second"])

    def ratios(top: str, bottom: str) -> list[float]:
        return [rate(r[top]) / rate(r[bottom]) for r in rounds if top in r and bottom in r]

    def median_cpu(phase: str) -> float:
        return statistics.median(r[phase]["cpu_ms_per_image"] for r in rounds)

    targets = {
        "torch_vs_naive": ("pipeline_torch", "baseline", TARGET_SPEEDUP),
        "torch_of_model": ("pipeline_torch", "model_torch", TARGET_MODEL_FRACTION),
        "openvino_vs_torch": ("pipeline_openvino", "pipeline_torch", TARGET_OPENVINO_VS_TORCH),
        "openvino_vs_naive": ("pipeline_openvino", "baseline", TARGET_OPENVINO_VS_NAIVE),
        "openvino_of_model": ("pipeline_openvino", "model_openvino", TARGET_MODEL_FRACTION),
        "openvino_bf16_vs_torch": ("pipeline_openvino_bf16", "pipeline_torch", None),
        "openvino_bf16_of_model": ("pipeline_openvino_bf16", "model_openvino_bf16", None),
        "objects_openvino_vs_torch": ("objects_openvino", "objects_torch", None),
        "extract_openvino_vs_torch": ("extract_openvino", "extract_torch", None),
    }
    summary: dict[str, Any] = {}
    for label, (top, bottom, target) in targets.items():
        values = ratios(top, bottom)
        if not values:
            continue
        summary[label] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "target": target,
            "met": None if target is None else statistics.median(values) >= target,
        }
    summary["cpu_ms_per_image_median"] = {name: median_cpu(name) for name, *_ in variants}
    report = {
        "benchmark": "embed",
        "model": "efficientnet_lite0",
        "images": args.images,
        "object_images": args.object_images,
        "objects_per_image": OBJECTS_PER_IMAGE,
        "formats": sizes,
        "image_sizes": ["500x375", "375x500"],
        "threads": args.threads,
        "num_workers": default_num_workers("cpu") if args.num_workers is None else args.num_workers,
        "torch_precision": resolve_precision(args.precision, "cpu"),
        "variants": [
            {"phase": n, "kind": k, "backend": b, "precision": p or args.precision}
            for n, k, b, p in variants
        ],
        "cpu_bf16": cpu_supports_bf16(),
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "rounds": rounds,
        "summary": summary,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=1))

    print()
    print(
        f"Embedding throughput, {args.images} photos, {args.threads} threads, "
        f"{report['num_workers']} decoding worker(s); all variants in the same run"
    )
    print()
    print(
        "| variant | img/s per round | median | peak RSS (MB) | cosine to naive fp32 (mean / min) |"
    )
    print("|---|---|---|---|---|")
    for name, kind, _, _ in variants:
        speeds = [rate(r[name]) for r in rounds]
        agreement = (
            f"{min(r[name]['cosine_to_baseline_mean'] for r in rounds):.6f} / "
            f"{min(r[name]['cosine_to_baseline_min'] for r in rounds):.5f}"
            if kind == "pipeline"
            else f"{min(r[name]['cosine_to_torch_mean'] for r in rounds):.6f} / "
            f"{min(r[name]['cosine_to_torch_min'] for r in rounds):.5f} (to the torch phase)"
            if "cosine_to_torch_mean" in rounds[0].get(name, {})
            else ""
        )
        print(
            f"| {name} | {', '.join(f'{v:.1f}' for v in speeds)} | "
            f"{statistics.median(speeds):.1f} | {max(r[name]['peak_rss_mb'] for r in rounds):.0f} "
            f"| {agreement} |"
        )
    print()
    print("| ratio (same round) | median | min–max | target |")
    print("|---|---|---|---|")
    for label, values in summary.items():
        if label == "cpu_ms_per_image_median":
            continue
        target = "" if values["target"] is None else f"{values['target']:g}"
        met = "" if values["met"] is None else (" met" if values["met"] else " **missed**")
        print(
            f"| {label} | {values['median']:.2f} | {values['min']:.2f}–{values['max']:.2f} "
            f"| {target}{met} |"
        )
    cpu = summary["cpu_ms_per_image_median"]
    print()
    print("CPU ms per image (median): " + ", ".join(f"{n} {v:.1f}" for n, v in cpu.items()))
    loads = [[round(x, 1) for x in r["load_average_1min"]] for r in rounds]
    print(f"1-min load average before/after each round: {loads} on {os.cpu_count()} CPUs")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


if __name__ == "__main__":
    main()
