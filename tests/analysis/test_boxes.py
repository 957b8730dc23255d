"""Box IoU and greedy label-to-inference matching: hand values, edge cases and invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.analysis.boxes import BoxMatches, box_iou, match_boxes

EMPTY = np.zeros((0, 4))


def test_box_iou_against_hand_values() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 5, 10.0]])
    iou = box_iou(boxes, boxes)
    assert iou[0, 1] == pytest.approx(50 / 150)
    assert iou[0, 2] == 0.0 and iou[0, 3] == pytest.approx(0.5)
    assert np.allclose(np.diag(iou), 1.0) and np.allclose(iou, iou.T)


def test_greedy_matching_goes_by_score_not_by_iou() -> None:
    labels = np.array([[0, 0, 10, 10.0]])
    # The better-placed inference (row 0) has the lower score: the higher score wins the label.
    inferences = np.array([[0, 0, 10, 10], [0, 0, 10, 7.0]])
    matches = match_boxes(labels, inferences, np.array([0.4, 0.9]))
    assert matches.inference_match[1] == 0 and matches.label_match[0] == 1
    assert matches.inference_match[0] == -1 and matches.inference_iou[0] == pytest.approx(1.0)


def test_matching_stays_within_a_group_and_is_inclusive_at_the_threshold() -> None:
    square, half = [0, 0, 10, 10], [0, 0, 10, 5]
    labels = np.array([square, square, square], dtype=float)
    label_groups = np.array([0, 1, 2])  # (s1, cat), (s2, cat), (s1, dog)
    inferences = np.array([square, half, square], dtype=float)
    inference_groups = np.array([2, 0, 3])  # dog on s1, cat on s1 (IoU exactly 0.5), cat on s3
    scores = np.array([0.9, 0.8, 0.7])
    matches = match_boxes(
        labels,
        inferences,
        scores,
        label_groups=label_groups,
        inference_groups=inference_groups,
    )
    assert matches.label_match.tolist() == [1, -1, 0]
    assert matches.inference_match.tolist() == [2, 0, -1]
    assert matches.inference_iou[1] == pytest.approx(0.5)
    assert matches.counts() == {"tp": 2, "fp": 1, "fn": 1}
    stricter = match_boxes(
        labels,
        inferences,
        scores,
        label_groups=label_groups,
        inference_groups=inference_groups,
        iou_threshold=0.6,
    )
    assert stricter.inference_match[1] == -1
    # A negative group code matches nothing, not even an identical box.
    alone = match_boxes(labels[:1], inferences[:1], scores[:1], label_groups=np.array([-1]))
    assert alone.counts() == {"tp": 0, "fp": 1, "fn": 1}


def test_matching_with_nothing_on_one_side() -> None:
    label = np.array([[0, 0, 10, 10.0]])
    assert match_boxes(label, EMPTY, np.zeros(0)).label_match.tolist() == [-1]
    assert match_boxes(EMPTY, label, np.array([0.5])).inference_match.tolist() == [-1]
    nothing = match_boxes(EMPTY, EMPTY, np.zeros(0))
    assert len(nothing.label_match) == len(nothing.inference_match) == 0
    with pytest.raises(ValueError, match="finite"):
        match_boxes(label, label, np.array([np.nan]))
    with pytest.raises(ValueError, match="iou_threshold"):
        match_boxes(label, EMPTY, np.zeros(0), iou_threshold=0)
    with pytest.raises(ValueError, match="2 scores for 1 inferences"):
        match_boxes(label, label, np.array([0.5, 0.6]))
    with pytest.raises(ValueError, match="group codes must be integers"):
        match_boxes(label, label, np.array([0.5]), label_groups=np.array(["s1"]))


_box = st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(1, 30), st.integers(1, 30))
_boxes = st.lists(st.tuples(st.integers(0, 3), _box), max_size=12)


def _xyxy(boxes: list) -> np.ndarray:
    return np.array([(x, y, x + w, y + h) for _, (x, y, w, h) in boxes], dtype=float).reshape(-1, 4)


@settings(max_examples=60, deadline=None)
@given(labels=_boxes, inferences=_boxes, data=st.data())
def test_matching_invariants(labels: list, inferences: list, data: st.DataObject) -> None:
    scores = np.array(
        data.draw(st.lists(st.floats(0, 1), min_size=len(inferences), max_size=len(inferences)))
    )
    label_groups = np.array([g for g, _ in labels], dtype=np.int64)
    inference_groups = np.array([g for g, _ in inferences], dtype=np.int64)
    label_boxes, inference_boxes = _xyxy(labels), _xyxy(inferences)
    matches: BoxMatches = match_boxes(
        label_boxes,
        inference_boxes,
        scores,
        label_groups=label_groups,
        inference_groups=inference_groups,
    )
    assert matches.label_match.shape == (len(labels),)
    assert matches.inference_match.shape == (len(inferences),)
    # Matches are one-to-one, symmetric, within one group, and at least the threshold.
    for inference, label in enumerate(matches.inference_match):
        if label < 0:
            continue
        assert matches.label_match[label] == inference
        assert label_groups[label] == inference_groups[inference]
        assert matches.inference_iou[inference] >= 0.5
        assert matches.inference_iou[inference] == pytest.approx(matches.label_iou[label])
    matched = matches.inference_match[matches.inference_match >= 0]
    assert len(set(matched.tolist())) == len(matched)
    counts = matches.counts()
    assert counts["tp"] + counts["fp"] == len(inferences)
    assert counts["tp"] + counts["fn"] == len(labels)
    assert ((matches.label_iou >= 0) & (matches.label_iou <= 1)).all()
    # Greedy matching is maximal: an unmatched inference overlaps no free same-group label enough.
    free = matches.label_match < 0
    for inference in np.flatnonzero(matches.inference_match < 0):
        same = free & (label_groups == inference_groups[inference])
        if same.any():
            iou = box_iou(inference_boxes[inference], label_boxes[same])
            assert iou.max() < 0.5
