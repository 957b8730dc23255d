"""What the web app needs that is not Streamlit: URL state, scatter payloads, thumbnails, uploads.

Everything here is plain Python (numpy, pandas, Pillow, plotly's JSON encoder), so the pages stay
thin and every rule they rely on is tested without a browser:

* **URL state.** A selection travels in the link as a short token: the box or lasso drawn on the
  map (``b:`` / ``l:``; resolved against *all* points, so a thinned-out view still selects every
  point inside), or the selected row numbers, delta-coded and deflated (``r:``).
* **Scatter payload.** One WebGL trace per category (or one with a colour scale), coordinates as
  float32 typed arrays, hover text as the only strings; above ``max_points`` a fixed random
  subset is drawn and :class:`ScatterPayload` says so.
* **Thumbnails.** Small JPEGs cached on disk beside the workspace, content-addressed.
* **Uploads.** Files from the browser go to disk first (never held twice in memory), with names
  that cannot escape their folder; :func:`import_uploads` then hands them to the importers.

Example:
    >>> token = Selection.from_rows([3, 4, 9], n_rows=100).to_token()
    >>> Selection.from_token(token).resolve(np.zeros((100, 2)), n_rows=100).tolist()
    [3, 4, 9]
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import urlencode

import numpy as np
import pandas as pd

from shoal.store import Workspace, atomic_path

#: Draw at most this many points; above it a fixed random subset is drawn (and the page says so).
MAX_DRAWN_POINTS = 150_000
#: Categorical colourings with more values than this group the rarest into "other".
MAX_CATEGORIES = 24
#: Longest selection token kept in a link; a larger selection is shared as its geometry/query.
MAX_TOKEN_CHARS = 6_000
THUMBNAIL_SIZE = 160
#: Context kept around a box in its thumbnail, as a fraction of the box's longer side.
BOX_MARGIN = 0.15
BOX_COLOUR = (255, 45, 85)
#: Plotly's qualitative palette for categories, long enough for MAX_CATEGORIES.
CATEGORY_COLOURS = (
    "#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#EECA3B", "#B279A2", "#FF9DA6",
    "#9D755D", "#BAB0AC", "#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD", "#8C564B",
    "#E377C2", "#7F7F7F", "#BCBD22", "#17BECF", "#393B79", "#637939", "#8C6D31", "#843C39",
)  # fmt: skip
OTHER_COLOUR = "#C8C8C8"
#: Fixed colours of an object's match status: true positive, false positive, missed (false negative).
STATUS_COLOURS = {"tp": "#54A24B", "fp": "#E45756", "fn": "#F58518"}
#: Object-table columns that are coordinates or ids, never colourings.
OBJECT_GEOMETRY = ("object_id", "match_id", "x0", "y0", "x1", "y1")


# --------------------------------------------------------------------------- selections


class SelectionError(ValueError):
    """A selection token from a link could not be read."""


@dataclass(frozen=True)
class Selection:
    """A set of points, as drawn (box/lasso in map coordinates) or as explicit rows.

    kind: "rows" | "box" | "lasso". rows: sorted unique row numbers (kind "rows").
    boxes: ((x0, x1, y0, y1), ...) and lassos: (((x...), (y...)), ...) for the drawn kinds;
    several shapes mean their union (shift-drag in the chart adds shapes).
    """

    kind: str
    rows: tuple[int, ...] = ()
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    lassos: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...] = ()
    n_rows: int | None = None

    @classmethod
    def from_rows(cls, rows: Iterable[int], *, n_rows: int | None = None) -> Selection:
        return cls(
            kind="rows",
            rows=tuple(int(r) for r in np.unique(np.asarray(list(rows), dtype=np.int64))),
            n_rows=n_rows,
        )

    @property
    def empty(self) -> bool:
        return not (self.rows or self.boxes or self.lassos)

    def resolve(self, coords: np.ndarray, *, n_rows: int | None = None) -> np.ndarray:
        """Sorted row numbers selected among ``coords`` (n_points, 2): all points, not just drawn ones."""
        n = len(coords) if n_rows is None else n_rows
        if self.kind == "rows":
            if self.n_rows is not None and n_rows is not None and self.n_rows != n_rows:
                raise SelectionError(
                    f"this selection was made on a dataset of {self.n_rows} samples; this one has {n_rows}"
                )
            rows = np.asarray(self.rows, dtype=np.int64)
            return rows[(rows >= 0) & (rows < n)]
        coords = np.asarray(coords, dtype=np.float64)
        inside = np.zeros(len(coords), dtype=bool)
        for x0, x1, y0, y1 in self.boxes:
            inside |= (
                (coords[:, 0] >= min(x0, x1))
                & (coords[:, 0] <= max(x0, x1))
                & (coords[:, 1] >= min(y0, y1))
                & (coords[:, 1] <= max(y0, y1))
            )
        for xs, ys in self.lassos:
            inside |= points_in_polygon(coords[:, 0], coords[:, 1], np.asarray(xs), np.asarray(ys))
        return np.flatnonzero(inside)

    # -- tokens for the URL
    def to_token(self) -> str:
        """A compact URL-safe string; ``from_token`` inverts it (coordinates rounded to 1e-4)."""
        if self.kind == "rows":
            return "r:" + encode_rows(self.rows, n_rows=self.n_rows)
        shapes = {
            "b": [[round(float(v), 4) for v in box] for box in self.boxes],
            "l": [
                [[round(float(v), 4) for v in xs], [round(float(v), 4) for v in ys]]
                for xs, ys in self.lassos
            ],
        }
        return "g:" + _pack(json.dumps(shapes, separators=(",", ":")).encode())

    @classmethod
    def from_token(cls, token: str) -> Selection:
        try:
            kind, payload = token.split(":", 1)
            if kind == "r":
                rows, n_rows = decode_rows(payload)
                return cls(kind="rows", rows=tuple(int(r) for r in rows), n_rows=n_rows)
            if kind == "g":
                shapes = json.loads(_unpack(payload))
                boxes = tuple(tuple(float(v) for v in box) for box in shapes.get("b", []))
                lassos = tuple(
                    (tuple(float(v) for v in xs), tuple(float(v) for v in ys))
                    for xs, ys in shapes.get("l", [])
                )
                if any(len(box) != 4 for box in boxes) or any(
                    len(xs) != len(ys) or len(xs) < 3 for xs, ys in lassos
                ):
                    raise ValueError("malformed shape")
                if not boxes and not lassos:
                    raise ValueError("no shape")
                return cls(kind="lasso" if lassos else "box", boxes=boxes, lassos=lassos)  # type: ignore[arg-type]
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            zlib.error,
            json.JSONDecodeError,
        ) as error:
            raise SelectionError(f"cannot read the selection in this link ({error})") from error
        raise SelectionError(f"unknown selection kind {token[:2]!r} in this link")


def points_in_polygon(
    x: np.ndarray, y: np.ndarray, poly_x: np.ndarray, poly_y: np.ndarray
) -> np.ndarray:
    """Boolean mask of the points (x, y) inside the closed polygon (even-odd rule, vectorised)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    inside = np.zeros(x.shape, dtype=bool)
    count = len(poly_x)
    if count < 3:
        return inside
    for i in range(count):
        xa, ya = poly_x[i], poly_y[i]
        xb, yb = poly_x[(i + 1) % count], poly_y[(i + 1) % count]
        crosses = (ya > y) != (yb > y)
        if not crosses.any():
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = xa + (y - ya) * (xb - xa) / (yb - ya)
        inside ^= crosses & (x < x_cross)
    return inside


def encode_rows(rows: Iterable[int], *, n_rows: int | None = None) -> str:
    """Sorted unique rows as base64url(deflate(varint deltas)), prefixed by the row count if known."""
    values = np.unique(np.asarray(list(rows), dtype=np.int64))
    if values.size and values[0] < 0:
        raise ValueError("row numbers must be >= 0")
    deltas = np.diff(values, prepend=0) if values.size else values
    buffer = bytearray()
    for number in [0 if n_rows is None else n_rows + 1, len(values), *deltas.tolist()]:
        _put_varint(buffer, int(number))
    return _pack(bytes(buffer))


def decode_rows(token: str) -> tuple[np.ndarray, int | None]:
    """Inverse of :func:`encode_rows`: (rows (k,) int64 sorted, n_rows or None)."""
    data = _unpack(token)
    numbers, position = [], 0
    while position < len(data):
        value, position = _get_varint(data, position)
        numbers.append(value)
    if len(numbers) < 2 or len(numbers) != numbers[1] + 2:
        raise ValueError("row list is truncated")
    n_rows = numbers[0] - 1 if numbers[0] else None
    return np.cumsum(np.asarray(numbers[2:], dtype=np.int64)), n_rows


def _put_varint(buffer: bytearray, value: int) -> None:
    while True:
        byte, value = value & 0x7F, value >> 7
        buffer.append(byte | (0x80 if value else 0))
        if not value:
            return


def _get_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("bad varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def _pack(raw: bytes) -> str:
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")


def _unpack(token: str) -> bytes:
    padded = token + "=" * (-len(token) % 4)
    compressed = base64.urlsafe_b64decode(padded.encode())
    inflater = zlib.decompressobj()
    raw = inflater.decompress(compressed, 1 << 22)  # a link never needs more: refuse deflate bombs
    if inflater.unconsumed_tail:
        raise ValueError("selection token expands too far")
    return raw


def selection_from_event(
    event: Mapping[str, Any] | None, trace_rows: Sequence[np.ndarray]
) -> Selection | None:
    """Turn Streamlit's plotly selection event into a Selection, or None when nothing is selected.

    A drawn box or lasso wins (it also covers points the view did not draw); clicked points
    are mapped back to rows through ``trace_rows`` (trace number -> row numbers of its points).
    """
    if not event:
        return None
    selection = event.get("selection", event)
    boxes = tuple(
        (float(b["x"][0]), float(b["x"][1]), float(b["y"][0]), float(b["y"][1]))
        for b in selection.get("box", []) or []
        if len(b.get("x", [])) == 2 and len(b.get("y", [])) == 2
    )
    lassos = tuple(
        (tuple(float(v) for v in s["x"]), tuple(float(v) for v in s["y"]))
        for s in selection.get("lasso", []) or []
        if len(s.get("x", [])) >= 3
    )
    if boxes or lassos:
        return Selection(kind="lasso" if lassos else "box", boxes=boxes, lassos=lassos)
    rows = []
    for point in selection.get("points", []) or []:
        curve = point.get("curve_number", point.get("curveNumber"))
        index = point.get("point_index", point.get("pointIndex", point.get("point_number")))
        if curve is None or index is None or not 0 <= int(curve) < len(trace_rows):
            continue
        trace = trace_rows[int(curve)]
        if 0 <= int(index) < len(trace):
            rows.append(int(trace[int(index)]))
    return Selection.from_rows(rows) if rows else None


# --------------------------------------------------------------------------- links


def share_url(base: str, params: Mapping[str, Any]) -> str:
    """``base`` (scheme, host, page path) plus the non-empty ``params`` as a query string."""
    clean = {k: str(v) for k, v in params.items() if v is not None and str(v) != ""}
    base = base.split("?", 1)[0].split("#", 1)[0]
    return base + ("?" + urlencode(clean) if clean else "")


def page_base_url(
    *, public_url: str | None, context_url: str | None, host: str | None, page_path: str
) -> str:
    """The link's base: SHOAL_PUBLIC_URL + page, else the browser's URL, else the Host header."""
    page_path = page_path.strip("/")
    if public_url:
        return public_url.rstrip("/") + ("/" + page_path if page_path else "")
    if context_url:
        return context_url.split("?", 1)[0]
    root = f"http://{host}" if host else "http://localhost:8501"
    return root + ("/" + page_path if page_path else "")


# --------------------------------------------------------------------------- colourings


@dataclass(frozen=True)
class Colouring:
    """How to colour the map: categories (codes into ``categories``) or continuous ``values``.

    codes: (n,) int32, -1 for missing. values: (n,) float32, NaN for missing.
    """

    name: str
    kind: str  # "categorical" | "continuous" | "none"
    codes: np.ndarray | None = None
    categories: tuple[str, ...] = ()
    values: np.ndarray | None = None
    description: str = ""
    colours: tuple[tuple[str, str], ...] = ()  # (category, colour) overrides, e.g. reference grey

    @classmethod
    def categorical(
        cls,
        name: str,
        values: Sequence[Any] | np.ndarray,
        *,
        description: str = "",
        colours: Mapping[str, str] | None = None,
    ) -> Colouring:
        series = pd.Series(np.asarray(values, dtype=object), dtype=object)
        missing = (series.isna() | (series.astype(str) == "")).to_numpy()
        text = series.astype(str)
        counts = text[~missing].value_counts()
        kept = list(counts.index[:MAX_CATEGORIES])
        if len(counts) > MAX_CATEGORIES:
            kept = kept[: MAX_CATEGORIES - 1]
        ordered = sorted(kept, key=_natural_key)
        lookup = {value: code for code, value in enumerate(ordered)}
        other = len(ordered) if len(counts) > len(ordered) else None
        fallback = other if other is not None else -1
        codes = np.fromiter(
            (lookup.get(v, fallback) for v in text.tolist()), dtype=np.int32, count=len(text)
        )
        codes[missing] = -1
        categories = tuple(ordered) + (("other",) if other is not None else ())
        return cls(
            name=name,
            kind="categorical",
            codes=codes,
            categories=categories,
            description=description,
            colours=tuple((colours or {}).items()),
        )

    @classmethod
    def continuous(
        cls, name: str, values: Sequence[float] | np.ndarray, *, description: str = ""
    ) -> Colouring:
        return cls(
            name=name,
            kind="continuous",
            values=np.asarray(values, dtype=np.float32),
            description=description,
        )


def _natural_key(text: str) -> tuple[Any, ...]:
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text))


def metadata_colourings(
    samples: pd.DataFrame, *, max_categories: int = 200
) -> dict[str, Colouring]:
    """Colourings from the samples table: label, split, prediction, correct, and user columns.

    Columns with more than ``max_categories`` distinct values colour as numbers when numeric
    and are skipped otherwise (an id-like column says nothing as a colour).
    """
    out: dict[str, Colouring] = {}
    skip = {"sample_id", "source", "path", *OBJECT_GEOMETRY}
    for column in samples.columns:
        if column in skip or samples[column].isna().all():
            continue
        series = samples[column]
        if pd.api.types.is_bool_dtype(series):
            out[column] = Colouring.categorical(column, series.map({True: "yes", False: "no"}))
        elif pd.api.types.is_numeric_dtype(series) and series.nunique() > 12:
            out[column] = Colouring.continuous(
                column, series.to_numpy(dtype=np.float64, na_value=np.nan)
            )
        elif column == "status":
            out[column] = Colouring.categorical(
                column,
                series,
                description="tp = matched prediction, fp = unmatched prediction, fn = missed label",
                colours=STATUS_COLOURS,
            )
        elif series.nunique() <= max_categories:
            out[column] = Colouring.categorical(column, series)
    if "prediction" in samples and "label" in samples:
        known = samples["prediction"].notna() & samples["label"].notna()
        same = (samples["prediction"].astype(str) == samples["label"].astype(str)).to_numpy()
        correct = np.full(len(samples), None, dtype=object)
        correct[known.to_numpy() & same] = "correct"
        correct[known.to_numpy() & ~same] = "incorrect"
        out["correct"] = Colouring.categorical(
            "correct", correct, description="prediction == label"
        )
    return out


# --------------------------------------------------------------------------- the scatter payload


@dataclass(frozen=True)
class ScatterPayload:
    """A plotly figure (as a dict) and how its points map back to rows.

    trace_rows[t]: row numbers of the points of trace t, in trace order. drawn: total points
    drawn; n_points: points in the data set (drawn < n_points when thinned out).
    """

    figure: dict[str, Any]
    trace_rows: tuple[np.ndarray, ...]
    drawn: int
    n_points: int

    @property
    def thinned(self) -> bool:
        return self.drawn < self.n_points

    def to_json(self) -> str:
        """The figure JSON exactly as st.plotly_chart sends it (validated: arrays become typed arrays)."""
        import plotly.io
        import plotly.tools

        figure = plotly.tools.return_figure_from_figure_or_data(self.figure, validate_figure=True)
        return plotly.io.to_json(figure, validate=False)


def drawn_rows(
    n_points: int,
    *,
    max_points: int = MAX_DRAWN_POINTS,
    keep: np.ndarray | None = None,
    random_state: int = 0,
) -> np.ndarray:
    """Sorted rows to draw: all of them, or a fixed random ``max_points`` plus the ``keep`` rows."""
    if n_points <= max_points:
        return np.arange(n_points)
    rng = np.random.default_rng(random_state)
    chosen = rng.choice(n_points, size=max_points, replace=False)
    if keep is not None and len(keep):
        chosen = np.union1d(chosen, np.asarray(keep, dtype=np.int64))
    return np.sort(chosen)


def build_scatter(
    coords: np.ndarray,
    colouring: Colouring | None = None,
    *,
    hover_text: Sequence[str] | np.ndarray | None = None,
    hover_prefix: str = "",
    selected_rows: np.ndarray | None = None,
    max_points: int = MAX_DRAWN_POINTS,
    marker_size: float | None = None,
    height: int = 620,
    random_state: int = 0,
) -> ScatterPayload:
    """A WebGL scatter of ``coords`` (n, 2) coloured by ``colouring``, ready for st.plotly_chart.

    Coordinates travel as float32 typed arrays (plotly's ``bdata``), so 100k points cost about
    0.8 MB plus the hover text (shown after ``hover_prefix``; the colour's value is added by the
    template, once per trace). ``selected_rows`` are highlighted (others dimmed) and always drawn.
    """
    coords = np.asarray(coords, dtype=np.float32)
    n_points = len(coords)
    rows = drawn_rows(
        n_points, max_points=max_points, keep=selected_rows, random_state=random_state
    )
    size = marker_size or (7 if len(rows) < 2_000 else 5 if len(rows) < 20_000 else 3)
    selected_mask = None
    if selected_rows is not None and len(selected_rows):
        selected_mask = np.zeros(n_points, dtype=bool)
        selected_mask[np.asarray(selected_rows, dtype=np.int64)] = True
    text = None if hover_text is None else np.asarray(hover_text, dtype=object)
    if colouring is None or colouring.kind == "none":
        colour_line = ""
    elif colouring.kind == "categorical":
        colour_line = f"<br>{colouring.name}: %{{fullData.name}}"
    else:
        colour_line = f"<br>{colouring.name}: %{{marker.color:.3g}}"
    # customdata, not text: scattergl prepares text labels for a `text` array (slower first draw).
    hover_template = (
        (f"{hover_prefix}%{{customdata}}" if text is not None else "")
        + colour_line
        + "<extra></extra>"
    )
    traces: list[dict[str, Any]] = []
    trace_rows: list[np.ndarray] = []

    def add_trace(members: np.ndarray, **extra: Any) -> None:
        trace: dict[str, Any] = {
            "type": "scattergl",
            "mode": "markers",
            "x": coords[members, 0],
            "y": coords[members, 1],
            "marker": {"size": size, **extra.pop("marker", {})},
            "hovertemplate": hover_template,
            **extra,
        }
        if text is not None:
            trace["customdata"] = text[members].tolist()
        if selected_mask is not None:
            trace["selectedpoints"] = np.flatnonzero(selected_mask[members]).tolist()
            trace["unselected"] = {"marker": {"opacity": 0.15}}
        traces.append({k: v for k, v in trace.items() if v is not None})
        trace_rows.append(members)

    layout: dict[str, Any] = {
        "height": height,
        "margin": {"l": 10, "r": 10, "t": 10, "b": 10},
        "dragmode": "select",
        "hovermode": "closest",
        "xaxis": {"showticklabels": False, "title": None, "zeroline": False, "showgrid": False},
        "yaxis": {"showticklabels": False, "title": None, "zeroline": False, "showgrid": False},
        "legend": {"itemsizing": "constant"},
        "uirevision": "keep",
    }
    if colouring is None or colouring.kind == "none":
        add_trace(rows, name="samples", marker={"color": CATEGORY_COLOURS[0]})
        layout["showlegend"] = False
    elif colouring.kind == "categorical":
        assert colouring.codes is not None
        codes = colouring.codes[rows]
        overrides = dict(colouring.colours)
        for code, category in enumerate(colouring.categories):
            members = rows[codes == code]
            if len(members):
                if category in overrides:
                    colour = overrides[category]
                elif category == "other" and code == len(colouring.categories) - 1:
                    colour = OTHER_COLOUR
                else:
                    colour = CATEGORY_COLOURS[code % len(CATEGORY_COLOURS)]
                add_trace(members, name=category, marker={"color": colour})
        missing = rows[codes < 0]
        if len(missing):
            add_trace(missing, name="(missing)", marker={"color": OTHER_COLOUR})
        layout["legend"]["title"] = {"text": colouring.name}
    else:
        assert colouring.values is not None
        values = colouring.values[rows]
        finite = np.isfinite(values)
        if finite.any():
            add_trace(
                rows[finite],
                name=colouring.name,
                marker={
                    "color": values[finite].astype(np.float32),
                    "colorscale": "Viridis",
                    "showscale": True,
                    "colorbar": {"title": {"text": colouring.name}, "thickness": 12},
                },
            )
        if (~finite).any():
            add_trace(rows[~finite], name="(missing)", marker={"color": OTHER_COLOUR})
        layout["showlegend"] = False
    return ScatterPayload(
        figure={"data": traces, "layout": layout},
        trace_rows=tuple(trace_rows),
        drawn=len(rows),
        n_points=n_points,
    )


def hover_lines(
    samples: pd.DataFrame,
    *,
    columns: Sequence[str] = (),
    extra: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """One hover string per row: id, label, then the given columns and extra values (rounded).

    Object rows (an ``object_id`` column) show the object id, its category, kind and status.
    """
    parts = [("id", row_ids(samples).astype(str))]
    for column in ("category", "kind", "status", "label", "split", *columns):
        if column in samples and column not in dict(parts) and samples[column].notna().any():
            parts.append(
                (column, samples[column].astype(str).where(samples[column].notna(), "—").to_numpy())
            )
    for name, values in (extra or {}).items():
        values = np.asarray(values)
        shown = (
            np.char.mod("%.3g", values.astype(np.float64))
            if values.dtype.kind == "f"
            else values.astype(str)
        )
        parts.append((name, shown))
    lines = np.char.add(np.char.add(parts[0][0] + ": ", parts[0][1].astype(str)), "")
    for name, values in parts[1:]:
        lines = np.char.add(np.char.add(lines, f"<br>{name}: "), np.asarray(values, dtype=str))
    return lines.astype(object)


#: Up to this many points the hover shows id, label, split and key metadata; above, the id only
#: (each extra line costs about 20 bytes a point in the payload).
RICH_HOVER_MAX_POINTS = 20_000


def hover_for(
    samples: pd.DataFrame, *, max_rich: int = RICH_HOVER_MAX_POINTS
) -> tuple[np.ndarray, str]:
    """(hover text per row, prefix) as the map uses them: rich for small sets, the id for large."""
    if len(samples) <= max_rich:
        columns = [c for c in ("prediction", "confidence", "score", "iou") if c in samples]
        return hover_lines(samples, columns=columns), ""
    return row_ids(samples).astype(object), "id: "


def row_ids(samples: pd.DataFrame) -> np.ndarray:
    """The id of each row: ``object_id`` for a table of objects, else ``sample_id``; (n,) str."""
    column = "object_id" if "object_id" in samples else "sample_id"
    return samples[column].astype(str).to_numpy()


# --------------------------------------------------------------------------- tables and exports


def rows_table(
    samples: pd.DataFrame, rows: Sequence[int] | np.ndarray, **extra: Sequence[Any] | np.ndarray
) -> pd.DataFrame:
    """The samples at ``rows`` (metadata columns, stored paths dropped) plus named extra columns."""
    rows = np.asarray(rows, dtype=np.int64)
    table = (
        samples.iloc[rows]
        .drop(columns=[c for c in ("path",) if c in samples])
        .reset_index(drop=True)
    )
    for name, values in extra.items():
        table[name] = np.asarray(values)
    return table


def to_csv_bytes(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False).encode()


def describe_rows(
    samples: pd.DataFrame, row: int, *, columns: Sequence[str] = (), limit: int = 6
) -> list[str]:
    """Short "key: value" lines for one sample (for captions and for samples without images)."""
    record = samples.iloc[int(row)]
    names = ["object_id", "category", "kind", "status", "sample_id", "label", "split", "prediction"]
    names += list(columns)
    names += [c for c in samples.columns if c not in names and c not in ("source", "path")]
    lines: list[str] = []
    for name in dict.fromkeys(names):
        if name in record.index and pd.notna(record[name]) and len(lines) < limit:
            value = record[name]
            lines.append(f"{name}: {value:.3g}" if isinstance(value, float) else f"{name}: {value}")
    return lines


def tile_caption(samples: pd.DataFrame, row: int) -> list[str]:
    """Two short lines under a thumbnail: "label · split" (what is known) and the row's id.

    Objects: "category · kind · status" (and the detector's score) and the object id.
    """
    record = samples.iloc[int(row)]
    fields = ("category", "kind", "status") if "object_id" in record.index else ("label", "split")
    known = [str(record[c]) for c in fields if c in record.index and pd.notna(record[c])]
    if "prediction" in record.index and pd.notna(record["prediction"]):
        known.append(f"pred {record['prediction']}")
    if "object_id" in record.index and "score" in record.index and pd.notna(record["score"]):
        known.append(f"score {record['score']:.2f}")
    identity = str(record["object_id" if "object_id" in record.index else "sample_id"])
    return [" · ".join(known), identity] if known else [identity]


# --------------------------------------------------------------------------- thumbnails


def thumbnail_path(workspace: Workspace, image: Path, *, size: int = THUMBNAIL_SIZE) -> Path:
    """Where the JPEG thumbnail of a stored image lives (images are content-addressed, so is this)."""
    image = Path(image)
    digest = (
        image.stem
        if re.fullmatch(r"[0-9a-f]{64}", image.stem)
        else hashlib.sha256(str(image).encode()).hexdigest()
    )
    return workspace.root / ".cache" / "thumbnails" / f"sq{size}" / digest[:2] / f"{digest}.jpg"


def thumbnail(workspace: Workspace, image: Path, *, size: int = THUMBNAIL_SIZE) -> bytes:
    """A ``size`` x ``size`` JPEG of ``image`` (fitted, padded white), made once and cached on disk."""
    target = thumbnail_path(workspace, image, size=size)
    if target.exists():
        return target.read_bytes()
    from PIL import Image

    with Image.open(image) as opened:
        opened.draft("RGB", (size * 2, size * 2))  # JPEG: decode at reduced scale, much faster
        picture = (
            opened.convert("RGBA") if opened.mode in ("P", "LA", "RGBA") else opened.convert("RGB")
        )
        picture.thumbnail((size, size))
        # A square white tile: galleries line up whatever the images' aspect ratios.
        tile = Image.new("RGB", (size, size), (255, 255, 255))
        offset = ((size - picture.width) // 2, (size - picture.height) // 2)
        tile.paste(
            picture, offset, mask=picture.getchannel("A") if picture.mode == "RGBA" else None
        )
        picture = tile
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=82, optimize=True)
    data = buffer.getvalue()
    try:
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
    except OSError:
        pass  # a read-only workspace still gets its thumbnails, just not cached
    return data


def object_box(samples: pd.DataFrame, row: int) -> tuple[float, float, float, float] | None:
    """The (x0, y0, x1, y1) pixel box of an object row; None for sample rows or missing boxes."""
    if not all(c in samples for c in ("object_id", "x0", "y0", "x1", "y1")):
        return None
    record = samples.iloc[int(row)]
    box = [record[c] for c in ("x0", "y0", "x1", "y1")]
    if any(pd.isna(v) for v in box):
        return None
    return tuple(float(v) for v in box)  # type: ignore[return-value]


def box_thumbnail_path(
    workspace: Workspace,
    image: Path,
    box: Sequence[float],
    *,
    size: int = THUMBNAIL_SIZE,
    margin: float = BOX_MARGIN,
) -> Path:
    """Where the box-crop thumbnail of ``box`` in ``image`` is cached (keyed by image and box)."""
    base = thumbnail_path(workspace, image, size=size)
    key = hashlib.sha256(
        json.dumps([base.stem, [round(float(v), 2) for v in box], margin]).encode()
    ).hexdigest()
    return workspace.root / ".cache" / "thumbnails" / f"box{size}" / key[:2] / f"{key}.jpg"


def box_thumbnail(
    workspace: Workspace,
    image: Path,
    box: Sequence[float],
    *,
    size: int = THUMBNAIL_SIZE,
    margin: float = BOX_MARGIN,
    colour: tuple[int, int, int] = BOX_COLOUR,
) -> bytes:
    """A ``size`` x ``size`` JPEG of one object: its box (x0, y0, x1, y1 in pixels) with
    ``margin`` (a fraction of the box's longer side) of context around it, fitted and padded white,
    and the box outlined in ``colour``. Made once and cached on disk like :func:`thumbnail`."""
    target = box_thumbnail_path(workspace, image, box, size=size, margin=margin)
    if target.exists():
        return target.read_bytes()
    from PIL import Image, ImageDraw

    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    pad = margin * max(x1 - x0, y1 - y0, 1.0)
    with Image.open(image) as opened:
        picture = opened.convert("RGB")
    left = int(np.clip(np.floor(x0 - pad), 0, picture.width - 1))
    top = int(np.clip(np.floor(y0 - pad), 0, picture.height - 1))
    right = int(np.clip(np.ceil(x1 + pad), left + 1, picture.width))
    bottom = int(np.clip(np.ceil(y1 + pad), top + 1, picture.height))
    crop = picture.crop((left, top, right, bottom))
    scale = min(size / crop.width, size / crop.height)
    fitted = crop.resize(
        (max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
        Image.Resampling.LANCZOS,
    )
    tile = Image.new("RGB", (size, size), (255, 255, 255))
    offset = ((size - fitted.width) // 2, (size - fitted.height) // 2)
    tile.paste(fitted, offset)
    # The box in tile coordinates, clipped to the crop (a box may run off the image).
    corners = [
        offset[0] + (np.clip(x0, left, right) - left) * scale,
        offset[1] + (np.clip(y0, top, bottom) - top) * scale,
        offset[0] + (np.clip(x1, left, right) - left) * scale - 1,
        offset[1] + (np.clip(y1, top, bottom) - top) * scale - 1,
    ]
    corners[2], corners[3] = max(corners[2], corners[0]), max(corners[3], corners[1])
    ImageDraw.Draw(tile).rectangle(corners, outline=colour, width=max(2, size // 80))
    buffer = io.BytesIO()
    tile.save(buffer, format="JPEG", quality=85, optimize=True, subsampling=0)  # crisp box edge
    data = buffer.getvalue()
    try:
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
    except OSError:
        pass  # a read-only workspace still gets its thumbnails, just not cached
    return data


# --------------------------------------------------------------------------- uploads


class Upload(Protocol):
    """What Streamlit's UploadedFile offers that we use."""

    name: str

    def getbuffer(self) -> memoryview: ...


IMPORT_MODES = {
    "images": "Images: files, a folder, or a .zip (class from sub-folder names)",
    "manifest": "A CSV/Parquet manifest + the images it names",
    "embeddings": "An embeddings file for an existing dataset",
    "embeddings_only": "Embeddings + metadata, no images",
}


def safe_relative_path(name: str) -> PurePosixPath | None:
    """A browser-given file name as a relative path that stays inside its folder, or None."""
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".", "/")]
    if not parts or any(p == ".." or ":" in p or p.startswith("/") for p in parts):
        return None
    if any(ord(ch) < 32 for p in parts for ch in p):
        return None
    return PurePosixPath(*parts)


def save_uploads(files: Iterable[Upload], target: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Write uploaded files under ``target`` at once; return (written paths, [(name, reason)] refused)."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    written, refused = [], []
    for upload in files:
        relative = safe_relative_path(upload.name)
        if relative is None:
            refused.append(
                (upload.name, "unsafe file name (absolute, '..' or control characters); skipped")
            )
            continue
        destination = target.joinpath(*relative.parts)
        if destination.exists():
            refused.append((upload.name, "another uploaded file has the same name; skipped"))
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        with open(destination, "wb") as handle:
            handle.write(upload.getbuffer())
        written.append(destination)
    return written, refused


def upload_dir(workspace: Workspace) -> Path:
    """A fresh private folder for one upload, on the workspace's filesystem."""
    base = workspace.root / ".uploads"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="upload-", dir=base))


@dataclass
class UploadOutcome:
    """What an upload did: the dataset touched, the import report, and the embedding set added."""

    dataset: str
    report: dict[str, Any] = field(default_factory=dict)
    embedding: str | None = None


def import_uploads(
    workspace: Workspace,
    folder: Path,
    files: Sequence[Path],
    *,
    mode: str,
    dataset: str,
    split: str | None = None,
    embedding_name: str = "user",
    refused: Sequence[tuple[str, str]] = (),
    progress: Any = None,
) -> UploadOutcome:
    """Import files already written under ``folder`` according to ``mode`` (see IMPORT_MODES).

    Refused uploads (unsafe names) are added to the report's rejected list, so the user sees
    every file that did not make it and why.
    """
    from shoal.ingest.embeddings import add_embeddings, create_from_embeddings
    from shoal.ingest.images import ImportError_, import_manifest, import_source

    files = [Path(f) for f in files]
    tables = [f for f in files if f.suffix.lower() in (".csv", ".parquet", ".pq")]
    arrays = [f for f in files if f.suffix.lower() == ".npy"]
    if mode == "images":
        zips = [f for f in files if f.suffix.lower() == ".zip"]
        if len(zips) == 1 and len(files) == 1:
            report = import_source(
                workspace,
                zips[0],
                dataset=dataset,
                split=split,
                progress=progress,
                display_name=zips[0].name,
            )
        elif zips:
            raise ImportError_(
                "upload one .zip on its own, or image files and folders without a .zip"
            )
        else:
            report = import_source(
                workspace, folder, dataset=dataset, split=split, progress=progress
            )
        outcome = UploadOutcome(dataset=dataset, report=report.to_dict())
    elif mode == "manifest":
        if len(tables) != 1:
            raise ImportError_(
                f"upload exactly one .csv/.parquet manifest with its images (got {len(tables)} tables)"
            )
        report = import_manifest(
            workspace, tables[0], dataset=dataset, split=split, progress=progress
        )
        outcome = UploadOutcome(dataset=dataset, report=report.to_dict())
    elif mode == "embeddings":
        embeddings_file = _one_embeddings_file(files, arrays, tables)
        ids_file = next(
            (
                f
                for f in files
                if f != embeddings_file and f.suffix.lower() in (".txt", ".csv", ".npy")
            ),
            None,
        )
        ds = workspace.open(dataset)
        info = add_embeddings(ds, embeddings_file, name=embedding_name, ids_file=ids_file)
        outcome = UploadOutcome(
            dataset=dataset,
            report={
                "dataset": dataset,
                "source": embeddings_file.name,
                "imported": info.count,
                "rejected": [],
            },
            embedding=info.name,
        )
    elif mode == "embeddings_only":
        embeddings_file = _one_embeddings_file(files, arrays, tables, prefer_metadata=True)
        metadata = next((f for f in tables if f != embeddings_file), None)
        report = create_from_embeddings(
            workspace, dataset, embeddings_file, metadata_file=metadata, name=embedding_name
        )
        outcome = UploadOutcome(dataset=dataset, report=report.to_dict(), embedding=embedding_name)
    else:
        raise ValueError(f"unknown import mode {mode!r}; one of {sorted(IMPORT_MODES)}")
    if refused:
        outcome.report.setdefault("rejected", [])
        outcome.report["rejected"] = [
            *({"file": n, "reason": r} for n, r in refused),
            *outcome.report["rejected"],
        ]
        if workspace.exists(dataset):
            ds = workspace.open(dataset)
            stored = ds.import_report()
            if stored is not None and mode != "embeddings":
                ds.write_import_report({**stored, "rejected": outcome.report["rejected"]})
    return outcome


def _one_embeddings_file(
    files: list[Path], arrays: list[Path], tables: list[Path], *, prefer_metadata: bool = False
) -> Path:
    from shoal.ingest.images import ImportError_

    if len(arrays) == 1:
        return arrays[0]
    parquet = [f for f in tables if f.suffix.lower() in (".parquet", ".pq")]
    candidates = parquet if prefer_metadata and len(tables) == 2 and len(parquet) == 1 else tables
    if len(candidates) == 1 and not arrays:
        return candidates[0]
    if prefer_metadata and len(tables) == 2 and not arrays:
        # Two tables: the wider one holds the vectors, the other the metadata.
        widths = [
            len(pd.read_csv(t, nrows=1).columns)
            if t.suffix.lower() == ".csv"
            else _parquet_width(t)
            for t in tables
        ]
        return tables[int(np.argmax(widths))]
    raise ImportError_(
        "upload one embeddings file (.npy, .parquet or .csv)"
        + (" and optionally one metadata table" if prefer_metadata else "")
        + f"; got {', '.join(f.name for f in files) or 'nothing'}"
    )


def _parquet_width(path: Path) -> int:
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    return sum(
        1 if not str(f.type).startswith(("list", "fixed_size_list", "large_list")) else 10_000
        for f in schema
    )


def discard_upload(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def suggest_dataset_name(names: Sequence[str], existing: Iterable[str]) -> str:
    """A valid, unused dataset name from the first uploaded file's name."""
    stem = Path(names[0]).stem if names else "dataset"
    stem = (
        PurePosixPath(names[0].replace("\\", "/")).parts[0] if names and "/" in names[0] else stem
    )
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:48] or "dataset"
    if not base[0].isalnum():
        base = "d" + base
    taken = set(existing)
    candidate, number = base, 2
    while candidate in taken:
        candidate, number = f"{base}-{number}", number + 1
    return candidate


# --------------------------------------------------------------------------- small formatting


def format_seconds(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "—"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def progress_caption(
    done: int, total: int, rate: float | None, eta_seconds: float | None, unit: str
) -> str:
    """'120 / 355 images · 41.3 images/s · ETA 6s' for a job's progress."""
    parts = [f"{done:,} / {total:,} {unit}" if total else f"{done:,} {unit}"]
    if rate:
        parts.append(f"{rate:,.1f} {unit}/s")
    if total and done < total:
        parts.append(f"ETA {format_seconds(eta_seconds)}")
    return " · ".join(parts)


def env_flag(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None
