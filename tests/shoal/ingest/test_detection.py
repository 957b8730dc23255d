"""The objects table's matching: the DataFrame wrapper around :func:`shoal.analysis.boxes.match_boxes`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.analysis.boxes import match_boxes
from shoal.ingest.detection import match_counts, match_objects


def _frame(rows: list[tuple], *, scores: bool = False) -> pd.DataFrame:
    columns = ["object_id", "sample_id", "category", "x0", "y0", "x1", "y1"] + (
        ["score"] if scores else []
    )
    return pd.DataFrame(rows, columns=columns)


def test_greedy_matching_goes_by_score_not_by_iou() -> None:
    labels = _frame([("a", "s", "cat", 0, 0, 10, 10)])
    # The better-placed inference has the lower score: the higher score wins the label.
    inferences = _frame(
        [("good", "s", "cat", 0, 0, 10, 10, 0.4), ("rough", "s", "cat", 0, 0, 10, 7, 0.9)],
        scores=True,
    )
    result = match_objects(labels, inferences).set_index("object_id")
    assert result.loc["rough", "status"] == "tp" and result.loc["a", "match_id"] == "rough"
    assert result.loc["good", "status"] == "fp" and result.loc["good", "iou"] == pytest.approx(1.0)


def test_matching_is_class_aware_per_image_and_inclusive_at_the_threshold() -> None:
    labels = _frame(
        [
            ("a", "s1", "cat", 0, 0, 10, 10),
            ("b", "s2", "cat", 0, 0, 10, 10),
            ("c", "s1", "dog", 0, 0, 10, 10),
        ]
    )
    inferences = _frame(
        [
            ("p", "s1", "dog", 0, 0, 10, 10, 0.9),  # matches dog c, not cat a
            ("q", "s1", "cat", 0, 0, 10, 5, 0.8),  # IoU exactly 0.5 with a
            ("r", "s3", "cat", 0, 0, 10, 10, 0.7),
        ],  # an image with no labels
        scores=True,
    )
    result = match_objects(labels, inferences).set_index("object_id")
    assert result["status"].to_dict() == {
        "a": "tp",
        "b": "fn",
        "c": "tp",
        "p": "tp",
        "q": "tp",
        "r": "fp",
    }
    assert result.loc["q", "iou"] == pytest.approx(0.5)
    assert (
        match_objects(labels, inferences, iou_threshold=0.6)
        .set_index("object_id")
        .loc["q", "status"]
        == "fp"
    )
    assert result["kind"].tolist() == ["label"] * 3 + ["inference"] * 3


def test_matching_with_nothing_on_one_side() -> None:
    labels = _frame([("a", "s", "cat", 0, 0, 10, 10)])
    empty = _frame([], scores=True)
    assert match_objects(labels, empty)["status"].tolist() == ["fn"]
    assert match_objects(_frame([]), labels.assign(score=0.5))["status"].tolist() == ["fp"]
    assert len(match_objects(_frame([]), empty)) == 0
    with pytest.raises(ValueError, match="finite"):
        match_objects(labels, labels.assign(score=np.nan))
    with pytest.raises(ValueError, match="iou_threshold"):
        match_objects(labels, empty, iou_threshold=0)
    with pytest.raises(ValueError, match="'score' column"):
        match_objects(labels, labels)


_box = st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(1, 30), st.integers(1, 30))


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(
        st.tuples(st.sampled_from(["s1", "s2"]), st.sampled_from(["cat", "dog"]), _box), max_size=12
    ),
    inferences=st.lists(
        st.tuples(
            st.sampled_from(["s1", "s2"]), st.sampled_from(["cat", "dog"]), _box, st.floats(0, 1)
        ),
        max_size=12,
    ),
)
def test_the_table_says_what_the_kernel_matched(labels: list, inferences: list) -> None:
    label_frame = _frame(
        [(f"l{i}", s, c, x, y, x + w, y + h) for i, (s, c, (x, y, w, h)) in enumerate(labels)]
    )
    inference_frame = _frame(
        [
            (f"p{i}", s, c, x, y, x + w, y + h, score)
            for i, (s, c, (x, y, w, h), score) in enumerate(inferences)
        ],
        scores=True,
    )
    result = match_objects(label_frame, inference_frame).set_index("object_id")
    assert len(result) == len(labels) + len(inferences)
    # The oracle: the kernel with one group per (image, category), coded by hand.
    group = {
        key: code for code, key in enumerate((s, c) for s in ("s1", "s2") for c in ("cat", "dog"))
    }
    coords = ["x0", "y0", "x1", "y1"]
    matches = match_boxes(
        label_frame[coords].to_numpy(float),
        inference_frame[coords].to_numpy(float),
        inference_frame["score"].to_numpy(float),
        label_groups=np.array([group[(s, c)] for s, c, _ in labels], dtype=np.int64),
        inference_groups=np.array([group[(s, c)] for s, c, _, _ in inferences], dtype=np.int64),
    )
    sides = (
        ("label", "l", "p", "fn", matches.label_match, matches.label_iou),
        ("inference", "p", "l", "fp", matches.inference_match, matches.inference_iou),
    )
    for kind, prefix, partner_prefix, miss, partners, ious in sides:
        for i, partner in enumerate(partners):
            row = result.loc[f"{prefix}{i}"]
            assert row["kind"] == kind
            assert row["status"] == ("tp" if partner >= 0 else miss)
            if partner >= 0:
                assert row["match_id"] == f"{partner_prefix}{partner}"
            else:
                assert pd.isna(row["match_id"])
            assert row["iou"] == pytest.approx(ious[i])
    assert match_counts(result.reset_index()) == matches.counts()
    tp = result[result["status"] == "tp"]
    assert tp["match_id"].is_unique
    assert result.loc[result["kind"] == "label", "status"].isin(["tp", "fn"]).all()
    assert result.loc[result["kind"] == "inference", "status"].isin(["tp", "fp"]).all()
