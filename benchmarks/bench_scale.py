"""Shoal at 100k and a million samples on one machine: time and peak memory of every step.

Data: the 5,000 real Fashion-MNIST embeddings of tests/fixtures/real_embeddings.npz
(EfficientNet-Lite0, 1280-d float32), grown SMOTE-style as in bench_analysis.py: each new row
lies between a real (unit) vector and one of its 10 nearest real neighbours (uniform position),
plus isotropic Gaussian noise of ``--noise`` (default 0.5) times ``sqrt(2 d / dim)``, where d is
the median nearest-neighbour cosine distance of the real set, then L2-normalised. So the set
keeps the real geometry (clusters, their overlaps, the label noise between them) instead of
200 near-identical copies of each real point. Each sample has a ``sample_id``, the label of the
real row it starts from and a seeded ``split`` (80 % train, 20 % test). The set is written in
row groups of 50k rows (its generation never holds more than one group, in a child process) to
``WORK/grown-N-seedS-noiseX.parquet`` (``sample_id`` string, ``embedding``
fixed_size_list<float32>[1280], ``label``, ``split``) and reused on later runs.

Every step runs as its own subprocess in a fresh workspace per size (``WORK/ws-N``); a step's
wall time is measured around the child and its peak RSS is that child's own ``ru_maxrss`` from
``os.wait4`` (not RUSAGE_CHILDREN, which mixes all children). Linux carries the launching
process's high-water mark across exec into the child's ``ru_maxrss``, so this script keeps itself
small (about 60 MB, recorded as ``launcher_peak_rss_mb``): no figure can be below that floor.
Steps, in order:

  import      ``shoal import FILE.parquet --dataset scaleN`` (an embeddings-only Parquet)
  graph       ``shoal.workflows.analyse.knn_graph`` of the dataset (the one shared kNN graph)
  recall      recall@10 of that graph against exact cosine top-10 of ``--recall-rows`` seeded
              rows, by blocked products over the stored vectors (8,192 rows a block, self excluded)
  project     ``shoal project NAME`` (then ``--json`` once more, cached, for its trustworthiness)
  outliers, duplicates, mislabels, compare (``--reference split=train --current split=test``;
  at object level the footwear boxes against the rest, OBJECT_COMPARISON),
  similar (``--sample ID -k 50``)   the CLI commands
  query       in one process: ``analyse.similar(ds, sample_ids=[id], k=50)`` once (first query,
              loading included), then ``--queries`` seeded random single-sample queries: p50 / p95
  server      (only with ``--steps ... server``; needs Debian's chromium and playwright)
              ``shoal serve`` on 127.0.0.1; first the Map page's "Compute the map" button starts
              the app's background analyse job (timed until the map shows), then every page is
              opened in headless Chromium with ``?ds=NAME``: seconds until the script run has
              finished, stayed finished for a second, and every plotly chart is drawn. Peak RSS:
              the largest VmHWM among the server's processes, read before it is stopped

A step that fails is recorded (return code, last stderr lines) and the next one runs. The targets
of the issue, at 1M: import peak RSS <= 2 GB; each analysis <= 4 GB peak RSS; graph <= 5 min with
recall@10 >= 0.90; projection <= 10 min, graph included, with trustworthiness >= 0.90; in-process
similar p95 < 20 ms.

    .venv/bin/python benchmarks/bench_scale.py [--samples 100000 1000000] [--steps import graph ...]
        [--work /tmp/shoal-scale] [--keep] [--timeout 3600]

The 1M size needs about 10 GB of disk under WORK (the Parquet file and the workspace's copy)
and takes a 2-core machine most of an hour. Writes benchmarks/results/scale.json (merged by size
and step, so running one size or one step keeps the others) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from real_data import RESULTS, ROOT, load_real  # a sibling; it puts the repository on sys.path

OUT = RESULTS / "scale.json"
SCRIPT = Path(__file__).resolve()
STEPS = (
    "import",
    "attach",
    "graph",
    "recall",
    "project",
    "outliers",
    "duplicates",
    "mislabels",
    "compare",
    "similar",
    "query",
    "server",
)
DEFAULT_STEPS = STEPS[:-1]
ROW_GROUP_ROWS = 50_000
#: Rows per block of the exact search that recall is measured against (8192 x 1280 = 42 MB).
EXACT_BLOCK_ROWS = 8192
#: The app's pages and their URL paths (app.py's st.navigation; the default page is at "/").
PAGES = {
    "datasets": "",
    "jobs": "jobs",
    "map": "map",
    "outliers": "outliers",
    "similar": "similar",
    "compare": "compare",
}
RESULT_MARKER = "BENCH-RESULT "
#: The object level: boxes per generated image, and the images' side in pixels.
BOXES_PER_IMAGE = 10
#: compare's two sides: image level, the seeded splits; object level (one split in the
#: generated COCO set), the footwear boxes (Fashion-MNIST sandal, sneaker, ankle boot) against
#: every other box, about 700k vs 300k at 1M.
SPLITS = ("split=train", "split=test")
OBJECT_COMPARISON = ("category!=5,7,9", "category=5,7,9")
BOX_IMAGE_PX = 96
PHOTOS = ROOT / "sample_data"
LEVELS = ("sample", "object")
TARGETS = {
    "import": "peak RSS <= 2 GB",
    "attach": "peak RSS <= 2 GB",
    "graph": "<= 5 min, <= 4 GB",
    "recall": "recall@10 >= 0.90",
    "project": "<= 10 min with graph, trust >= 0.90, <= 4 GB",
    "outliers": "<= 4 GB",
    "duplicates": "<= 4 GB",
    "mislabels": "<= 4 GB",
    "compare": "<= 4 GB",
    "similar": "<= 4 GB",
    "query": "p95 < 20 ms, <= 4 GB",
    "server": "",
}


# --------------------------------------------------------------------------- data


def sample_path(work: Path, n_samples: int, *, seed: int, noise: float) -> Path:
    return work / f"grown-{n_samples}-seed{seed}-noise{noise:g}.parquet"


def write_sample_file(path: Path, n_samples: int, *, seed: int, noise: float) -> None:
    """Write the Parquet file of ``n_samples`` tiled real vectors, one row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shoal.analysis.blocks import l2_normalize
    from shoal.analysis.knn import build_knn_graph

    real = load_real()
    base = l2_normalize(np.ascontiguousarray(real["fmnist"], dtype=np.float32))
    labels = np.asarray([str(label) for label in real["fmnist_labels"]], dtype=object)
    graph = build_knn_graph(base, n_neighbors=10, method="exact")
    typical = float(np.median(graph.distances[:, 0]))
    sigma = np.float32(noise * np.sqrt(2 * typical / base.shape[1]))
    dim = base.shape[1]
    schema = pa.schema(
        [
            ("sample_id", pa.string()),
            ("embedding", pa.list_(pa.float32(), dim)),
            ("label", pa.string()),
            ("split", pa.string()),
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    buffer = np.empty((ROW_GROUP_ROWS, dim), dtype=np.float32)
    with pq.ParquetWriter(partial, schema) as writer:
        for start in range(0, n_samples, ROW_GROUP_ROWS):
            stop = min(n_samples, start + ROW_GROUP_ROWS)
            count = stop - start
            rng = np.random.default_rng([seed, start])  # a group's rows do not depend on the others
            source = rng.integers(0, len(base), count)
            partner = graph.indices[source, rng.integers(0, 10, count)]
            position = rng.uniform(0.0, 1.0, (count, 1)).astype(np.float32)
            block = buffer[:count]
            rng.standard_normal(out=block, dtype=np.float32)
            block *= sigma
            for offset in range(0, count, 4096):  # small temporaries, not a second block
                part = slice(offset, offset + 4096)
                block[part] += (1 - position[part]) * base[source[part]]
                block[part] += position[part] * base[partner[part]]
            block[:] = l2_normalize(block)
            split = np.where(rng.random(count) < 0.8, "train", "test")
            table = pa.table(
                {
                    "sample_id": pa.array([f"s{i:07d}" for i in range(start, stop)]),
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(block.ravel()), dim),
                    "label": pa.array(labels[source], type=pa.string()),
                    "split": pa.array(split, type=pa.string()),
                },
                schema=schema,
            )
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
    partial.replace(path)


def box_folder(parquet: Path) -> Path:
    """Where the object-level files made from ``parquet`` live: ``images/``, ``instances.json``
    (COCO) and, once the dataset is imported, ``boxes.parquet`` and ``first-object-id.txt``."""
    return parquet.with_name(parquet.stem.replace("grown-", "boxes-"))


def write_box_files(folder: Path, parquet: Path) -> None:
    """A COCO detection set with one box per row of ``parquet``: ``BOXES_PER_IMAGE`` boxes on
    each of rows / ``BOXES_PER_IMAGE`` small JPEGs (random crops of the real sample photos,
    resized to ``BOX_IMAGE_PX``), each box's category the label of its row and its annotation
    id the row number, so the row's vector becomes the box's embedding."""
    import pyarrow.parquet as pq
    from PIL import Image

    labels = pq.read_table(parquet, columns=["label"]).column(0).to_numpy(zero_copy_only=False)
    n_boxes = len(labels)
    n_images = -(-n_boxes // BOXES_PER_IMAGE)
    photos = [Image.open(path).convert("RGB") for path in sorted(PHOTOS.rglob("*.jpg"))]
    rng = np.random.default_rng(0)
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    size = BOX_IMAGE_PX
    images = []
    for image in range(n_images):
        photo = photos[int(rng.integers(len(photos)))]
        width, height = photo.size
        crop_w, crop_h = (max(8, int(side * rng.uniform(0.5, 1.0))) for side in (width, height))
        left, top = (
            int(rng.integers(0, width - crop_w + 1)),
            int(rng.integers(0, height - crop_h + 1)),
        )
        file_name = f"i{image:07d}.jpg"
        photo.crop((left, top, left + crop_w, top + crop_h)).resize((size, size)).save(
            images_dir / file_name, quality=85
        )
        images.append({"id": image, "file_name": file_name, "width": size, "height": size})
    names = sorted(set(labels.tolist()))
    category = {name: number + 1 for number, name in enumerate(names)}
    corner = rng.uniform(0, size - 16, (n_boxes, 2))
    extent = 8 + rng.uniform(0, 1, (n_boxes, 2)) * (size - corner - 8)  # inside the image
    annotations = [
        {
            "id": row,
            "image_id": row // BOXES_PER_IMAGE,
            "category_id": category[labels[row]],
            "bbox": [
                round(float(corner[row, 0]), 1),
                round(float(corner[row, 1]), 1),
                round(float(extent[row, 0]), 1),
                round(float(extent[row, 1]), 1),
            ],
        }
        for row in range(n_boxes)
    ]
    coco = {
        "images": images,
        "categories": [{"id": number, "name": name} for name, number in category.items()],
        "annotations": annotations,
    }
    partial = folder / "instances.json.partial"
    partial.write_text(json.dumps(coco))
    partial.replace(folder / "instances.json")


# --------------------------------------------------------------------------- measured children


@dataclass(frozen=True)
class Measured:
    """One child process: exit code, wall seconds, its own peak RSS, and what it printed."""

    returncode: int
    seconds: float
    peak_rss_mb: float
    stdout: str
    stderr: str
    timed_out: bool

    @property
    def result(self) -> dict[str, Any]:
        """The JSON a benchmark child printed after :data:`RESULT_MARKER` (empty if none)."""
        for line in reversed(self.stdout.splitlines()):
            if line.startswith(RESULT_MARKER):
                return dict(json.loads(line[len(RESULT_MARKER) :]))
        return {}

    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "ok": self.returncode == 0,
            "returncode": self.returncode,
            "seconds": self.seconds,
            "peak_rss_mb": self.peak_rss_mb,
        }
        if self.returncode != 0:
            record["timed_out"] = self.timed_out
            record["stderr_tail"] = tail(self.stderr or self.stdout, 15)
        return record


def tail(text: str, lines: int) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def measure(command: Sequence[str], *, logs: Path, name: str, timeout: float) -> Measured:
    """Run ``command`` (its own process group, output to ``logs/name.out|.err``); wall time and
    ``ru_maxrss`` of that one process from ``os.wait4``. Past ``timeout`` the group is killed."""
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / f"{name}.out", logs / f"{name}.err"
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(command),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            kill()
            raise
        finally:
            timer.cancel()
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return Measured(
        returncode=process.returncode,
        seconds=seconds,
        peak_rss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
        timed_out=killed.is_set(),
    )


def shoal_command(workspace: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "shoal", "--workspace", str(workspace), *args]


def child_command(kind: str, workspace: Path, dataset: str, *args: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--child", kind, str(workspace), dataset, *args]


# --------------------------------------------------------------------------- the children's work


def child_main(argv: list[str]) -> int:
    """``--child generate PATH N SEED NOISE`` writes the sample file; ``--child KIND WORKSPACE
    DATASET [ARGS]`` runs one in-process step and prints its figures as JSON."""
    kind, *rest = argv
    if kind == "generate":
        path, n_samples, seed, noise = rest
        write_sample_file(Path(path), int(n_samples), seed=int(seed), noise=float(noise))
        return 0
    if kind == "boxes":
        folder, parquet = rest
        write_box_files(Path(folder), Path(parquet))
        return 0
    workspace, dataset, embedding, *rest = rest
    from shoal.store import Workspace

    ds = Workspace(workspace).open(dataset)
    name = None if embedding == "-" else embedding
    if kind == "graph":
        figures = child_graph(ds, name)
    elif kind == "recall":
        figures = child_recall(ds, name, n_rows=int(rest[0]), seed=int(rest[1]))
    elif kind == "query":
        figures = child_query(ds, name, n_queries=int(rest[0]), seed=int(rest[1]))
    elif kind == "box-vectors":
        figures = child_box_vectors(ds, Path(rest[0]), Path(rest[1]))
    else:
        raise SystemExit(f"unknown child {kind!r}")
    print(RESULT_MARKER + json.dumps(figures), flush=True)
    return 0


def child_graph(ds: Any, embedding: str | None) -> dict[str, Any]:
    from shoal.workflows.analyse import knn_graph

    started = time.perf_counter()
    computed = knn_graph(ds, embedding)
    return {
        "seconds_in_process": time.perf_counter() - started,
        "method": computed.result.method,
        "n_neighbors": computed.result.n_neighbors,
        "cached": computed.cached,
    }


def child_recall(ds: Any, embedding: str | None, *, n_rows: int, seed: int) -> dict[str, Any]:
    from shoal.analysis.knn import recall_at_k
    from shoal.workflows.analyse import knn_graph

    graph = knn_graph(ds, embedding).result
    vectors = ds.load_embeddings(embedding).vectors
    rows = np.random.default_rng(seed).choice(
        len(vectors), min(n_rows, len(vectors)), replace=False
    )
    started = time.perf_counter()
    exact = exact_top_k(vectors, rows, k=10)
    return {
        "recall_at_10": recall_at_k(np.asarray(graph.indices[rows]), exact, 10),
        "n_rows": len(rows),
        "graph_method": graph.method,
        "seconds_exact_search": time.perf_counter() - started,
    }


def unit_rows(block: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return block / np.maximum(norms, np.float32(1e-12))  # an all-zero row stays zero


def exact_top_k(vectors: Any, rows: np.ndarray, *, k: int) -> np.ndarray:
    """(len(rows), k) row numbers of each row's k most cosine-similar other rows, nearest first.

    vectors: (n_samples, dim), indexable by slices and row arrays (an array or the store's
    vector file); read ``EXACT_BLOCK_ROWS`` rows at a time.
    """
    queries = unit_rows(np.asarray(vectors[rows], dtype=np.float32))
    best_similarity = np.full((len(rows), k), -np.inf, dtype=np.float32)
    best_rows = np.full((len(rows), k), -1, dtype=np.int64)
    for start in range(0, len(vectors), EXACT_BLOCK_ROWS):
        block = unit_rows(np.asarray(vectors[start : start + EXACT_BLOCK_ROWS], dtype=np.float32))
        similarity = queries @ block.T
        inside = np.flatnonzero((rows >= start) & (rows < start + len(block)))
        similarity[inside, rows[inside] - start] = -np.inf  # a row is not its own neighbour
        candidates = np.concatenate([best_similarity, similarity], axis=1)
        candidate_rows = np.concatenate(
            [best_rows, np.broadcast_to(np.arange(start, start + len(block)), similarity.shape)],
            axis=1,
        )
        top = np.argpartition(-candidates, k - 1, axis=1)[:, :k]
        best_similarity = np.take_along_axis(candidates, top, axis=1)
        best_rows = np.take_along_axis(candidate_rows, top, axis=1)
    order = np.argsort(-best_similarity, axis=1, kind="stable")
    return np.take_along_axis(best_rows, order, axis=1)


def child_box_vectors(ds: Any, parquet: Path, folder: Path) -> dict[str, Any]:
    """Write ``folder/boxes.parquet``: each imported box's ``object_id`` and the vector of the
    ``parquet`` row its annotation id names (rows in ``parquet`` order, one row group at a
    time), plus ``first-object-id.txt`` for the similar steps. Data preparation, not Shoal."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    objects = ds.objects()
    rows = objects["origin"].str.rsplit(" ", n=1).str[1].astype(np.int64).to_numpy()
    object_ids = np.empty(int(rows.max()) + 1, dtype=object)
    object_ids[rows] = objects["object_id"].astype(str).to_numpy()
    imported = np.zeros(len(object_ids), dtype=bool)
    imported[rows] = True
    source = pq.ParquetFile(parquet)
    out = folder / "boxes.parquet"
    schema = pa.schema(
        [("object_id", pa.string()), ("embedding", source.schema_arrow.field("embedding").type)]
    )
    start = 0
    with pq.ParquetWriter(out, schema) as writer:
        for batch in source.iter_batches(batch_size=ROW_GROUP_ROWS, columns=["embedding"]):
            stop = min(len(object_ids), start + len(batch))
            keep = imported[start:stop]
            if keep.any():
                table = pa.table(
                    {
                        "object_id": pa.array(object_ids[start:stop][keep].tolist(), pa.string()),
                        "embedding": batch.column(0).slice(0, stop - start).filter(pa.array(keep)),
                    },
                    schema=schema,
                )
                writer.write_table(table)
            start = stop
    (folder / "first-object-id.txt").write_text(str(object_ids[rows.min()]))
    return {"n_boxes": int(imported.sum()), "n_images": int(objects["sample_id"].nunique())}


def child_query(ds: Any, embedding: str | None, *, n_queries: int, seed: int) -> dict[str, Any]:
    from shoal.workflows.analyse import similar

    ids = np.asarray(ds.load_embeddings(embedding).ids).astype(str)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    similar(ds, embedding, sample_ids=[str(ids[0])], k=50)
    first_ms = (time.perf_counter() - started) * 1000
    latencies = []
    for row in rng.choice(len(ids), n_queries, replace=len(ids) < n_queries):
        started = time.perf_counter()
        similar(ds, embedding, sample_ids=[str(ids[row])], k=50)
        latencies.append((time.perf_counter() - started) * 1000)
    return {
        "first_query_ms": first_ms,
        "n_queries": n_queries,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p95_ms": float(np.percentile(latencies, 95)),
        "max_ms": float(np.max(latencies)),
    }


# --------------------------------------------------------------------------- server


def group_memory(group: int) -> list[dict[str, Any]]:
    """VmHWM and VmRSS (MB) of every live process of process group ``group``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != group:
                continue
            status = dict(
                line.split(":", 1) for line in (entry / "status").read_text().splitlines()
            )
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or a kernel thread without memory fields
        if "VmHWM" in status:
            found.append(
                {
                    "pid": int(entry.name),
                    "command": command[:160],
                    "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024,
                    "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
                }
            )
    return found


@contextlib.contextmanager
def serving(workspace: Path, logs: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`shoal serve` on a free port of 127.0.0.1, in its own process group; stopped on exit."""
    from benchmarks.servers import free_port, server_process

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    logs.mkdir(parents=True, exist_ok=True)
    command = shoal_command(workspace, "serve", "--port", str(port), "--address", "127.0.0.1")
    with server_process(command, url, logs / "server.log", cwd=ROOT, timeout=120) as process:
        yield url, process


CHART = '[data-testid="stPlotlyChart"]'
EXCEPTION = '[data-testid="stException"]'
ERROR = '[data-testid="stAlertContentError"]'
MAP = '[data-testid="shoalMap"]'
#: Every plotly chart has drawn, and the WebGL map (the Map and Compare pages) has drawn its
#: points (the component sets ``window.shoalMapDrawn``).
CHARTS_DRAWN = (
    "() => [...document.querySelectorAll('[data-testid=\"stPlotlyChart\"]')]"
    ".every(chart => chart.querySelector('.main-svg'))"
    " && (!document.querySelector('[data-testid=\"shoalMap\"]')"
    " || window.shoalMapDrawn !== undefined)"
)


def wait_rendered(page: Any, url: str, *, timeout: float, quiet: float = 1.0) -> dict[str, Any]:
    """Open ``url``; seconds until Streamlit's script run has finished and stayed finished for
    ``quiet`` seconds (from the start of that spell) and every plotly chart and the map are
    drawn, and any exception or error the page shows."""
    finished = '[data-testid="stApp"][data-test-script-state="notRunning"]'
    started = time.monotonic()
    page.goto(url, wait_until="domcontentloaded", timeout=timeout * 1000)
    deadline = started + timeout
    quiet_since: float | None = None
    first_finished: float | None = None
    while time.monotonic() < deadline:
        now = time.monotonic()
        if page.locator(finished).count():
            quiet_since = quiet_since or now
            first_finished = first_finished or now
            if now - quiet_since >= quiet:
                break
        else:
            quiet_since = None
        time.sleep(0.1)
    rendered: dict[str, Any] = {}
    if quiet_since is not None and time.monotonic() - quiet_since >= quiet:
        done = quiet_since
        if not page.evaluate(CHARTS_DRAWN):  # the browser is still drawing a large chart
            left = max(1.0, deadline - time.monotonic())
            page.wait_for_function(CHARTS_DRAWN, timeout=left * 1000, polling=100)
            done = time.monotonic()
        rendered["seconds"] = done - started
    else:
        rendered["timed_out"] = True
        if first_finished is not None:
            rendered["first_finished_seconds"] = first_finished - started
    for kind, selector in (("exception", EXCEPTION), ("error", ERROR)):
        shown = page.locator(selector)
        if shown.count():
            rendered[kind] = tail(shown.first.inner_text(), 5)
    return rendered


def start_analysis(page: Any, url: str, query: str, *, timeout: float) -> dict[str, Any]:
    """A large set's pages wait for the app's background 'analyse' job: start it from the Map
    page as a visitor would (its results are cache hits after the CLI steps) and wait for the map.
    ``query``: the pages' URL query (``ds=NAME``, and ``&emb=SET`` for another embedding set)."""
    wait_rendered(page, f"{url}/map?{query}", timeout=timeout)
    button = page.get_by_role("button", name="Compute the map")
    if not button.count():
        return {"needed": False}
    started = time.monotonic()
    button.click()
    page.wait_for_selector(f"{CHART}, {MAP}, {EXCEPTION}, {ERROR}", timeout=timeout * 1000)
    if not page.locator(f"{EXCEPTION}, {ERROR}").count():
        page.wait_for_function(CHARTS_DRAWN, timeout=timeout * 1000, polling=100)
    job: dict[str, Any] = {"needed": True, "seconds": time.monotonic() - started}
    for kind, selector in (("exception", EXCEPTION), ("error", ERROR)):
        shown = page.locator(selector)
        if shown.count():
            job[kind] = tail(shown.first.inner_text(), 5)
    return job


def server_step(workspace: Path, query: str, *, logs: Path, page_timeout: float) -> dict[str, Any]:
    """Open every page of a served workspace in headless Chromium; the server's peak RSS."""
    record: dict[str, Any] = {"pages": {}}
    started = time.perf_counter()
    with serving(workspace, logs) as (url, process):
        record["seconds_to_healthy"] = time.perf_counter() - started
        try:
            from playwright.sync_api import sync_playwright

            from benchmarks import chromium
        except ImportError as error:
            record["browser"] = f"not available ({error})"
        else:
            if not chromium.available():
                record["browser"] = f"not available ({chromium.CHROMIUM} missing)"
            else:
                with sync_playwright() as playwright:
                    browser = chromium.launch(playwright)
                    try:
                        page = browser.new_page(viewport={"width": 1400, "height": 1000})
                        try:
                            record["analyse_job"] = start_analysis(
                                page, url, query, timeout=page_timeout
                            )
                        except Exception as error:  # noqa: BLE001 - recorded, pages still timed
                            record["analyse_job"] = {"error": f"{type(error).__name__}: {error}"}
                        for name, path in PAGES.items():
                            try:
                                opened = wait_rendered(
                                    page, f"{url}/{path}?{query}", timeout=page_timeout
                                )
                            except Exception as error:  # noqa: BLE001 - recorded, next page
                                opened = {"error": f"{type(error).__name__}: {error}"[:500]}
                            memory = group_memory(process.pid)
                            opened["server_rss_mb"] = sum(p["rss_mb"] for p in memory)
                            record["pages"][name] = opened
                    finally:
                        browser.close()
        processes = group_memory(process.pid)
    record["processes"] = processes
    record["peak_rss_mb"] = max((p["peak_rss_mb"] for p in processes), default=float("nan"))
    record["seconds"] = time.perf_counter() - started
    record["ok"] = (
        "browser" not in record
        and not {"error", "exception"} & set(record.get("analyse_job", {}))
        and all(
            "seconds" in page and not {"error", "exception"} & set(page)
            for page in record["pages"].values()
        )
    )
    return record


# --------------------------------------------------------------------------- one size


@dataclass(frozen=True)
class Target:
    """What one size's steps run on: its workspace and dataset, the embedding set ("-": the
    dataset's default), the grown Parquet file, and at the object level the box files' folder."""

    n_samples: int
    level: str
    workspace: Path
    logs: Path
    dataset: str
    embedding: str
    parquet: Path
    boxes: Path | None

    @property
    def embedding_options(self) -> list[str]:
        return [] if self.embedding == "-" else ["--embedding", self.embedding]

    @property
    def query(self) -> str:
        """The app pages' URL query."""
        if self.embedding == "-":
            return f"ds={self.dataset}"
        return f"ds={self.dataset}&level={self.level}&emb={self.embedding}"

    def first_id(self) -> str:
        if self.boxes is None:
            return "s0000000"
        return (self.boxes / "first-object-id.txt").read_text().strip()


def size_key(n_samples: int, level: str) -> str:
    """The report's key of one size (and its workspace's suffix): "1000000", "objects-1000000"."""
    return str(n_samples) if level == "sample" else f"objects-{n_samples}"


def run_size(
    n_samples: int, steps: Sequence[str], args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every requested step on one size; (facts about the run, figures per step)."""
    work: Path = args.work
    key = size_key(n_samples, args.level)
    parquet = sample_path(work, n_samples, seed=args.seed, noise=args.noise)
    objects = args.level == "object"
    target = Target(
        n_samples=n_samples,
        level=args.level,
        workspace=work / f"ws-{key}",
        logs=work / "logs" / key,
        dataset=f"boxes{n_samples}" if objects else f"scale{n_samples}",
        embedding="boxes" if objects else "-",
        parquet=parquet,
        boxes=box_folder(parquet) if objects else None,
    )
    facts: dict[str, Any] = {"dataset": target.dataset, "parquet": str(parquet)}
    if objects:
        # The box files replace the import. The generated COCO set has one split, so compare
        # pits the footwear boxes against the rest (OBJECT_COMPARISON).
        facts["boxes"] = str(target.boxes)
        facts["compare"] = " vs ".join(OBJECT_COMPARISON)
    else:
        steps = [step for step in steps if step != "attach"]
    # Data files in children too: a child's ru_maxrss starts at this process's own peak (exec
    # keeps the high-water mark of the memory it replaces), so this process must stay small.
    making = []
    if not parquet.exists():
        making.append(("generate", [str(parquet), str(n_samples), str(args.seed), str(args.noise)]))
    if target.boxes is not None and not (target.boxes / "instances.json").exists():
        making.append(("boxes", [str(target.boxes), str(parquet)]))
    for kind, child_args in making:
        command = [sys.executable, str(SCRIPT), "--child", kind, *child_args]
        made = measure(command, logs=target.logs, name=kind, timeout=args.timeout)
        facts[kind] = made.record()
        if made.returncode != 0:
            reason = f"the {kind} files were not written: {tail(made.stderr, 1)}"
            return facts, {step: {"ok": False, "error": reason} for step in steps}
    facts.update(
        parquet_mb=parquet.stat().st_size / 1024**2,
        load_average_before=os.getloadavg()[0],
        machine=machine(),
        commit=commit(),
    )
    if "import" in steps and target.workspace.exists():
        shutil.rmtree(target.workspace)  # a fresh workspace: nothing cached from an earlier run
    figures: dict[str, Any] = {}
    label = f"[{n_samples:,}{' boxes' if objects else ''}]"
    for step in steps:
        print(f"{label} {step} ...", file=sys.stderr, flush=True)
        try:
            figures[step] = run_step(step, target, args)
        except Exception as error:  # noqa: BLE001 - one broken step must not end the run
            figures[step] = {"ok": False, "error": f"{type(error).__name__}: {error}"[:1000]}
        figures[step]["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        if step in ("import", "attach") and figures[step].get("ok"):
            figures[step]["rows_per_second"] = n_samples / figures[step]["seconds"]
        print(f"{label} {step}: {summary_line(figures[step])}", file=sys.stderr, flush=True)
    facts["load_average_after"] = os.getloadavg()[0]
    facts["launcher_peak_rss_mb"] = own_peak_rss_mb()
    if not args.keep:
        shutil.rmtree(target.workspace, ignore_errors=True)
    return facts, figures


def run_step(step: str, target: Target, args: argparse.Namespace) -> dict[str, Any]:
    def timed(command: list[str], name: str = step) -> Measured:
        return measure(command, logs=target.logs, name=name, timeout=args.timeout)

    workspace, dataset = target.workspace, target.dataset
    if step == "server":
        return server_step(
            workspace, target.query, logs=target.logs, page_timeout=args.page_timeout
        )
    prepare_seconds = None
    if step == "import" and target.boxes is not None:
        run = timed(
            shoal_command(
                workspace,
                "import-coco",
                str(target.boxes / "instances.json"),
                "--images",
                str(target.boxes / "images"),
                "--dataset",
                dataset,
            )
        )
    elif step == "import":
        run = timed(shoal_command(workspace, "import", str(target.parquet), "--dataset", dataset))
    elif step == "attach":
        assert target.boxes is not None
        prepared = timed(
            child_command(
                "box-vectors", workspace, dataset, "-", str(target.parquet), str(target.boxes)
            ),
            "attach-prepare",
        )
        if prepared.returncode != 0:
            return prepared.record() | {"error": "boxes.parquet was not written"}
        prepare_seconds = prepared.seconds
        run = timed(
            shoal_command(
                workspace,
                "add-embeddings",
                dataset,
                str(target.boxes / "boxes.parquet"),
                "--embedding",
                target.embedding,
            )
        )
    elif step in ("graph", "recall", "query"):
        extra = {
            "graph": [],
            "recall": [str(args.recall_rows), str(args.seed)],
            "query": [str(args.queries), str(args.seed)],
        }[step]
        run = timed(child_command(step, workspace, dataset, target.embedding, *extra))
    else:
        reference, current = OBJECT_COMPARISON if target.level == "object" else SPLITS
        options = {
            "compare": ["--reference", reference, "--current", current],
            "similar": ["--sample", target.first_id(), "-k", "50"],
        }.get(step, [])
        run = timed(shoal_command(workspace, step, dataset, *options, *target.embedding_options))
    record = run.record() | run.result
    if prepare_seconds is not None:
        record["prepare_seconds"] = prepare_seconds  # writing boxes.parquet: not Shoal's time
    if run.returncode == 0 and step not in ("graph", "recall", "query"):
        record["summary"] = run.stdout.strip().splitlines()[0][:200] if run.stdout.strip() else ""
    if step == "project" and run.returncode == 0:
        again = timed(
            shoal_command(workspace, "project", dataset, "--json", *target.embedding_options),
            "project-json",
        )
        record["json_seconds"] = again.seconds
        if again.returncode == 0:
            summary = json.loads(again.stdout)
            record["trustworthiness"] = summary.get("trustworthiness")
            record["trustworthiness_sample_size"] = summary.get("trustworthiness_sample_size")
            record["method"] = summary.get("method")
        else:
            record["json_error"] = tail(again.stderr, 5)
    return record


def summary_line(record: dict[str, Any]) -> str:
    if not record.get("ok"):
        reason = record.get("error") or record.get("stderr_tail") or record.get("browser") or ""
        return f"FAILED ({tail(str(reason), 1)})"
    return f"{record.get('seconds', float('nan')):.1f} s, {record.get('peak_rss_mb', 0):.0f} MB"


def own_peak_rss_mb() -> float:
    """This process's peak RSS: the floor under every child's figure (see :func:`run_size`)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    total_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gb": total_kib / 1024**2,
        "python": platform.python_version(),
    }


def commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# --------------------------------------------------------------------------- report


def size_label(key: str) -> str:
    """ "1M", "100k", "1M boxes" for a report key (:func:`size_key`)."""
    if key.startswith("objects-"):
        return size_label(key.removeprefix("objects-")) + " boxes"
    n_samples = int(key)
    if n_samples % 1_000_000 == 0:
        return f"{n_samples // 1_000_000}M"
    if n_samples % 1_000 == 0:
        return f"{n_samples // 1_000}k"
    return f"{n_samples:,}"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def step_figures(step: str, record: dict[str, Any], sizes: dict[str, Any]) -> str:
    """What the step measured besides time and memory, or why it failed."""
    if not record.get("ok"):
        if record.get("timed_out"):
            return "timed out (--timeout)"
        if "pages" in record and "browser" not in record and "error" not in record:
            pass  # the server ran: show its pages, problems included
        else:
            reason = record.get("error") or record.get("stderr_tail") or record.get("browser")
            return cell(tail(str(reason or "failed"), 1)[:160])
    if step in ("import", "attach"):
        return f"{record['rows_per_second']:,.0f} rows/s" if "rows_per_second" in record else ""
    if step == "graph":
        return f"{record.get('method', '?')}, {record.get('seconds_in_process', float('nan')):.1f} s in process"
    if step == "recall":
        return f"recall@10 {record['recall_at_10']:.3f} ({record['n_rows']:,} rows)"
    if step == "project":
        parts = []
        if record.get("trustworthiness") is not None:
            parts.append(f"trustworthiness {record['trustworthiness']:.3f}")
        graph = sizes.get("graph", {})
        if graph.get("ok"):
            parts.append(f"with graph {record['seconds'] + graph['seconds']:.1f} s")
        return ", ".join(parts)
    if step == "query":
        return (
            f"first {record['first_query_ms']:.0f} ms; p50 {record['p50_ms']:.1f} / "
            f"p95 {record['p95_ms']:.1f} ms"
        )
    if step == "server":
        job = record.get("analyse_job", {})
        pages = [
            f"analyse job {job['seconds']:.1f} s" if "seconds" in job else "",
            f"analyse job: {tail(str(job['error']), 1)[:80]}" if "error" in job else "",
        ]
        for name, page in record.get("pages", {}).items():
            if "seconds" in page:
                pages.append(
                    f"{name} {page['seconds']:.1f} s"
                    + (" (exception)" if "exception" in page else "")
                    + (" (error shown)" if "error" in page else "")
                )
            else:
                pages.append(f"{name} {'timed out' if page.get('timed_out') else 'error'}")
        return cell("; ".join(page for page in pages if page))
    return cell(record.get("summary", "")[:100])


def markdown(report: dict[str, Any], keys: Sequence[str]) -> str:
    entries = [(key, report["sizes"][key]) for key in keys if key in report["sizes"]]
    if not entries:
        return "(no results)"
    first = entries[0][1]["run"]["machine"]
    lines = [
        f"Scale benchmark on {first['platform']}, {first['cpu']}, {first['cpu_count']} CPUs, "
        f"{first['memory_gb']:.1f} GB RAM (time = wall seconds of the step's process, RSS = its peak)",
        "",
    ]
    header = ["step"]
    for key, _ in entries:
        label = size_label(key)
        header += [f"{label} time", f"{label} peak RSS", f"{label} figures"]
    header.append("target at 1M")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for step in STEPS:
        if not any(step in entry["steps"] for _, entry in entries):
            continue
        row = [step]
        for _, entry in entries:
            record = entry["steps"].get(step)
            if record is None:
                row += ["", "", ""]
                continue
            seconds = record.get("seconds")
            time_text = "" if seconds is None else f"{seconds:,.1f} s"
            if not record.get("ok"):
                code = record.get("returncode")
                time_text = f"FAILED{f' (rc {code})' if code is not None else ''} {time_text}"
            rss = record.get("peak_rss_mb")
            row += [
                time_text.strip(),
                "" if rss is None else f"{rss / 1024:.2f} GB",
                step_figures(step, record, entry["steps"]),
            ]
        row.append(TARGETS[step])
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def load_report() -> dict[str, Any]:
    try:
        report = json.loads(OUT.read_text())
    except (OSError, ValueError):
        report = {}
    if not isinstance(report.get("sizes"), dict):
        report = {"sizes": {}}
    return report


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--steps", nargs="+", choices=STEPS, default=list(DEFAULT_STEPS), metavar="STEP"
    )
    parser.add_argument(
        "--level",
        choices=LEVELS,
        default="sample",
        help="object: N boxes (N / 10 images) imported from COCO, embeddings attached by object_id",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/shoal-scale"))
    parser.add_argument("--keep", action="store_true", help="keep the workspaces afterwards")
    parser.add_argument(
        "--noise", type=float, default=0.5, help="noise, times sqrt(2 d / dim) (see above)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recall-rows", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per step")
    parser.add_argument("--page-timeout", type=float, default=600, help="seconds per page")
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    steps = [step for step in STEPS if step in args.steps]

    report = load_report()
    report.update(
        benchmark="scale",
        data=(
            "5,000 real Fashion-MNIST EfficientNet-Lite0 embeddings (1280-d), tiled with "
            "isotropic Gaussian noise of --noise x the RMS per-dimension std"
        ),
        targets_at_1m=TARGETS,
    )
    for n_samples in args.samples:
        facts, figures = run_size(n_samples, steps, args)
        data = {"noise": args.noise, "seed": args.seed}
        entry = report["sizes"].setdefault(size_key(n_samples, args.level), {"steps": {}})
        if {key: entry.get("run", {}).get(key) for key in data} != data:
            entry["steps"] = {}  # figures of other data are not merged with these
        entry["run"] = facts | data
        entry["steps"].update(figures)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(
            json.dumps(report, indent=1, default=float)
        )  # after each size: a crash keeps it
    print(markdown(report, [size_key(n, args.level) for n in args.samples]))
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(child_main(sys.argv[2:]))
    main()
