"""The WebGL map's pure parts: the binary payload (shoal.app.scatter) and what comes back
from the browser (shoal.app.selection): rows as uint32 bytes, shapes as link geometry."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.app.scatter import (
    CONTINUOUS_LEVELS,
    OTHER_COLOUR,
    Colouring,
    MapFrame,
    encode_map_payload,
    map_colours,
    map_payload_parts,
    read_map_payload,
    with_header,
)
from shoal.app.selection import (
    MAX_LINK_LASSO_VERTICES,
    Selection,
    decode_map_rows,
    points_in_polygon,
    polygons_of,
    selection_from_map,
)


def _clusters(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 2)) * [3.0, 1.0] + [50.0, -20.0]).astype(np.float32)


# --------------------------------------------------------------------------- payload


def test_a_million_points_cost_nine_bytes_each_and_round_trip() -> None:
    coords = _clusters(1_000_000)
    labels = np.array(["cat", "dog", "eel"], dtype=object)[np.arange(1_000_000) % 3]
    payload = encode_map_payload(coords, Colouring.categorical("label", labels))
    assert len(payload) < 9 * 1_000_000 + 4_096  # x, y float32 + a uint8 code, a small header
    header, normalised, codes = read_map_payload(payload)
    assert header["n"] == 1_000_000
    assert np.abs(normalised).max() <= 0.98 + 1e-6  # inside the drawn square
    frame = MapFrame.fit(coords)
    np.testing.assert_allclose(frame.to_data(normalised), coords, atol=1e-3)
    assert codes.tolist()[:3] == [0, 1, 2]
    assert [item[0] for item in header["legend"]["items"]] == ["cat", "dog", "eel"]


def test_the_frame_keeps_the_aspect_ratio() -> None:
    frame = MapFrame.fit(np.array([[0.0, 0.0], [10.0, 1.0]]))
    normalised = frame.normalise(np.array([[0.0, 0.0], [10.0, 1.0]]))
    assert np.ptp(normalised[:, 0]) == pytest.approx(1.96, rel=1e-5)
    assert np.ptp(normalised[:, 1]) == pytest.approx(0.196, rel=1e-5)  # not stretched to fill


def test_points_id_changes_with_colours_not_with_the_selection_header() -> None:
    coords = _clusters(500)
    plain, body = map_payload_parts(coords)
    split = Colouring.categorical("split", np.array(["a", "b"] * 250, dtype=object))
    coloured, _ = map_payload_parts(coords, split)
    assert plain["points_id"] != coloured["points_id"]
    with_selection = with_header(body, {**plain, "select": [[[0, 0], [1, 0], [1, 1]]]})
    header, _, _ = read_map_payload(with_selection)
    assert header["points_id"] == plain["points_id"] and header["select"]


def test_missing_categories_and_values_are_grey() -> None:
    colouring = Colouring.categorical("label", ["a", None, "b", ""])
    codes, palette, legend = map_colours(colouring, 4)
    assert palette[codes[1]] == palette[codes[3]] == OTHER_COLOUR
    assert legend is not None and legend["items"][-1] == ["(missing)", OTHER_COLOUR, 2]

    values = Colouring.continuous("score", [0.0, np.nan, 1.0, 0.5])
    codes, palette, legend = map_colours(values, 4)
    assert codes.tolist() == [0, CONTINUOUS_LEVELS, CONTINUOUS_LEVELS - 1, 127]
    assert palette[CONTINUOUS_LEVELS] == OTHER_COLOUR and len(palette) == 256
    assert legend is not None and legend["missing"] == 1 and legend["max"] == "1"


def test_collection_colours_and_status_overrides_are_kept() -> None:
    status = Colouring.categorical("status", ["tp", "fp", "fn"], colours={"tp": "#00FF00"})
    codes, palette, _ = map_colours(status, 3)
    assert palette[codes[0]] == "#00FF00"


def test_non_finite_coordinates_are_drawn_off_screen() -> None:
    coords = np.array([[0.0, 0.0], [np.nan, 1.0], [1.0, 1.0]])
    _, normalised, _ = read_map_payload(encode_map_payload(coords))
    assert np.abs(normalised[1]).min() > 1


# --------------------------------------------------------------------------- back from the browser


def _rows_text(rows: list[int]) -> str:
    return base64.b64encode(np.asarray(rows, dtype="<u4").tobytes()).decode()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 99_999), max_size=300))
def test_rows_decode_sorted_and_unique(rows: list[int]) -> None:
    assert decode_map_rows(_rows_text(rows), n_points=100_000).tolist() == sorted(set(rows))


def test_rows_outside_the_map_or_torn_bytes_are_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        decode_map_rows(_rows_text([3, 10]), n_points=10)
    with pytest.raises(ValueError):
        decode_map_rows(base64.b64encode(b"\x01\x02\x03").decode(), n_points=10)
    assert decode_map_rows("", n_points=10).size == 0


def test_a_hundred_thousand_rows_decode_fast() -> None:
    import time

    rows = np.sort(np.random.default_rng(1).choice(1_000_000, 100_000, replace=False))
    text = base64.b64encode(rows.astype("<u4").tobytes()).decode()
    started = time.perf_counter()
    decoded = decode_map_rows(text, n_points=1_000_000)
    assert time.perf_counter() - started < 0.5
    np.testing.assert_array_equal(decoded, rows)


def test_a_drawn_box_becomes_its_extent_in_data_coordinates() -> None:
    coords = _clusters(20_000)
    frame = MapFrame.fit(coords)
    square = [[-0.2, -0.1], [0.3, -0.1], [0.3, 0.25], [-0.2, 0.25]]
    selection = selection_from_map(square, "box", frame.to_data)
    assert selection is not None and selection.kind == "box"
    # Against all points, in data coordinates, the box selects what the browser's test selects
    # in the normalised square (up to the link's rounding).
    normalised = frame.normalise(coords)
    in_browser = np.flatnonzero(
        points_in_polygon(normalised[:, 0], normalised[:, 1], *np.array(square).T)
    )
    resolved = Selection.from_token(selection.to_token()).resolve(coords)
    assert len(in_browser) > 100
    assert len(np.setxor1d(in_browser, resolved)) <= 2


def test_a_drawn_lasso_is_capped_for_the_link_and_redrawn_from_it() -> None:
    angle = np.linspace(0, 2 * np.pi, 5_000, endpoint=False)
    lasso = np.column_stack([0.5 * np.cos(angle), 0.5 * np.sin(angle)]).tolist()
    frame = MapFrame(10.0, 10.0, 2.0)
    selection = selection_from_map(lasso, "lasso", frame.to_data)
    assert selection is not None and selection.kind == "lasso"
    xs, ys = selection.lassos[0]
    assert len(xs) == MAX_LINK_LASSO_VERTICES
    assert len(selection.to_token()) < 6_000  # fits a link
    (shape,) = polygons_of(Selection.from_token(selection.to_token()))
    back = frame.from_data(shape)
    np.testing.assert_allclose(np.hypot(back[:, 0], back[:, 1]), 0.5, atol=1e-3)


def test_no_shape_means_no_geometry() -> None:
    assert selection_from_map(None, "point", lambda p: p) is None
    assert selection_from_map([[0, 0], [1, 1]], "lasso", lambda p: p) is None
