"""Box overlap and label-to-inference matching for object detection.

Boxes are ``(n, 4)`` float arrays of ``x0, y0, x1, y1`` corners. :func:`match_boxes` pairs
predicted boxes (inferences) with labelled boxes greedily by descending score, one to one and
only within a group (an image × category), which is the PASCAL VOC / COCO rule at one IoU
threshold: matched pairs are true positives, unmatched inferences false positives, unmatched
labels false negatives.

Example:
    >>> import numpy as np
    >>> labels = np.array([[0, 0, 10, 10.]])
    >>> inferences = np.array([[1, 0, 10, 10.], [0, 0, 10, 9.]])
    >>> matches = match_boxes(labels, inferences, scores=np.array([0.9, 0.4]))
    >>> matches.label_match.tolist(), matches.inference_match.tolist(), matches.counts()
    ([0], [0, -1], {'tp': 1, 'fp': 1, 'fn': 0})
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IOU_THRESHOLD = 0.5


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair: (n, 4) and (m, 4) xyxy boxes -> (n, m) in [0, 1].

    Higher means more overlap; 1 is the same box, 0 no overlap (or an empty box).

    >>> box_iou(np.array([[0, 0, 2, 2.]]), np.array([[1, 0, 3, 2.]])).round(3)
    array([[0.333]])
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    left = np.maximum(a[:, None, 0], b[None, :, 0])
    top = np.maximum(a[:, None, 1], b[None, :, 1])
    right = np.minimum(a[:, None, 2], b[None, :, 2])
    bottom = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


@dataclass(frozen=True)
class BoxMatches:
    """The one-to-one matches between labelled and predicted boxes.

    label_match: (n_labels,) int64, the matched inference's row, or -1 (a false negative).
    inference_match: (n_inferences,) int64, the matched label's row, or -1 (a false positive).
    label_iou, inference_iou: float64 in [0, 1], higher = better placed: the IoU with the match,
    or for an unmatched box the largest IoU with any box of its group and the other kind (0.0 if
    none), so 0 < iou < threshold points to a badly placed box and an unmatched inference at
    iou >= threshold to a duplicate detection.
    """

    label_match: np.ndarray
    inference_match: np.ndarray
    label_iou: np.ndarray
    inference_iou: np.ndarray
    iou_threshold: float

    def counts(self) -> dict[str, int]:
        """{'tp': matched pairs, 'fp': unmatched inferences, 'fn': unmatched labels}."""
        return {
            "tp": int((self.inference_match >= 0).sum()),
            "fp": int((self.inference_match < 0).sum()),
            "fn": int((self.label_match < 0).sum()),
        }


def match_boxes(
    label_boxes: np.ndarray,
    inference_boxes: np.ndarray,
    scores: np.ndarray,
    *,
    label_groups: np.ndarray | None = None,
    inference_groups: np.ndarray | None = None,
    iou_threshold: float = IOU_THRESHOLD,
) -> BoxMatches:
    """Match inferences to labels of the same group, greedily by descending score.

    Each inference, best score first (ties keep input order), takes the still unmatched label of
    its group with the highest IoU if that IoU is at least ``iou_threshold``.

    label_boxes: (n_labels, 4) xyxy; inference_boxes: (n_inferences, 4) xyxy; scores:
    (n_inferences,) finite confidences. label_groups, inference_groups: (n,) integer group codes
    (for example image × category); boxes match only within one code, and a negative code
    matches nothing. Without them every box is in one group.

    >>> match_boxes(np.zeros((0, 4)), np.array([[0, 0, 1, 1.]]), np.array([0.5])).counts()
    {'tp': 0, 'fp': 1, 'fn': 0}
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    label_boxes = np.asarray(label_boxes, dtype=np.float64).reshape(-1, 4)
    inference_boxes = np.asarray(inference_boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(inference_boxes):
        raise ValueError(f"{len(scores)} scores for {len(inference_boxes)} inferences")
    if not np.isfinite(scores).all():
        raise ValueError("inference scores must be finite numbers")
    label_rows = _rows_by_group(label_groups, len(label_boxes))
    inference_rows_by_group = _rows_by_group(inference_groups, len(inference_boxes))

    label_match = np.full(len(label_boxes), -1, dtype=np.int64)
    inference_match = np.full(len(inference_boxes), -1, dtype=np.int64)
    label_iou = np.zeros(len(label_boxes))
    inference_iou = np.zeros(len(inference_boxes))
    for group, inference_rows in inference_rows_by_group.items():
        rows = label_rows.get(group)
        if rows is None:
            continue
        iou = box_iou(inference_boxes[inference_rows], label_boxes[rows])
        inference_iou[inference_rows] = iou.max(axis=1)
        label_iou[rows] = iou.max(axis=0)
        taken = np.zeros(len(rows), dtype=bool)
        for i in np.argsort(-scores[inference_rows], kind="stable"):
            candidates = np.where(taken, -1.0, iou[i])
            best = int(np.argmax(candidates))
            if candidates[best] < iou_threshold:
                continue
            taken[best] = True
            inference_row, label_row = inference_rows[i], rows[best]
            inference_match[inference_row] = label_row
            label_match[label_row] = inference_row
            inference_iou[inference_row] = label_iou[label_row] = iou[i, best]
    return BoxMatches(
        label_match=label_match,
        inference_match=inference_match,
        label_iou=label_iou,
        inference_iou=inference_iou,
        iou_threshold=iou_threshold,
    )


def _rows_by_group(groups: np.ndarray | None, n_rows: int) -> dict[int, np.ndarray]:
    """Group code -> the rows holding it, in input order; negative codes are left out."""
    codes = np.zeros(n_rows, dtype=np.int64) if groups is None else np.asarray(groups).reshape(-1)
    if len(codes) != n_rows:
        raise ValueError(f"{len(codes)} group codes for {n_rows} boxes")
    if n_rows == 0:
        return {}
    if codes.dtype.kind not in "iu":
        raise ValueError(f"group codes must be integers, got dtype {codes.dtype}")
    order = np.argsort(codes, kind="stable")
    keys, starts = np.unique(codes[order], return_index=True)
    return {
        int(key): rows
        for key, rows in zip(keys, np.split(order, starts[1:]), strict=True)
        if key >= 0
    }
