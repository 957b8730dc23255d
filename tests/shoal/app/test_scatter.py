"""shoal.app.scatter's colourings (categories capped, derived columns), and the Plotly baseline
bench_view measures the Map against (benchmarks/plotly_map.py): payload size, hover text."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchmarks.plotly_map import build_scatter, hover_for, hover_lines
from shoal.app.scatter import MAX_CATEGORIES, Colouring, metadata_colourings


def test_hundred_thousand_points_payload_under_five_megabytes() -> None:
    rng = np.random.default_rng(3)
    n = 100_000
    samples = pd.DataFrame(
        {"sample_id": [f"{i:012x}" for i in range(n)], "label": rng.choice(list("abcdefghij"), n)}
    )
    colouring = metadata_colourings(samples)["label"]
    hover_text, prefix = hover_for(samples)
    payload = build_scatter(
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
    colouring = Colouring.categorical("many", values)
    assert len(colouring.categories) == MAX_CATEGORIES and colouring.categories[-1] == "other"
    assert (colouring.codes == -1).sum() == 5
    assert (colouring.codes == MAX_CATEGORIES - 1).sum() == sum(
        40 - i for i in range(MAX_CATEGORIES - 1, 40)
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
    colourings = metadata_colourings(samples)
    assert set(colourings) == {"label", "prediction", "confidence", "correct"}
    assert colourings["confidence"].kind == "continuous"
    correct = colourings["correct"]
    names = [None if c < 0 else correct.categories[c] for c in correct.codes[:3]]
    assert names == ["correct", "incorrect", None]


def test_hover_lines_name_id_label_and_extras() -> None:
    samples = pd.DataFrame(
        {"sample_id": ["a1", "b2"], "label": ["cat", None], "split": ["train", "test"]}
    )
    lines = hover_lines(samples, extra={"score": np.array([0.123456, 2.0])})
    assert lines.tolist() == [
        "id: a1<br>label: cat<br>split: train<br>score: 0.123",
        "id: b2<br>label: —<br>split: test<br>score: 2",
    ]


def test_a_colouring_of_a_subset_keeps_its_categories() -> None:
    colouring = Colouring.categorical("split", ["train", "test", "train", None])
    subset = colouring.take(np.array([1, 3]))
    assert subset.categories == colouring.categories and subset.codes.tolist() == [
        colouring.codes[1],
        -1,
    ]
    values = Colouring.continuous("score", [0.1, 0.2, 0.3]).take(np.array([2]))
    assert values.values.tolist() == pytest.approx([0.3])
