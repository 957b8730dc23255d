"""The Map at 100k and a million points: the WebGL component against the Plotly scattergl path.

For each size, on one synthetic map (2-D coordinates in 12 Gaussian clusters plus 1 % uniform
outliers, 10 labels), in one run:
  webgl     the Map page itself: ``shoal serve`` on a workspace holding a dataset of N samples
            whose 2-D map is precomputed (see :func:`build_map_dataset`; no projection runs), opened
            in headless Chromium (software WebGL)
  plotly    the path the Map used before: ``benchmarks.plotly_map.build_scatter`` (scattergl, one trace
            per label, float32 typed arrays, the id as hover text) with its 150k random subsample
            switched off so every point is drawn, in a plain page with the plotly.js of the plotly
            package (fetch the figure JSON, ``Plotly.newPlot``, first ``plotly_afterplot``)

Measured:
  payload_mb       webgl: the component's binary message (header + x, y float32 + colour uint8);
                   plotly: the figure JSON as st.plotly_chart sends it
  first_draw_s     webgl: navigation to the Map URL until the component reports its points drawn
                   (a fresh browser context each time, so nothing is cached); plotly: fetch + parse +
                   newPlot until the first frame after ``plotly_afterplot``
  select_to_python_s  mouse-up of a box drag (3 s after the page went idle) until the page shows
                   "N selected" (the rows reached Python, the script ran, the browser drew the
                   answer: an upper bound on the time to ids in Python), for a small and a large
                   box; select_in_browser_s: mouse-up until the component handed the rows to
                   Streamlit; select_sent_s: mouse-up until the browser's websocket sent them to
                   the server (CDP Network.webSocketFrameSent; the page then runs its script, and
                   at 1M points reaches the decoded rows ~0.1 s later on a warm server)
  component_draw_s  webgl: in the browser, decoding the payload and drawing it (regl-scatterplot)
  js_heap_mb       ``Performance.getMetrics`` JSHeapUsedSize after the first draw (CDP)

    .venv/bin/python benchmarks/bench_view.py [--sizes 100000 1000000] [--no-plotly]

Writes benchmarks/results/bench_view.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.servers import free_port, serving, shoal_server  # noqa: E402  (after sys.path)

RESULTS = ROOT / "benchmarks" / "results" / "bench_view.json"
EMBEDDING = "coords"
VIEWPORT = {"width": 1400, "height": 1100}


# --------------------------------------------------------------------------- the dataset


def synthetic_map(n: int, *, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """(coords (n, 2) float32, samples with sample_id, label, split): 12 Gaussian clusters of
    different sizes and spreads, plus 1 % sparse outliers spread uniformly."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, size=(12, 2))
    spreads = rng.uniform(0.3, 1.5, size=12)
    weights = rng.dirichlet(np.full(12, 2.0))
    cluster = rng.choice(12, size=n, p=weights)
    coords = centres[cluster] + rng.normal(size=(n, 2)) * spreads[cluster, None]
    outliers = rng.random(n) < 0.01
    coords[outliers] = rng.uniform(-14, 14, size=(int(outliers.sum()), 2))
    labels = np.where(rng.random(n) < 0.9, cluster % 10, rng.integers(0, 10, n))
    samples = pd.DataFrame(
        {
            "sample_id": pd.Series(np.arange(n)).map("s{:07d}".format),
            "label": pd.Series(labels).map("class-{}".format),
            "split": np.where(rng.random(n) < 0.8, "train", "test"),
        }
    )
    samples["source"] = samples["sample_id"]  # as an embeddings-only import stores it
    samples["path"] = None
    return coords.astype(np.float32), samples


def build_map_dataset(workspace_root: Path, n: int, *, name: str = "map", seed: int = 0) -> Any:
    """A dataset of ``n`` samples whose map is given, not computed: returns its Dataset.

    Stored as the app expects after its background analysis: an embedding set (x, y, 10) (so
    cosine neighbours are those of the map), its exact cosine kNN graph (scipy cKDTree on the
    unit vectors), the UMAP-keyed projection artefact holding the given (x, y) as method
    "precomputed", and a finished 'analyse' job record for that embedding version.
    """
    from scipy.spatial import cKDTree

    from shoal.analysis.knn import KnnGraph
    from shoal.analysis.projection import Projection
    from shoal.jobs import runner
    from shoal.store import Workspace
    from shoal.workflows import analyse
    from shoal.workflows.cache import result_key

    coords, samples = synthetic_map(n, seed=seed)
    workspace = Workspace(workspace_root)
    ds = workspace.create(name, samples, has_images=False)
    vectors = np.column_stack([coords, np.full(n, 10.0, dtype=np.float32)]).astype(np.float32)
    info = ds.publish_embeddings(
        EMBEDDING, vectors, samples["sample_id"].to_numpy(), model="precomputed", make_default=True
    )
    embeddings = ds.load_embeddings(EMBEDDING)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    k = analyse.GRAPH_NEIGHBORS
    chord, indices = cKDTree(unit).query(unit, k=k + 1, workers=-1)
    graph = KnnGraph(
        indices=indices[:, 1:].astype(np.int64),
        distances=(chord[:, 1:] ** 2 / 2).astype(np.float32),  # cosine distance = chord² / 2
        metric="cosine",
        method="exact",
        n_neighbors=k,
    )
    graph_key = result_key(embeddings, "knn", **analyse.GRAPH_PARAMS)
    ds.save_artefact("knn", graph_key, graph.to_arrays(), graph.to_meta())
    params = analyse.projection_params(graph_key, k)  # the key the app's Map looks up
    projection = Projection(
        coords=coords,
        trustworthiness=float("nan"),
        trustworthiness_sample_size=0,
        neighborhood_preservation=np.full(n, np.nan, dtype=np.float32),
        transformed_mask=np.zeros(n, dtype=bool),
        method="precomputed",
    )
    ds.save_artefact(
        "projection",
        result_key(embeddings, "projection", **params),
        projection.to_arrays(),
        projection.to_meta(),
    )
    record = runner._new_record("analyse", name, {"embedding": EMBEDDING})
    runner._save(
        workspace,
        replace(record, state="done", result={"version": info.version}, finished_at="now"),
    )
    return ds


# --------------------------------------------------------------------------- driving the Map


def selected_count(page: Any) -> int | None:
    """The "N selected" heading under the map, or None."""
    for heading in page.locator("h3").all_inner_texts():
        match = re.match(r"([\d,]+) selected", heading.strip())
        if match:
            return int(match.group(1).replace(",", ""))
    return None


def open_map(page: Any, url: str, *, timeout: float = 120.0) -> float:
    """Navigate to the Map at ``url``; seconds until the component reports its points drawn."""
    started = time.perf_counter()
    page.goto(url)
    page.wait_for_function(
        "() => window.shoalMapDrawn !== undefined", timeout=timeout * 1000, polling=50
    )
    return time.perf_counter() - started


def share_link(page: Any) -> str:
    """Open the sidebar's "Share this view" and read the link it shows."""
    page.get_by_text("Share this view").click()
    code = page.locator('[data-testid="stSidebar"] [data-testid="stCode"] code')
    return str(code.first.inner_text()).strip()


def drag_box(
    page: Any,
    corners: tuple[float, float, float, float],
    *,
    previous: int | None = None,
    sent: list[float] | None = None,
) -> tuple[int, float]:
    """With the Box select tool, drag over ``corners`` (x0, y0, x1, y1 as fractions of the map);
    (the count the page then shows, seconds from mouse-up until it shows it)."""
    page.get_by_role("button", name="Box select").click()
    canvas = page.locator('[data-testid="shoalMap"] canvas')
    box = canvas.bounding_box()
    assert box is not None
    x0, y0 = box["x"] + box["width"] * corners[0], box["y"] + box["height"] * corners[1]
    x1, y1 = box["x"] + box["width"] * corners[2], box["y"] + box["height"] * corners[3]
    page.mouse.move(x0, y0)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(x0 + (x1 - x0) * step / 10, y0 + (y1 - y0) * step / 10)
    page.mouse.up()
    released = time.perf_counter()
    if sent is not None:
        sent.clear()
        sent.append(released)
    return _wait_for_count(page, previous, released)


def _wait_for_count(page: Any, previous: int | None, released: float) -> tuple[int, float]:
    deadline = released + 60
    while time.perf_counter() < deadline:
        count = selected_count(page)
        if count is not None and count != previous:
            return count, time.perf_counter() - released
        time.sleep(0.02)
    raise AssertionError("the selection never reached the page")


def drag_lasso(
    page: Any, vertices: list[tuple[float, float]], *, previous: int | None = None
) -> tuple[int, float]:
    """With the Lasso select tool, drag along ``vertices`` (fractions of the map); (the count
    the page then shows, seconds from mouse-up until it shows it)."""
    page.get_by_role("button", name="Lasso select").click()
    box = page.locator('[data-testid="shoalMap"] canvas').bounding_box()
    assert box is not None
    points = [(box["x"] + box["width"] * x, box["y"] + box["height"] * y) for x, y in vertices]
    page.mouse.move(*points[0])
    page.mouse.down()
    for (ax, ay), (bx, by) in zip(points, points[1:], strict=False):
        for step in range(1, 9):
            page.mouse.move(ax + (bx - ax) * step / 8, ay + (by - ay) * step / 8)
            time.sleep(0.015)  # the lasso samples the path at most every 10 ms
    page.mouse.up()
    return _wait_for_count(page, previous, time.perf_counter())


def hover_card(page: Any, *, timeout: float = 30.0) -> tuple[dict[str, Any], float]:
    """Rest the pointer on the map (trying a few spots until one is on a point); (the card the
    map shows: ``{index, row, id}``, seconds from the pointer's rest until it showed)."""
    canvas = page.locator('[data-testid="shoalMap"] canvas')
    box = canvas.bounding_box()
    assert box is not None
    page.evaluate("window.shoalMapCard = undefined")
    spots = [(0.5, 0.5), (0.35, 0.4), (0.6, 0.55), (0.45, 0.65), (0.3, 0.3), (0.7, 0.35)]
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        for fx, fy in spots:
            x, y = box["x"] + box["width"] * fx, box["y"] + box["height"] * fy
            page.mouse.move(x - 3, y - 3)
            page.mouse.move(x, y)
            rested = time.perf_counter()
            try:
                page.wait_for_function(
                    "() => window.shoalMapCard !== undefined", timeout=3_000, polling=20
                )
            except Exception:  # noqa: BLE001 - no point under this spot: the next one
                continue
            return page.evaluate("window.shoalMapCard"), time.perf_counter() - rested
    raise TimeoutError("no hover card appeared")


def js_heap_mb(page: Any) -> float:
    """The page's used JS heap (CDP Performance.getMetrics JSHeapUsedSize), in MB."""
    session = page.context.new_cdp_session(page)
    session.send("Performance.enable")
    metrics = {m["name"]: m["value"] for m in session.send("Performance.getMetrics")["metrics"]}
    session.detach()
    return float(metrics["JSHeapUsedSize"]) / 1024**2


def measure_webgl(url: str, name: str, browser: Any) -> dict[str, Any]:
    """Payload, first draw (cold server caches, then warm), selection round trip, JS heap."""
    result: dict[str, Any] = {}
    draws = []
    for _ in range(2):  # the first opening also loads the server's caches
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        draws.append(open_map(page, f"{url}/map?ds={name}"))
        if len(draws) == 1:
            context.close()
    result["first_draw_cold_s"], result["first_draw_s"] = draws
    result["component_draw_s"] = page.evaluate("window.shoalMapDrawn.ms") / 1000
    result["js_heap_mb"] = js_heap_mb(page)
    # The browser's websocket messages to the server, as this process sees them (events arrive
    # while it polls the page, every 20 ms): the first after mouse-up carries the selection.
    frames: list[float] = []
    session = page.context.new_cdp_session(page)
    session.send("Network.enable")
    session.on("Network.webSocketFrameSent", lambda _event: frames.append(time.perf_counter()))
    previous = None
    for label, corners in (("small", (0.30, 0.30, 0.52, 0.55)), ("large", (0.3, 0.3, 0.62, 0.62))):
        # As a user pauses: with software WebGL the last redraw of every point (first draw,
        # density pass, the previous highlight) holds the page's main thread for a second.
        time.sleep(3)
        released: list[float] = []
        count, seconds = drag_box(page, corners, previous=previous, sent=released)
        result[f"selected_{label}"], result[f"select_to_python_{label}_s"] = count, seconds
        after = [t for t in frames if t >= released[0]]
        result[f"select_sent_{label}_s"] = after[0] - released[0] if after else None
        result[f"select_in_browser_{label}_s"] = (
            page.evaluate("window.shoalMapSelectionSentAt - window.shoalMapMouseUpAt") / 1000
        )
        previous = count
    result["js_heap_after_select_mb"] = js_heap_mb(page)
    context.close()
    return result


def payload_bytes(n: int) -> dict[str, int]:
    """Bytes on the wire for the map of ``n`` points coloured by label: webgl and plotly."""
    from benchmarks.plotly_map import build_scatter, hover_for
    from shoal.app.scatter import encode_map_payload, metadata_colourings

    coords, samples = synthetic_map(n)
    colouring = metadata_colourings(samples)["label"]
    webgl = len(encode_map_payload(coords, colouring))
    hover_text, prefix = hover_for(samples)
    figure = build_scatter(
        coords, colouring, hover_text=hover_text, hover_prefix=prefix, max_points=n
    ).to_json()
    return {"webgl": webgl, "plotly": len(figure.encode())}


PLOTLY_PAGE = """<!doctype html><html><head><meta charset="utf-8"><script src="plotly.min.js"></script>
</head><body style="margin:0"><div id="plot" style="width:1200px;height:620px"></div>
<script>
window.renderFigure = async function (url) {
  const div = document.getElementById('plot');
  const started = performance.now();
  const figure = await (await fetch(url, {cache: 'no-store'})).json();
  await Plotly.newPlot(div, figure.data, figure.layout, {responsive: false});
  await new Promise(requestAnimationFrame);
  return performance.now() - started;
};
</script></body></html>"""


def measure_plotly(n: int, browser: Any) -> dict[str, Any]:
    """The Plotly scattergl baseline: every point, in a plain page (no Streamlit)."""
    import http.server
    import threading

    import plotly

    from benchmarks.plotly_map import build_scatter, hover_for
    from shoal.app.scatter import metadata_colourings

    coords, samples = synthetic_map(n)
    hover_text, prefix = hover_for(samples)
    figure = build_scatter(
        coords,
        metadata_colourings(samples)["label"],
        hover_text=hover_text,
        hover_prefix=prefix,
        max_points=n,
    ).to_json()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        bundle = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
        (root / "plotly.min.js").write_bytes(bundle.read_bytes())
        (root / "index.html").write_text(PLOTLY_PAGE)
        (root / "figure.json").write_text(figure)

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a: Any, **k: Any) -> None:
                super().__init__(*a, directory=folder, **k)

            def log_message(self, *a: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            context = browser.new_context(viewport=VIEWPORT)
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html")
            page.wait_for_function("() => window.Plotly !== undefined")
            seconds = page.evaluate("() => window.renderFigure('figure.json')") / 1000
            heap = js_heap_mb(page)
            context.close()
        finally:
            server.shutdown()
    return {"payload_bytes": len(figure.encode()), "first_draw_s": seconds, "js_heap_mb": heap}


#: The Map's Plotly path as a Streamlit app of its own: the same figure build_scatter made for
#: pages/map.py (every point drawn), st.plotly_chart with box/lasso selection, the count shown.
PLOTLY_APP = """
import os, numpy as np, streamlit as st
from benchmarks.bench_view import synthetic_map
from benchmarks.plotly_map import build_scatter, hover_for
from shoal.app.scatter import metadata_colourings
from benchmarks.plotly_map import selection_from_event

@st.cache_resource
def payload(n):
    coords, samples = synthetic_map(n)
    text, prefix = hover_for(samples)
    colouring = metadata_colourings(samples)["label"]
    return build_scatter(coords, colouring, hover_text=text, hover_prefix=prefix, max_points=n)

built = payload(int(os.environ["BENCH_VIEW_POINTS"]))
event = st.plotly_chart(built.figure, key="chart", on_select="rerun", selection_mode=("box", "lasso"))
picked = selection_from_event(event, built.trace_rows) if event else None
if picked is not None:
    from benchmarks.bench_view import synthetic_map as again
    coords, _ = again(int(os.environ["BENCH_VIEW_POINTS"]))
    st.subheader(f"{len(picked.resolve(coords)):,} selected")
"""


def measure_plotly_app(n: int, browser: Any, folder: Path) -> dict[str, Any]:
    """Today's Plotly path through Streamlit: navigation to the first drawn frame, a box drag
    to "N selected", JS heap. ``streamlit run`` of PLOTLY_APP on a free port."""
    script = folder / "plotly_app.py"
    script.write_text(PLOTLY_APP)
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port)]
    command += ["--server.address", "127.0.0.1", "--server.headless", "true"]
    env = {"BENCH_VIEW_POINTS": str(n), "PYTHONPATH": str(ROOT)}
    result: dict[str, Any] = {}
    with serving(command, f"http://127.0.0.1:{port}", folder / f"plotly-{n}.log", env=env) as url:
        draws = []
        for _ in range(2):  # the first opening also builds the figure on the server
            context = browser.new_context(viewport=VIEWPORT)
            page = context.new_page()
            started = time.perf_counter()
            page.goto(url)
            page.wait_for_function(
                "() => { const d = document.querySelector('.js-plotly-plot');"
                " return d && d._fullData && d._fullData.length && d.querySelector('canvas'); }",
                timeout=300_000,
                polling=50,
            )
            page.evaluate("() => new Promise(requestAnimationFrame)")
            draws.append(time.perf_counter() - started)
            if len(draws) == 1:
                context.close()
        result["first_draw_cold_s"], result["first_draw_s"] = draws
        result["js_heap_mb"] = js_heap_mb(page)
        time.sleep(3)  # as for the WebGL map: the page idle before the drag
        plot = page.locator(".js-plotly-plot .nsewdrag").first
        box = plot.bounding_box()
        x0, y0 = box["x"] + box["width"] * 0.30, box["y"] + box["height"] * 0.30
        x1, y1 = box["x"] + box["width"] * 0.52, box["y"] + box["height"] * 0.55
        page.mouse.move(x0, y0)
        page.mouse.down()
        for step in range(1, 11):
            page.mouse.move(x0 + (x1 - x0) * step / 10, y0 + (y1 - y0) * step / 10)
        page.mouse.up()
        count, seconds = _wait_for_count(page, None, time.perf_counter())
        result["selected_small"], result["select_to_python_small_s"] = count, seconds
        context.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--no-plotly", action="store_true", help="skip the Plotly baseline")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from benchmarks import chromium

    if not chromium.available():
        print("Chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        workspace = Path(folder) / "ws"
        for n in args.sizes:
            build_map_dataset(workspace, n, name=f"map{n}")
        browser = chromium.launch(playwright)
        try:
            with shoal_server(workspace, Path(folder) / "serve.log") as url:
                for n in args.sizes:
                    sizes = payload_bytes(n)
                    webgl = {
                        "payload_bytes": sizes["webgl"],
                        **measure_webgl(url, f"map{n}", browser),
                    }
                    row: dict[str, Any] = {"points": n, "webgl": webgl}
                    if not args.no_plotly:
                        row["plotly"] = measure_plotly(n, browser)
                        row["plotly_app"] = measure_plotly_app(n, browser, Path(folder))
                    rows.append(row)
                    print(f"{n:,} points: {json.dumps(row)}", file=sys.stderr)
        finally:
            browser.close()
    report = {
        "benchmark": "view",
        "measured_in": "Debian Chromium headless, software WebGL (SwiftShader)",
        "cpus": os.cpu_count(),
        "load_average_at_end": list(os.getloadavg()),
        "python": platform.python_version(),
        "results": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1))
    print(
        "| points | path | payload MB | first draw s | selection → Python s | JS heap MB |\n"
        "|---:|---|---:|---:|---:|---:|"
    )
    for row in rows:
        web = row["webgl"]
        print(
            f"| {row['points']:,} | WebGL component | {web['payload_bytes'] / 1e6:.1f} "
            f"| {web['first_draw_s']:.1f} (cold server {web['first_draw_cold_s']:.1f}; "
            f"decode + draw {web['component_draw_s']:.1f}) "
            f"| {web['selected_small']:,} selected: sent {web['select_sent_small_s']:.2f}, "
            f"shown {web['select_to_python_small_s']:.2f}; {web['selected_large']:,}: sent "
            f"{web['select_sent_large_s']:.2f}, shown {web['select_to_python_large_s']:.2f} "
            f"| {web['js_heap_mb']:.0f} |"
        )
        if "plotly" in row:
            plot = row["plotly"]
            app = row["plotly_app"]
            print(
                f"| {row['points']:,} | Plotly scattergl in Streamlit (old path, no subsample) "
                f"| {plot['payload_bytes'] / 1e6:.1f} "
                f"| {app['first_draw_s']:.1f} (cold server {app['first_draw_cold_s']:.1f}; "
                f"figure alone in a plain page {plot['first_draw_s']:.1f}) "
                f"| {app['select_to_python_small_s']:.2f} ({app['selected_small']:,} selected) "
                f"| {app['js_heap_mb']:.0f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
