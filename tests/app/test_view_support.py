"""shoal.view: the app's Streamlit-free rules (link tokens, selections, payloads, thumbnails, uploads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from shoal import view
from shoal.store import Workspace

# --------------------------------------------------------------------------- tokens


@settings(max_examples=200, deadline=None)
@given(
    rows=st.sets(st.integers(min_value=0, max_value=2_000_000), max_size=300), known=st.booleans()
)
def test_row_tokens_round_trip(rows: set[int], known: bool) -> None:
    n_rows = (max(rows) + 1 if rows else 1) if known else None
    token = view.Selection.from_rows(rows, n_rows=n_rows).to_token()
    assert token.startswith("r:") and all(c.isalnum() or c in "-_:" for c in token)
    back = view.Selection.from_token(token)
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
    selection = view.Selection(kind="lasso", boxes=tuple(boxes), lassos=((xs, ys),))
    back = view.Selection.from_token(selection.to_token())
    np.testing.assert_allclose(
        np.array(back.boxes).reshape(-1, 4), np.array(boxes).reshape(-1, 4), atol=6e-5
    )
    np.testing.assert_allclose(back.lassos[0][0], xs, atol=6e-5)
    np.testing.assert_allclose(back.lassos[0][1], ys, atol=6e-5)


def test_thousand_rows_of_a_hundred_thousand_fit_in_a_link() -> None:
    rows = np.random.default_rng(0).choice(100_000, 1_000, replace=False)
    token = view.Selection.from_rows(rows, n_rows=100_000).to_token()
    assert len(token) < 2_000  # about 1.4 bytes per row after delta coding and deflate
    assert view.Selection.from_token(token).rows == tuple(sorted(rows.tolist()))


@pytest.mark.parametrize(
    "token", ["", "x", "r:", "r:!!!!", "g:AAAA", "z:abc", "r:" + "A" * 50, "g:eJyrrgUAAXUA-Q"]
)
def test_garbage_tokens_raise_selection_error(token: str) -> None:
    with pytest.raises(view.SelectionError):
        view.Selection.from_token(token).resolve(np.zeros((5, 2)))


def test_deflate_bomb_in_a_link_is_refused() -> None:
    import base64
    import zlib

    bomb = base64.urlsafe_b64encode(zlib.compress(b"\x00" * (8 << 20), 9)).decode().rstrip("=")
    with pytest.raises(view.SelectionError):
        view.Selection.from_token("r:" + bomb)


def test_row_selection_from_another_dataset_is_refused() -> None:
    token = view.Selection.from_rows([1, 2], n_rows=10).to_token()
    with pytest.raises(view.SelectionError, match="10 samples"):
        view.Selection.from_token(token).resolve(np.zeros((12, 2)), n_rows=12)


# --------------------------------------------------------------------------- geometry


def test_box_and_lasso_select_exactly_the_points_inside() -> None:
    coords = np.random.default_rng(1).uniform(-5, 5, size=(20_000, 2))
    box = view.Selection(kind="box", boxes=((1.0, -2.0, -1.0, 3.0),))  # corners in any order
    inside_box = (
        (coords[:, 0] >= -2) & (coords[:, 0] <= 1) & (coords[:, 1] >= -1) & (coords[:, 1] <= 3)
    )
    assert box.resolve(coords).tolist() == np.flatnonzero(inside_box).tolist()
    # A triangle: the oracle is the barycentric test, independent of the crossing-number kernel.
    a, b, c = np.array([-4.0, -4.0]), np.array([4.0, -3.0]), np.array([0.0, 4.5])
    lasso = view.Selection(kind="lasso", lassos=(((a[0], b[0], c[0]), (a[1], b[1], c[1])),))
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
    payload = view.build_scatter(coords, max_points=5_000)
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
    selection = view.selection_from_event(event, payload.trace_rows)
    assert selection is not None
    selected = selection.resolve(coords)
    truth = np.flatnonzero(
        (coords[:, 0] >= 0) & (coords[:, 0] <= 1) & (coords[:, 1] >= 0) & (coords[:, 1] <= 1)
    )
    assert selected.tolist() == truth.tolist()
    assert len(selected) > 5 * drawn_inside


def test_clicked_points_map_back_to_rows_across_traces() -> None:
    coords = np.arange(20, dtype=np.float32).reshape(10, 2)
    colouring = view.Colouring.categorical("label", list("ababababab"))
    payload = view.build_scatter(coords, colouring)
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
    assert view.selection_from_event(event, payload.trace_rows).rows == (5, 8)
    assert (
        view.selection_from_event(
            {"selection": {"points": [], "box": [], "lasso": []}}, payload.trace_rows
        )
        is None
    )


# --------------------------------------------------------------------------- payload


def test_hundred_thousand_points_payload_under_five_megabytes() -> None:
    rng = np.random.default_rng(3)
    n = 100_000
    samples = pd.DataFrame(
        {"sample_id": [f"{i:012x}" for i in range(n)], "label": rng.choice(list("abcdefghij"), n)}
    )
    colouring = view.metadata_colourings(samples)["label"]
    hover_text, prefix = view.hover_for(samples)
    payload = view.build_scatter(
        rng.normal(size=(n, 2)), colouring, hover_text=hover_text, hover_prefix=prefix
    )
    size = len(payload.to_json().encode())
    assert payload.drawn == n and size < 5 * 1024**2
    figure = json.loads(payload.to_json())
    assert {t["type"] for t in figure["data"]} == {"scattergl"}
    assert "bdata" in figure["data"][0]["x"]  # typed arrays, not a list of numbers
    assert (
        figure["data"][0]["hovertemplate"]
        == "id: %{customdata}<br>label: %{fullData.name}<extra></extra>"
    )


def test_categories_beyond_the_cap_become_other_and_missing_stays_missing() -> None:
    values = [f"c{i}" for i in range(40) for _ in range(40 - i)] + [None] * 5
    colouring = view.Colouring.categorical("many", values)
    assert len(colouring.categories) == view.MAX_CATEGORIES and colouring.categories[-1] == "other"
    assert (colouring.codes == -1).sum() == 5
    assert (colouring.codes == view.MAX_CATEGORIES - 1).sum() == sum(
        40 - i for i in range(view.MAX_CATEGORIES - 1, 40)
    )


def test_metadata_colourings_derive_correctness_and_numeric_scales() -> None:
    samples = pd.DataFrame(
        {
            "sample_id": [str(i) for i in range(30)],
            "source": ["x"] * 30,
            "path": [None] * 30,
            "label": ["cat", "dog", "cat"] * 10,
            "prediction": ["cat", "cat", None] * 10,
            "confidence": np.linspace(0, 1, 30),
        }
    )
    colourings = view.metadata_colourings(samples)
    assert set(colourings) == {"label", "prediction", "confidence", "correct"}
    assert colourings["confidence"].kind == "continuous"
    correct = colourings["correct"]
    names = [None if c < 0 else correct.categories[c] for c in correct.codes[:3]]
    assert names == ["correct", "incorrect", None]


def test_hover_lines_name_id_label_and_extras() -> None:
    samples = pd.DataFrame(
        {"sample_id": ["a1", "b2"], "label": ["cat", None], "split": ["train", "test"]}
    )
    lines = view.hover_lines(samples, extra={"score": np.array([0.123456, 2.0])})
    assert lines.tolist() == [
        "id: a1<br>label: cat<br>split: train<br>score: 0.123",
        "id: b2<br>label: —<br>split: test<br>score: 2",
    ]


# --------------------------------------------------------------------------- links


def test_share_url_prefers_public_url_and_drops_empty_params() -> None:
    base = view.page_base_url(
        public_url="https://shoal.example.org/",
        context_url="http://10.0.0.5:8501/map",
        host=None,
        page_path="map",
    )
    assert base == "https://shoal.example.org/map"
    url = view.share_url(base, {"ds": "pets", "color": "label", "sel": "", "q": None})
    assert url == "https://shoal.example.org/map?ds=pets&color=label"
    assert (
        view.page_base_url(
            public_url=None, context_url="http://h:1/map?x=1", host="h", page_path="map"
        )
        == "http://h:1/map"
    )
    assert (
        view.page_base_url(public_url=None, context_url=None, host="box:8501", page_path="")
        == "http://box:8501"
    )


# --------------------------------------------------------------------------- thumbnails


def test_thumbnails_are_square_jpegs_cached_on_disk(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    image = tmp_path / ("ab" * 32 + ".png")
    picture = Image.new("RGBA", (300, 120), (255, 0, 0, 0))
    picture.paste((0, 0, 255, 255), (100, 20, 200, 100))
    picture.save(image)
    data = view.thumbnail(workspace, image, size=64)
    with Image.open(__import__("io").BytesIO(data)) as thumb:
        assert thumb.format == "JPEG" and thumb.size == (64, 64)
        assert thumb.getpixel((2, 2))[0] > 240  # transparent areas come out white, not black
    cached = view.thumbnail_path(workspace, image, size=64)
    assert cached.exists() and cached.read_bytes() == data
    image.unlink()
    assert view.thumbnail(workspace, image, size=64) == data  # served from the cache


# --------------------------------------------------------------------------- uploads


class _Upload:
    def __init__(self, name: str, data: bytes = b"data"):
        self.name, self._data = name, data

    def getbuffer(self) -> memoryview:
        return memoryview(self._data)


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("cat.jpg", "cat.jpg"),
        ("photos/2024/a.jpg", "photos/2024/a.jpg"),
        ("photos\\win\\b.png", "photos/win/b.png"),
        ("../../etc/passwd", None),
        ("/abs/x.png", "abs/x.png"),
        ("C:/x.png", None),
        ("a/\x00b.png", None),
        ("", None),
    ],
)
def test_safe_relative_path(name: str, safe: str | None) -> None:
    result = view.safe_relative_path(name)
    assert (None if result is None else str(result)) == safe


def test_save_uploads_writes_inside_the_folder_only(tmp_path: Path) -> None:
    folder = tmp_path / "up"
    written, refused = view.save_uploads(
        [
            _Upload("a/b.png", b"1"),
            _Upload("../x.png"),
            _Upload("a/b.png", b"2"),
            _Upload("c.jpg", b"3"),
        ],
        folder,
    )
    assert [p.relative_to(folder).as_posix() for p in written] == ["a/b.png", "c.jpg"]
    assert (folder / "a" / "b.png").read_bytes() == b"1"
    assert [name for name, _ in refused] == ["../x.png", "a/b.png"]
    assert not (tmp_path / "x.png").exists()


def test_suggested_dataset_names_are_valid_and_unused() -> None:
    from shoal.store import validate_name

    assert view.suggest_dataset_name(["My Photos.zip"], []) == "My-Photos"
    assert view.suggest_dataset_name(["pets/cat/1.jpg"], ["pets"]) == "pets-2"
    assert view.suggest_dataset_name(["..zip"], []) == "dataset"
    for name in (
        view.suggest_dataset_name([n], ["x"]) for n in ["_a.png", "ü.zip", "a" * 90 + ".zip"]
    ):
        validate_name(name)


def test_progress_caption() -> None:
    assert (
        view.progress_caption(120, 355, 41.33, 5.7, "images")
        == "120 / 355 images · 41.3 images/s · ETA 6s"
    )
    assert (
        view.progress_caption(355, 355, 40.0, 0.0, "images") == "355 / 355 images · 40.0 images/s"
    )
    assert view.format_seconds(3725) == "1h 02m" and view.format_seconds(None) == "—"
