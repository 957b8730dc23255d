"""shoal.app.selection: link tokens round-trip, drawn shapes select every point inside, share links."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.plotly_map import build_scatter, selection_from_event
from shoal.app.scatter import Colouring
from shoal.app.selection import Selection, SelectionError, page_base_url, share_url

# --------------------------------------------------------------------------- tokens


@settings(max_examples=200, deadline=None)
@given(
    rows=st.sets(st.integers(min_value=0, max_value=2_000_000), max_size=300), known=st.booleans()
)
def test_row_tokens_round_trip(rows: set[int], known: bool) -> None:
    n_rows = (max(rows) + 1 if rows else 1) if known else None
    token = Selection.from_rows(rows, n_rows=n_rows).to_token()
    assert token.startswith("r:") and all(c.isalnum() or c in "-_:" for c in token)
    back = Selection.from_token(token)
    assert back.rows == tuple(sorted(rows)) and back.n_rows == n_rows


@settings(max_examples=100, deadline=None)
@given(
    boxes=st.lists(st.tuples(*[st.floats(-1e4, 1e4, allow_nan=False)] * 4), max_size=3),
    lasso=st.lists(
        st.tuples(st.floats(-1e4, 1e4, allow_nan=False), st.floats(-1e4, 1e4, allow_nan=False)),
        min_size=3,
        max_size=60,
    ),
)
def test_shape_tokens_round_trip_to_four_decimals(boxes, lasso) -> None:
    xs, ys = zip(*lasso, strict=True)
    selection = Selection(kind="lasso", boxes=tuple(boxes), lassos=((xs, ys),))
    back = Selection.from_token(selection.to_token())
    np.testing.assert_allclose(
        np.array(back.boxes).reshape(-1, 4), np.array(boxes).reshape(-1, 4), atol=6e-5
    )
    np.testing.assert_allclose(back.lassos[0][0], xs, atol=6e-5)
    np.testing.assert_allclose(back.lassos[0][1], ys, atol=6e-5)


def test_thousand_rows_of_a_hundred_thousand_fit_in_a_link() -> None:
    rows = np.random.default_rng(0).choice(100_000, 1_000, replace=False)
    token = Selection.from_rows(rows, n_rows=100_000).to_token()
    assert len(token) < 2_000  # about 1.4 bytes per row after delta coding and deflate
    assert Selection.from_token(token).rows == tuple(sorted(rows.tolist()))


@pytest.mark.parametrize(
    "token", ["", "x", "r:", "r:!!!!", "g:AAAA", "z:abc", "r:" + "A" * 50, "g:eJyrrgUAAXUA-Q"]
)
def test_garbage_tokens_raise_selection_error(token: str) -> None:
    with pytest.raises(SelectionError):
        Selection.from_token(token).resolve(np.zeros((5, 2)))


def test_deflate_bomb_in_a_link_is_refused() -> None:
    import base64
    import zlib

    bomb = base64.urlsafe_b64encode(zlib.compress(b"\x00" * (8 << 20), 9)).decode().rstrip("=")
    with pytest.raises(SelectionError):
        Selection.from_token("r:" + bomb)


def test_row_selection_from_another_dataset_is_refused() -> None:
    token = Selection.from_rows([1, 2], n_rows=10).to_token()
    with pytest.raises(SelectionError, match="10 samples"):
        Selection.from_token(token).resolve(np.zeros((12, 2)), n_rows=12)


# --------------------------------------------------------------------------- geometry


def test_box_and_lasso_select_exactly_the_points_inside() -> None:
    coords = np.random.default_rng(1).uniform(-5, 5, size=(20_000, 2))
    box = Selection(kind="box", boxes=((1.0, -2.0, -1.0, 3.0),))  # corners in any order
    inside_box = (
        (coords[:, 0] >= -2) & (coords[:, 0] <= 1) & (coords[:, 1] >= -1) & (coords[:, 1] <= 3)
    )
    assert box.resolve(coords).tolist() == np.flatnonzero(inside_box).tolist()
    # A triangle: the oracle is the barycentric test, independent of the crossing-number kernel.
    a, b, c = np.array([-4.0, -4.0]), np.array([4.0, -3.0]), np.array([0.0, 4.5])
    lasso = Selection(kind="lasso", lassos=(((a[0], b[0], c[0]), (a[1], b[1], c[1])),))
    v0, v1, v2 = c - a, b - a, coords - a
    d00, d01, d11 = v0 @ v0, v0 @ v1, v1 @ v1
    d20, d21 = v2 @ v0, v2 @ v1
    denom = d00 * d11 - d01 * d01
    u, v = (d11 * d20 - d01 * d21) / denom, (d00 * d21 - d01 * d20) / denom
    oracle = (u >= 0) & (v >= 0) & (u + v <= 1)
    got = np.zeros(len(coords), bool)
    got[lasso.resolve(coords)] = True
    assert (got != oracle).sum() <= 2  # only points within float error of an edge may differ


def test_selection_on_a_thinned_view_covers_points_not_drawn() -> None:
    coords = np.random.default_rng(2).normal(size=(50_000, 2)).astype(np.float32)
    payload = build_scatter(coords, max_points=5_000)
    assert payload.thinned and payload.drawn == 5_000 and payload.n_points == 50_000
    drawn_inside = sum(
        int(
            (
                (coords[rows, 0] > 0)
                & (coords[rows, 0] < 1)
                & (coords[rows, 1] > 0)
                & (coords[rows, 1] < 1)
            ).sum()
        )
        for rows in payload.trace_rows
    )
    event = {"selection": {"box": [{"x": [0, 1], "y": [0, 1]}], "lasso": [], "points": []}}
    selection = selection_from_event(event, payload.trace_rows)
    assert selection is not None
    selected = selection.resolve(coords)
    truth = np.flatnonzero(
        (coords[:, 0] >= 0) & (coords[:, 0] <= 1) & (coords[:, 1] >= 0) & (coords[:, 1] <= 1)
    )
    assert selected.tolist() == truth.tolist()
    assert len(selected) > 5 * drawn_inside


def test_clicked_points_map_back_to_rows_across_traces() -> None:
    coords = np.arange(20, dtype=np.float32).reshape(10, 2)
    colouring = Colouring.categorical("label", list("ababababab"))
    payload = build_scatter(coords, colouring)
    assert [r.tolist() for r in payload.trace_rows] == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    event = {
        "selection": {
            "points": [
                {"curve_number": 1, "point_index": 2},
                {"curve_number": 0, "point_index": 4},
            ],
            "box": [],
            "lasso": [],
        }
    }
    assert selection_from_event(event, payload.trace_rows).rows == (5, 8)
    assert (
        selection_from_event(
            {"selection": {"points": [], "box": [], "lasso": []}}, payload.trace_rows
        )
        is None
    )


# --------------------------------------------------------------------------- links


def test_share_url_prefers_public_url_and_drops_empty_params() -> None:
    base = page_base_url(
        public_url="https://shoal.example.org/",
        context_url="http://10.0.0.5:8501/map",
        host=None,
        page_path="map",
    )
    assert base == "https://shoal.example.org/map"
    url = share_url(base, {"ds": "pets", "color": "label", "sel": "", "q": None})
    assert url == "https://shoal.example.org/map?ds=pets&color=label"
    assert (
        page_base_url(public_url=None, context_url="http://h:1/map?x=1", host="h", page_path="map")
        == "http://h:1/map"
    )
    assert (
        page_base_url(public_url=None, context_url=None, host="box:8501", page_path="")
        == "http://box:8501"
    )


def test_a_link_with_a_huge_lasso_is_refused_before_any_work() -> None:
    """Regression: a 3 KB link with a 600k-vertex lasso cost minutes of CPU per rerun."""
    import time

    from shoal.app.selection import MAX_LASSO_VERTICES, _pack

    shapes = {"b": [], "l": [[[0] * 600_000, [0] * 600_000]]}
    token = "g:" + _pack(json.dumps(shapes, separators=(",", ":")).encode())
    assert len(token) < 8_000
    started = time.perf_counter()
    with pytest.raises(
        SelectionError, match=f"at most 32 shapes and {MAX_LASSO_VERTICES:,} points"
    ):
        Selection.from_token(token)
    assert time.perf_counter() - started < 2.0


def test_a_long_drawn_lasso_is_thinned_and_still_selects_its_inside() -> None:
    angles = np.linspace(0, 2 * np.pi, 5_000, endpoint=False)
    event = {
        "selection": {
            "box": [],
            "points": [],
            "lasso": [{"x": np.cos(angles).tolist(), "y": np.sin(angles).tolist()}],
        }
    }
    selection = selection_from_event(event, [])
    assert selection is not None and len(selection.lassos[0][0]) <= 2_000
    back = Selection.from_token(selection.to_token())
    coords = np.random.default_rng(0).uniform(-1.2, 1.2, size=(20_000, 2))
    chosen = np.zeros(len(coords), dtype=bool)
    chosen[back.resolve(coords)] = True
    in_circle = np.hypot(coords[:, 0], coords[:, 1]) < 1.0
    assert (chosen == in_circle).mean() > 0.999
