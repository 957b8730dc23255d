"""The Map's Plotly path before the WebGL component, kept as bench_view's baseline.

No page draws with it now (pages/_map_component.py does). It made one scattergl trace per
category with float32 typed arrays and hover text, drew a fixed random subset above
``max_points``, and turned Streamlit's plotly selection event back into a Selection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from shoal.app.scatter import CATEGORY_COLOURS, OTHER_COLOUR, Colouring
from shoal.app.selection import MAX_LASSO_VERTICES, MAX_SHAPES, Selection, thin_lasso
from shoal.app.tables import row_ids

#: Draw at most this many points; above it a fixed random subset is drawn.
MAX_DRAWN_POINTS = 150_000


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
    drawn = [s for s in selection.get("lasso", []) or [] if len(s.get("x", [])) >= 3]
    per_lasso = MAX_LASSO_VERTICES // max(1, len(drawn))
    lassos = tuple(
        thin_lasso([float(v) for v in s["x"]], [float(v) for v in s["y"]], per_lasso) for s in drawn
    )
    if len(boxes) + len(lassos) > MAX_SHAPES:  # the latest shapes: what the user drew last
        boxes, lassos = boxes[-MAX_SHAPES // 2 :], lassos[-MAX_SHAPES // 2 :]
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
