"""The maps' scatters: colourings from metadata and the binary WebGL payload of the maps.

The Map and Compare pages draw every point in the browser (pages/_map_component.py,
regl-scatterplot) from :func:`encode_map_payload`: coordinates normalised to [-1, 1] as float32
and one uint8 colour code a point, about 9 bytes a point. :func:`build_scatter` is the Plotly
scattergl figure the Map drew before (one trace per category, above ``max_points`` a fixed
random subset); no page uses it now, benchmarks/bench_view.py measures it as the baseline.

Example:
    >>> colouring = Colouring.categorical("label", ["cat", "dog", "cat"])
    >>> build_scatter(np.zeros((3, 2)), colouring).trace_rows
    (array([0, 2]), array([1]))
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from shoal.app.tables import row_ids

#: Draw at most this many points; above it a fixed random subset is drawn (and the page says so).
MAX_DRAWN_POINTS = 150_000
#: Categorical colourings with more values than this group the rarest into "other".
MAX_CATEGORIES = 24
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

    def take(self, rows: np.ndarray) -> Colouring:
        """The colouring of ``rows`` alone (a map drawn for a subset, e.g. a collection)."""
        rows = np.asarray(rows, dtype=np.int64)
        return replace(
            self,
            codes=None if self.codes is None else self.codes[rows],
            values=None if self.values is None else self.values[rows],
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


# --------------------------------------------------------------------------- the WebGL map payload

#: Plotly's Viridis stops; continuous colourings are quantised onto CONTINUOUS_LEVELS steps of it.
VIRIDIS = (
    "#440154", "#482878", "#3E4989", "#31688E", "#26828E",
    "#1F9E89", "#35B779", "#6ECE58", "#B5DE2B", "#FDE725",
)  # fmt: skip
#: Colour codes travel as uint8: up to 255 levels of a continuous colouring, 255 is "missing".
CONTINUOUS_LEVELS = 255
MAP_MAGIC = b"SHM1"


@dataclass(frozen=True)
class MapFrame:
    """How data coordinates map onto the [-1, 1] square the browser draws in (aspect kept).

    normalised = (coords - centre) / half_extent; ``to_data`` inverts it.
    """

    centre_x: float
    centre_y: float
    half_extent: float

    @classmethod
    def fit(cls, coords: np.ndarray) -> MapFrame:
        """The frame that puts every finite point of ``coords`` (n, 2) inside [-0.98, 0.98]."""
        coords = np.asarray(coords, dtype=np.float64)
        finite = coords[np.isfinite(coords).all(axis=1)]
        if not len(finite):
            return cls(0.0, 0.0, 1.0)
        low, high = finite.min(axis=0), finite.max(axis=0)
        half = float(max(high[0] - low[0], high[1] - low[1])) / 2 / 0.98
        return cls(
            float(low[0] + high[0]) / 2, float(low[1] + high[1]) / 2, half if half > 0 else 1.0
        )

    def normalise(self, coords: np.ndarray) -> np.ndarray:
        """(n, 2) float32 in [-1, 1]: what the browser draws (and selects against)."""
        coords = np.asarray(coords, dtype=np.float64)
        centre = np.array([self.centre_x, self.centre_y])
        return ((coords - centre) / self.half_extent).astype(np.float32)

    def to_data(self, points: np.ndarray) -> np.ndarray:
        """Normalised (k, 2) points (a drawn polygon) back in data coordinates."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return points * self.half_extent + np.array([self.centre_x, self.centre_y])

    def from_data(self, points: np.ndarray) -> np.ndarray:
        """Data-coordinate (k, 2) points (a polygon from a link) in the normalised square."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return (points - np.array([self.centre_x, self.centre_y])) / self.half_extent


def ramp(stops: Sequence[str], levels: int) -> list[str]:
    """``levels`` hex colours evenly interpolated along the hex ``stops``."""
    rgb = np.array([[int(s[i : i + 2], 16) for i in (1, 3, 5)] for s in stops], dtype=np.float64)
    at = np.linspace(0, len(stops) - 1, levels)
    channels = [np.interp(at, np.arange(len(stops)), rgb[:, c]) for c in range(3)]
    return [
        "#{:02X}{:02X}{:02X}".format(*(int(round(ch[i])) for ch in channels)) for i in range(levels)
    ]


def map_colours(
    colouring: Colouring | None, n_points: int
) -> tuple[np.ndarray, list[str], dict[str, Any] | None]:
    """(codes (n,) uint8, palette of hex colours indexed by code, legend or None).

    Categories keep the colours the Plotly map gave them (overrides, "other" grey); missing
    values get a grey code of their own. A continuous colouring is quantised onto
    ``CONTINUOUS_LEVELS`` Viridis steps between its finite min and max; NaN is grey.
    """
    if colouring is None or colouring.kind == "none":
        return np.zeros(n_points, dtype=np.uint8), [CATEGORY_COLOURS[0]], None
    if colouring.kind == "categorical":
        assert colouring.codes is not None
        overrides = dict(colouring.colours)
        palette: list[str] = []
        for code, category in enumerate(colouring.categories):
            if category in overrides:
                palette.append(overrides[category])
            elif category == "other" and code == len(colouring.categories) - 1:
                palette.append(OTHER_COLOUR)
            else:
                palette.append(CATEGORY_COLOURS[code % len(CATEGORY_COLOURS)])
        missing_code = len(palette)
        palette.append(OTHER_COLOUR)
        source = np.asarray(colouring.codes)
        codes = np.where(source < 0, missing_code, source).astype(np.uint8)
        counts = np.bincount(codes, minlength=len(palette))
        items = [
            [category, palette[code], int(counts[code])]
            for code, category in enumerate(colouring.categories)
            if counts[code]
        ]
        if counts[missing_code]:
            items.append(["(missing)", OTHER_COLOUR, int(counts[missing_code])])
        return codes, palette, {"kind": "categorical", "title": colouring.name, "items": items}
    assert colouring.values is not None
    values = np.asarray(colouring.values, dtype=np.float64)
    finite = np.isfinite(values)
    codes = np.full(n_points, CONTINUOUS_LEVELS, dtype=np.uint8)
    low = float(values[finite].min()) if finite.any() else 0.0
    high = float(values[finite].max()) if finite.any() else 1.0
    span = high - low if high > low else 1.0
    scaled = np.clip((values[finite] - low) / span, 0.0, 1.0)
    codes[finite] = np.round(scaled * (CONTINUOUS_LEVELS - 1)).astype(np.uint8)
    palette = ramp(VIRIDIS, CONTINUOUS_LEVELS) + [OTHER_COLOUR]
    legend = {
        "kind": "continuous",
        "title": colouring.name,
        "min": f"{low:.3g}",
        "max": f"{high:.3g}",
        "stops": list(VIRIDIS),
        "missing": int((~finite).sum()),
        "missing_colour": OTHER_COLOUR,
    }
    return codes, palette, legend


def map_point_size(n_points: int) -> float:
    """Pixels per point at the initial zoom (points grow as one zooms in)."""
    return (
        2.0
        if n_points > 300_000
        else 3.0
        if n_points > 50_000
        else 4.0
        if n_points > 5_000
        else 6.0
    )


def map_payload_parts(
    coords: np.ndarray,
    colouring: Colouring | None = None,
    *,
    frame: MapFrame | None = None,
    height: int = 620,
) -> tuple[dict[str, Any], bytes]:
    """(header, body) of the map's binary message; see :func:`encode_map_payload`."""
    import hashlib
    import json

    frame = frame or MapFrame.fit(coords)
    normalised = frame.normalise(coords)
    normalised[~np.isfinite(normalised).all(axis=1)] = 2.0  # off screen, never selected
    n_points = len(normalised)
    codes, palette, legend = map_colours(colouring, n_points)
    body = (
        np.ascontiguousarray(normalised[:, 0], dtype="<f4").tobytes()
        + np.ascontiguousarray(normalised[:, 1], dtype="<f4").tobytes()
        + codes.astype(np.uint8).tobytes()
    )
    digest = hashlib.sha1(body)
    digest.update(json.dumps([palette, legend, height]).encode())
    header = {
        "n": n_points,
        "palette": palette,
        "legend": legend,
        "point_size": map_point_size(n_points),
        "height": height,
        "points_id": digest.hexdigest()[:16],
    }
    return header, body


def encode_map_payload(
    coords: np.ndarray,
    colouring: Colouring | None = None,
    *,
    frame: MapFrame | None = None,
    height: int = 620,
) -> bytes:
    """The map as one binary message for the browser component (pages/_map_component.py).

    Layout: ``MAP_MAGIC``, uint32 header length, header JSON, zero padding to 4 bytes, then
    x float32[n], y float32[n] (normalised by ``frame``), colour code uint8[n]; all little
    endian. About 9 bytes a point: 1M points are 9 MB. The header's ``points_id`` names the
    drawn content (coordinates and colours), so the browser redraws only when it changes.

    Example:
        >>> payload = encode_map_payload(np.zeros((3, 2)))
        >>> payload[:4], len(payload) > 27
        (b'SHM1', True)
    """
    header, body = map_payload_parts(coords, colouring, frame=frame, height=height)
    return with_header(body, header)


def with_header(body: bytes, header: dict[str, Any]) -> bytes:
    """``body`` behind a header (see :func:`encode_map_payload`); cheap, so a page can change
    the header's small fields (selection to show) without re-encoding the points."""
    import json
    import struct

    text = json.dumps(header, separators=(",", ":")).encode()
    padding = b"\0" * ((4 - (8 + len(text)) % 4) % 4)
    return MAP_MAGIC + struct.pack("<I", len(text)) + text + padding + body


def read_map_payload(payload: bytes) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_map_payload`: (header, normalised (n, 2) float32, codes (n,))."""
    import json
    import struct

    if payload[:4] != MAP_MAGIC:
        raise ValueError("not a map payload")
    (length,) = struct.unpack("<I", payload[4:8])
    header = json.loads(payload[8 : 8 + length])
    offset = 8 + length + (4 - (8 + length) % 4) % 4
    n = header["n"]
    xy = np.frombuffer(payload, dtype="<f4", count=2 * n, offset=offset).reshape(2, n).T
    codes = np.frombuffer(payload, dtype=np.uint8, count=n, offset=offset + 8 * n)
    return header, xy, codes
