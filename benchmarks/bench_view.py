"""The map's payload and time to first render, for 10k and 100k points.

For each size, in one run and on the same synthetic map (2-D coordinates, 10 labels, 12-char ids):
  shoal      shoal.app.scatter.build_scatter + hover_for, as pages/map.py draws it: one WebGL
             trace per label, float32 typed arrays, the id as the only per-point string
  baseline   the plain way: plotly express ``px.scatter(df, x, y, color="label",
             hover_data=["sample_id", "label"], render_mode="webgl")`` on float64 coordinates

Measured:
  payload_mb      the figure JSON exactly as st.plotly_chart puts it on the wire (the figure is
                  validated, then ``plotly.io.to_json``)
  build_s         server side: build the figure and serialise it (median of --rounds)
  render_s        in the real browser (Debian Chromium, headless, software WebGL): fetch the JSON
                  from a local HTTP server, parse it, ``Plotly.newPlot``, until plotly's first
                  ``plotly_afterplot`` and the next frame; the page loads the plotly.js bundled with
                  the plotly package (median of --rounds after one warm-up; rounds alternate the two payloads)
Target: 100k points under 5 MB. Ratios are shoal / baseline from the same run.

    .venv/bin/python benchmarks/bench_view.py [--sizes 10000 100000] [--rounds 3] [--no-browser]

Writes benchmarks/results/bench_view.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "bench_view.json"
TARGET_MB_AT_100K = 5.0


def synthetic_map(n: int, *, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """10 Gaussian clusters in 2-D (a UMAP-like layout), with ids and labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    centres = rng.uniform(-10, 10, size=(10, 2))
    coords = (centres[labels] + rng.normal(scale=1.2, size=(n, 2))).astype(np.float32)
    samples = pd.DataFrame(
        {
            "sample_id": [f"{i:012x}" for i in rng.permutation(n)],
            "label": [f"class-{k}" for k in labels],
        }
    )
    return coords, samples


def shoal_figure(coords: np.ndarray, samples: pd.DataFrame) -> str:
    from shoal.app.scatter import build_scatter, hover_for, metadata_colourings

    hover_text, prefix = hover_for(samples)
    colouring = metadata_colourings(samples)["label"]
    return build_scatter(coords, colouring, hover_text=hover_text, hover_prefix=prefix).to_json()


def baseline_figure(coords: np.ndarray, samples: pd.DataFrame) -> str:
    import plotly.express as px
    import plotly.io

    frame = samples.assign(x=coords[:, 0].astype(np.float64), y=coords[:, 1].astype(np.float64))
    figure = px.scatter(
        frame, x="x", y="y", color="label", hover_data=["sample_id", "label"], render_mode="webgl"
    )
    return plotly.io.to_json(figure, validate=False)


def timed(function: Any, *args: Any, rounds: int) -> tuple[float, Any]:
    seconds, result = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        result = function(*args)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


RENDER_PAGE = """<!doctype html><html><head><meta charset="utf-8"><script src="{plotly}"></script></head>
<body style="margin:0"><div id="plot" style="width:1200px;height:620px"></div>
<script>
window.renderFigure = async function (url) {{
  Plotly.purge('plot');
  const div = document.getElementById('plot');
  const started = performance.now();
  const figure = await (await fetch(url, {{cache: 'no-store'}})).json();
  const drawn = new Promise(resolve => div.once ? div.once('plotly_afterplot', resolve) : resolve());
  await Plotly.newPlot(div, figure.data, figure.layout, {{responsive: false}});
  await drawn;
  await new Promise(requestAnimationFrame);
  return performance.now() - started;
}};
</script></body></html>"""


def browser_render_seconds(payloads: dict[str, str], rounds: int) -> dict[str, float] | None:
    """Median seconds from Plotly.newPlot to the first drawn frame, per payload; None without a browser."""
    from benchmarks import chromium

    if not chromium.available():
        return None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    import plotly

    bundle = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    with tempfile.TemporaryDirectory() as folder:
        folder_path = Path(folder)
        (folder_path / "plotly.min.js").write_bytes(bundle.read_bytes())
        (folder_path / "index.html").write_text(RENDER_PAGE.format(plotly="plotly.min.js"))
        for name, payload in payloads.items():
            (folder_path / f"{name}.json").write_text(payload)
        import http.server
        import threading

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a: Any, **k: Any) -> None:
                super().__init__(*a, directory=folder, **k)

            def log_message(self, *a: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        results: dict[str, float] = {}
        try:
            with sync_playwright() as playwright:
                browser = chromium.launch(playwright)
                page = browser.new_page(viewport={"width": 1280, "height": 720})
                page.goto(f"{base}/index.html")
                page.wait_for_function("() => window.Plotly !== undefined")
                times: dict[str, list[float]] = {name: [] for name in payloads}
                for round_number in range(
                    rounds + 1
                ):  # round 0 warms up; rounds alternate the payloads
                    for name in payloads:
                        elapsed = page.evaluate(
                            "url => window.renderFigure(url)", f"{base}/{name}.json"
                        )
                        if round_number:
                            times[name].append(elapsed)
                results = {
                    name: statistics.median(values) / 1000.0 for name, values in times.items()
                }
                browser.close()
        finally:
            server.shutdown()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()

    rows = []
    for n in args.sizes:
        coords, samples = synthetic_map(n)
        shoal_s, shoal_json = timed(shoal_figure, coords, samples, rounds=args.rounds)
        base_s, base_json = timed(baseline_figure, coords, samples, rounds=args.rounds)
        render = (
            None
            if args.no_browser
            else browser_render_seconds({"shoal": shoal_json, "baseline": base_json}, args.rounds)
        )
        row = {
            "points": n,
            "shoal": {"payload_mb": len(shoal_json.encode()) / 1024**2, "build_s": shoal_s},
            "baseline": {"payload_mb": len(base_json.encode()) / 1024**2, "build_s": base_s},
        }
        if render is not None:
            row["shoal"]["render_s"] = render["shoal"]
            row["baseline"]["render_s"] = render["baseline"]
        row["ratio"] = {
            k: row["shoal"][k] / row["baseline"][k] for k in row["shoal"] if row["baseline"].get(k)
        }
        rows.append(row)
        print(f"{n:,} points: {json.dumps(row)}", file=sys.stderr)

    at_100k = next((r for r in rows if r["points"] == 100_000), None)
    report = {
        "benchmark": "view",
        "sizes": args.sizes,
        "rounds": args.rounds,
        "render_measured_in": "Debian Chromium headless, software WebGL"
        if rows and "render_s" in rows[0]["shoal"]
        else "not measured",
        "target_mb_at_100k": TARGET_MB_AT_100K,
        "meets_target": None
        if at_100k is None
        else at_100k["shoal"]["payload_mb"] < TARGET_MB_AT_100K,
        "cpus": os.cpu_count(),
        "load_average_at_end": list(os.getloadavg()),
        "python": platform.python_version(),
        "results": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1))

    print(
        "| points | payload MB (shoal / plain) | ratio | build s (shoal / plain) | ratio | render s (shoal / plain) | ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        shoal, base, ratio = row["shoal"], row["baseline"], row["ratio"]
        render = (
            f"{shoal['render_s']:.2f} / {base['render_s']:.2f} | {ratio['render_s']:.2f}"
            if "render_s" in shoal
            else "— | —"
        )
        print(
            f"| {row['points']:,} | {shoal['payload_mb']:.2f} / {base['payload_mb']:.2f} | {ratio['payload_mb']:.2f} "
            f"| {shoal['build_s']:.2f} / {base['build_s']:.2f} | {ratio['build_s']:.2f} | {render} |"
        )
    if at_100k is not None:
        verdict = "meets" if report["meets_target"] else "MISSES"
        print(
            f"\n100k points: {at_100k['shoal']['payload_mb']:.2f} MB, {verdict} the {TARGET_MB_AT_100K:.0f} MB target."
        )
    return 0 if report["meets_target"] in (None, True) else 1


if __name__ == "__main__":
    sys.exit(main())
