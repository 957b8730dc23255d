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
  outliers, duplicates, mislabels, compare (``--reference split=train --current split=test``),
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
TARGETS = {
    "import": "peak RSS <= 2 GB",
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
    workspace, dataset, *rest = rest
    from shoal.store import Workspace

    ds = Workspace(workspace).open(dataset)
    if kind == "graph":
        figures = child_graph(ds)
    elif kind == "recall":
        figures = child_recall(ds, n_rows=int(rest[0]), seed=int(rest[1]))
    elif kind == "query":
        figures = child_query(ds, n_queries=int(rest[0]), seed=int(rest[1]))
    else:
        raise SystemExit(f"unknown child {kind!r}")
    print(RESULT_MARKER + json.dumps(figures), flush=True)
    return 0


def child_graph(ds: Any) -> dict[str, Any]:
    from shoal.workflows.analyse import knn_graph

    started = time.perf_counter()
    computed = knn_graph(ds)
    return {
        "seconds_in_process": time.perf_counter() - started,
        "method": computed.result.method,
        "n_neighbors": computed.result.n_neighbors,
        "cached": computed.cached,
    }


def child_recall(ds: Any, *, n_rows: int, seed: int) -> dict[str, Any]:
    from shoal.analysis.knn import recall_at_k
    from shoal.workflows.analyse import knn_graph

    graph = knn_graph(ds).result
    vectors = ds.load_embeddings().vectors
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


def child_query(ds: Any, *, n_queries: int, seed: int) -> dict[str, Any]:
    from shoal.workflows.analyse import similar

    ids = np.asarray(ds.load_embeddings().ids).astype(str)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    similar(ds, sample_ids=[str(ids[0])], k=50)
    first_ms = (time.perf_counter() - started) * 1000
    latencies = []
    for row in rng.choice(len(ids), n_queries, replace=len(ids) < n_queries):
        started = time.perf_counter()
        similar(ds, sample_ids=[str(ids[row])], k=50)
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


def start_analysis(page: Any, url: str, dataset: str, *, timeout: float) -> dict[str, Any]:
    """A large set's pages wait for the app's background 'analyse' job: start it from the Map
    page as a visitor would (its results are cache hits after the CLI steps) and wait for the map."""
    wait_rendered(page, f"{url}/map?ds={dataset}", timeout=timeout)
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


def server_step(
    workspace: Path, dataset: str, *, logs: Path, page_timeout: float
) -> dict[str, Any]:
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
                                page, url, dataset, timeout=page_timeout
                            )
                        except Exception as error:  # noqa: BLE001 - recorded, pages still timed
                            record["analyse_job"] = {"error": f"{type(error).__name__}: {error}"}
                        for name, path in PAGES.items():
                            try:
                                opened = wait_rendered(
                                    page, f"{url}/{path}?ds={dataset}", timeout=page_timeout
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


def run_size(
    n_samples: int, steps: Sequence[str], args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every requested step on one size; (facts about the run, figures per step)."""
    work: Path = args.work
    workspace = work / f"ws-{n_samples}"
    logs = work / "logs" / str(n_samples)
    dataset = f"scale{n_samples}"
    parquet = sample_path(work, n_samples, seed=args.seed, noise=args.noise)
    facts: dict[str, Any] = {"dataset": dataset, "parquet": str(parquet)}
    if not parquet.exists():
        # In a child too: a child's ru_maxrss starts at this process's own peak (exec keeps the
        # high-water mark of the memory it replaces), so this process must stay small.
        command = [sys.executable, str(SCRIPT), "--child", "generate", str(parquet)]
        command += [str(n_samples), str(args.seed), str(args.noise)]
        generated = measure(command, logs=logs, name="generate", timeout=args.timeout)
        facts["generate"] = generated.record()
        if generated.returncode != 0:
            reason = f"the sample file was not written: {tail(generated.stderr, 1)}"
            return facts, {step: {"ok": False, "error": reason} for step in steps}
    facts.update(
        parquet_mb=parquet.stat().st_size / 1024**2,
        load_average_before=os.getloadavg()[0],
        machine=machine(),
        commit=commit(),
    )
    if "import" in steps and workspace.exists():
        shutil.rmtree(workspace)  # a fresh workspace: nothing cached from an earlier run
    sample_id = "s0000000"
    figures: dict[str, Any] = {}
    for step in steps:
        print(f"[{n_samples:,}] {step} ...", file=sys.stderr, flush=True)
        try:
            figures[step] = run_step(step, workspace, dataset, parquet, sample_id, logs, args)
        except Exception as error:  # noqa: BLE001 - one broken step must not end the run
            figures[step] = {"ok": False, "error": f"{type(error).__name__}: {error}"[:1000]}
        figures[step]["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        if step == "import" and figures[step].get("ok"):
            figures[step]["rows_per_second"] = n_samples / figures[step]["seconds"]
        print(f"[{n_samples:,}] {step}: {summary_line(figures[step])}", file=sys.stderr, flush=True)
    facts["load_average_after"] = os.getloadavg()[0]
    facts["launcher_peak_rss_mb"] = own_peak_rss_mb()
    if not args.keep:
        shutil.rmtree(workspace, ignore_errors=True)
    return facts, figures


def run_step(
    step: str,
    workspace: Path,
    dataset: str,
    parquet: Path,
    sample_id: str,
    logs: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    def timed(command: list[str], name: str = step) -> Measured:
        return measure(command, logs=logs, name=name, timeout=args.timeout)

    if step == "server":
        return server_step(workspace, dataset, logs=logs, page_timeout=args.page_timeout)
    if step == "import":
        run = timed(shoal_command(workspace, "import", str(parquet), "--dataset", dataset))
    elif step in ("graph", "recall", "query"):
        extra = {
            "graph": [],
            "recall": [str(args.recall_rows), str(args.seed)],
            "query": [str(args.queries), str(args.seed)],
        }[step]
        run = timed(child_command(step, workspace, dataset, *extra))
    else:
        options = {
            "compare": ["--reference", "split=train", "--current", "split=test"],
            "similar": ["--sample", sample_id, "-k", "50"],
        }.get(step, [])
        run = timed(shoal_command(workspace, step, dataset, *options))
    record = run.record() | run.result
    if run.returncode == 0 and step not in ("graph", "recall", "query"):
        record["summary"] = run.stdout.strip().splitlines()[0][:200] if run.stdout.strip() else ""
    if step == "project" and run.returncode == 0:
        again = timed(shoal_command(workspace, "project", dataset, "--json"), "project-json")
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


def size_label(n_samples: int) -> str:
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
    if step == "import":
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


def markdown(report: dict[str, Any], sizes: Sequence[int]) -> str:
    entries = [(n, report["sizes"][str(n)]) for n in sizes if str(n) in report["sizes"]]
    if not entries:
        return "(no results)"
    first = entries[0][1]["run"]["machine"]
    lines = [
        f"Scale benchmark on {first['platform']}, {first['cpu']}, {first['cpu_count']} CPUs, "
        f"{first['memory_gb']:.1f} GB RAM (time = wall seconds of the step's process, RSS = its peak)",
        "",
    ]
    header = ["step"]
    for n, _ in entries:
        label = size_label(n)
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
        entry = report["sizes"].setdefault(str(n_samples), {"steps": {}})
        if {key: entry.get("run", {}).get(key) for key in data} != data:
            entry["steps"] = {}  # figures of other data are not merged with these
        entry["run"] = facts | data
        entry["steps"].update(figures)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(
            json.dumps(report, indent=1, default=float)
        )  # after each size: a crash keeps it
    print(markdown(report, args.samples))
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(child_main(sys.argv[2:]))
    main()
