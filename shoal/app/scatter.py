"""The maps' scatters: colourings from metadata and the binary WebGL payload of the maps.

The Map and Compare pages draw every point in the browser (pages/_map_component.py,
regl-scatterplot) from :func:`encode_map_payload`: coordinates normalised to [-1, 1] as float32
and one uint8 colour code a point, about 9 bytes a point. (The Plotly scattergl path the Map
used before lives on as benchmarks/plotly_map.py, bench_view's baseline.)

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
        other = len(ordered) if len(counts) > len(ordered) else None
        fallback = other if other is not None else -1
        # Hash lookups in C (a Python loop took 0.7 s at 1M rows): -1 where not kept.
        codes = pd.Categorical(text, categories=ordered).codes.astype(np.int32)
        codes[codes < 0] = fallback
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
