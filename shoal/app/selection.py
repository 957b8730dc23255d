"""Selections and links: what a teammate's link carries about the points on screen.

A selection travels in the link as a short token: the box or lasso drawn on the map (``g:``, its
shapes in data coordinates, a lasso capped in vertices; opening the link resolves them against
*all* points with a vectorised point-in-polygon), or the selected row numbers, delta-coded and
deflated (``r:``, e.g. a clicked point). The WebGL map sends its selected rows back as base64
uint32 (:func:`decode_map_rows`) and its shape in its normalised space (:func:`selection_from_map`).

Example:
    >>> token = Selection.from_rows([3, 4, 9], n_rows=100).to_token()
    >>> Selection.from_token(token).resolve(np.zeros((100, 2)), n_rows=100).tolist()
    [3, 4, 9]
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import numpy as np

#: Longest selection token kept in a link; a larger selection is shared as its geometry/query.
MAX_TOKEN_CHARS = 6_000
#: A drawn selection holds at most this many shapes and lasso vertices in all. Testing a point
#: against a lasso costs one pass over the points per vertex, so a crafted link with a huge
#: lasso would cost minutes per rerun; a drawn lasso longer than this is thinned evenly.
MAX_SHAPES = 32
MAX_LASSO_VERTICES = 2_000


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
                vertices = sum(len(xs) for xs, _ in lassos)
                if len(boxes) + len(lassos) > MAX_SHAPES or vertices > MAX_LASSO_VERTICES:
                    raise ValueError(
                        f"{len(boxes) + len(lassos)} shapes with {vertices:,} lasso points; a link "
                        f"carries at most {MAX_SHAPES} shapes and {MAX_LASSO_VERTICES:,} points"
                    )
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
    poly_x, poly_y = np.asarray(poly_x, dtype=np.float64), np.asarray(poly_y, dtype=np.float64)
    result = np.zeros(x.shape, dtype=bool)
    count = len(poly_x)
    if count < 3:
        return result
    # Only points inside the polygon's bounding box can be inside it: test those alone.
    candidates = np.flatnonzero(
        (x >= poly_x.min()) & (x <= poly_x.max()) & (y >= poly_y.min()) & (y <= poly_y.max())
    )
    x, y = x[candidates], y[candidates]
    inside = np.zeros(x.shape, dtype=bool)
    for i in range(count):
        xa, ya = poly_x[i], poly_y[i]
        xb, yb = poly_x[(i + 1) % count], poly_y[(i + 1) % count]
        crosses = (ya > y) != (yb > y)
        if not crosses.any():
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = xa + (y - ya) * (xb - xa) / (yb - ya)
        inside ^= crosses & (x < x_cross)
    result[candidates] = inside
    return result


def thin_lasso(
    xs: Sequence[float], ys: Sequence[float], max_vertices: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The lasso with at most ``max_vertices`` vertices, taken evenly along its path."""
    if len(xs) <= max_vertices:
        return tuple(xs), tuple(ys)
    keep = np.linspace(0, len(xs) - 1, max(3, max_vertices)).round().astype(int)
    return tuple(float(xs[i]) for i in keep), tuple(float(ys[i]) for i in keep)


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


# --------------------------------------------------------------------------- the WebGL map

#: A lasso drawn on the map keeps at most this many vertices in a link (about 3 kB of token).
MAX_LINK_LASSO_VERTICES = 256


def decode_map_rows(text: str, *, n_points: int) -> np.ndarray:
    """Rows the map sent back: base64 of a little-endian uint32 array -> sorted unique int64.

    Raises ValueError on a malformed payload or a row outside ``[0, n_points)``.

    Example:
        >>> decode_map_rows(base64.b64encode(np.array([4, 1], "<u4").tobytes()).decode(),
        ...                 n_points=5).tolist()
        [1, 4]
    """
    raw = base64.b64decode(text.encode(), validate=True) if text else b""
    if len(raw) % 4:
        raise ValueError("row bytes are not whole uint32 values")
    rows = np.unique(np.frombuffer(raw, dtype="<u4").astype(np.int64))
    if rows.size and rows[-1] >= n_points:
        raise ValueError(f"row {int(rows[-1])} is outside the map's {n_points:,} points")
    return rows


def selection_from_map(
    polygon: Sequence[Sequence[float]] | None,
    kind: str,
    to_data: Any,
) -> Selection | None:
    """The drawn shape as a link-ready Selection in data coordinates, or None for no shape.

    ``polygon``: the vertices the map reports, in its normalised space; ``to_data`` maps a
    (k, 2) array of them to data coordinates (``MapFrame.to_data``). A box (``kind`` "box",
    four vertices) becomes its extent; a lasso is thinned to ``MAX_LINK_LASSO_VERTICES``.
    """
    if not polygon or len(polygon) < 3:
        return None
    points = np.asarray(to_data(np.asarray(polygon, dtype=np.float64)), dtype=np.float64)
    if not np.isfinite(points).all():
        return None
    if kind == "box":
        x0, y0 = points.min(axis=0)
        x1, y1 = points.max(axis=0)
        return Selection(kind="box", boxes=((float(x0), float(x1), float(y0), float(y1)),))
    xs, ys = thin_lasso(points[:, 0].tolist(), points[:, 1].tolist(), MAX_LINK_LASSO_VERTICES)
    return Selection(kind="lasso", lassos=((xs, ys),))


def polygons_of(selection: Selection) -> list[np.ndarray]:
    """The selection's shapes as closed (k, 2) vertex arrays in data coordinates (a box as its
    four corners), for drawing it again on the map."""
    shapes = [
        np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
        for x0, x1, y0, y1 in selection.boxes
    ]
    shapes += [np.column_stack([xs, ys]).astype(np.float64) for xs, ys in selection.lassos]
    return shapes
