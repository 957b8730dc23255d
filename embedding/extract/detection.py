"""Embeddings from a torchvision two-stage detector (Faster R-CNN, Mask R-CNN, Keypoint R-CNN).

One forward pass per batch gives three kinds of vectors:

- per image: the backbone feature maps the RPN runs on, each average-pooled over the image's own
  area (not the batch padding); with an FPN the levels are concatenated in order, or one level is
  chosen with ``feature_level``;
- per inference (kept detection): the ROI head's last fully connected layer (the output of
  ``roi_heads.box_head``, e.g. TwoMLPHead's fc7, 1024-d) for the proposal the detection came from,
  carried through score thresholding, small-box removal, per-class NMS and the top-k cut;
- per label (given ground-truth box): the label box fed to the ROI head as a proposal
  (``box_roi_pool`` on the same features, then ``box_head``).

Images go in as RGB scaled to [0, 1] at their own size; the detector's ``transform`` normalises
and resizes them itself. It pads a batch to its largest image, which changes every vector of a
backbone that pools globally (squeeze-excitation), so only images of one size share a pass.

>>> result = extract_detection(model, ["a.jpg"], label_boxes=[np.array([[10, 20, 110, 90]])])  # doctest: +SKIP
>>> result.labels.vectors.shape
(1, 1024)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shoal.embedding.extract.preprocessing import ImageInput, load_image

if TYPE_CHECKING:
    import pandas as pd

BOX_LAYER = "roi_heads.box_head"


@dataclass(frozen=True)
class BoxEmbeddings:
    """Vectors for boxes, in image order and, within an image, in the model's (or the caller's)
    order.

    image_index: (n_boxes,) int64 index into the input images.
    boxes: (n_boxes, 4) float32 x1, y1, x2, y2 in pixels of the original image.
    vectors: (n_boxes, dim) float32 ROI-head features.
    scores: (n_boxes,) float32 detection confidence in [0, 1], higher = more confident; None for
        labels.
    categories: (n_boxes,) int64 model class ids (0 is background and never appears); None for
        labels.
    """

    image_index: np.ndarray
    boxes: np.ndarray
    vectors: np.ndarray
    scores: np.ndarray | None = None
    categories: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.image_index)

    def to_frame(self) -> pd.DataFrame:
        """One row per box: image_index, x1, y1, x2, y2 (+ score, category); vectors left out."""
        import pandas as pd

        frame = pd.DataFrame(
            {
                "image_index": self.image_index,
                "x1": self.boxes[:, 0],
                "y1": self.boxes[:, 1],
                "x2": self.boxes[:, 2],
                "y2": self.boxes[:, 3],
            }
        )
        if self.scores is not None:
            frame["score"] = self.scores
        if self.categories is not None:
            frame["category"] = self.categories
        return frame


@dataclass(frozen=True)
class DetectionEmbeddings:
    """Result of :func:`extract_detection`.

    image_vectors: (n_images, image_dim) float32 pooled backbone features.
    inferences: the kept detections with their ROI-head vectors, exactly the boxes, scores and
        labels that ``model(images)`` returns.
    labels: one vector per given label box, in the given order; None when no boxes were given.
    image_layer, box_layer: where the vectors come from, for the embedding set's metadata.
    """

    image_vectors: np.ndarray
    inferences: BoxEmbeddings
    labels: BoxEmbeddings | None
    image_layer: str
    box_layer: str = BOX_LAYER


def check_two_stage_detector(model: nn.Module) -> None:
    """Raise TypeError unless ``model`` is a torchvision GeneralizedRCNN-style detector whose
    detections Shoal can reproduce."""
    from torchvision.models.detection.roi_heads import RoIHeads

    missing = [a for a in ("transform", "backbone", "rpn", "roi_heads") if not hasattr(model, a)]
    roi_heads: Any = getattr(model, "roi_heads", None)
    if not missing:
        missing = [
            f"roi_heads.{a}"
            for a in ("box_roi_pool", "box_head", "box_predictor", "box_coder", "score_thresh")
            if not hasattr(roi_heads, a)
        ]
    if missing:
        raise TypeError(
            f"{type(model).__name__} is not a torchvision two-stage detector (Faster/Mask R-CNN): "
            f"missing {', '.join(missing)}. For other detectors name a layer with "
            "task='classification' to get one vector per image"
        )
    if type(roi_heads).postprocess_detections is not RoIHeads.postprocess_detections:
        raise TypeError(
            f"{type(roi_heads).__name__} overrides postprocess_detections; Shoal reproduces "
            "torchvision's own to track which proposal each detection came from"
        )


def image_tensor(image: ImageInput) -> torch.Tensor:
    """(3, H, W) float32 RGB in [0, 1] at the image's own size: a torchvision detector's input."""
    array = np.asarray(load_image(image), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def feature_levels(
    model: Any, images: list[torch.Tensor]
) -> tuple[Any, OrderedDict[str, torch.Tensor]]:
    """The detector's transformed image batch and the backbone feature maps the RPN runs on.

    model: a torchvision GeneralizedRCNN (typed Any: its parts are reached by attribute).
    """
    image_list, _ = model.transform(images)
    features = model.backbone(image_list.tensors)
    if isinstance(features, torch.Tensor):
        features = OrderedDict([("0", features)])
    return image_list, features


def pool_image_features(
    features: OrderedDict[str, torch.Tensor],
    image_sizes: Sequence[tuple[int, int]],
    padded_size: tuple[int, int],
    *,
    feature_level: str | None,
) -> torch.Tensor:
    """(batch, dim) mean of each level's map over each image's unpadded area; levels
    concatenated in order (``feature_level=None``) or one level."""
    if feature_level is not None:
        if feature_level not in features:
            raise ValueError(
                f"unknown feature_level {feature_level!r}; the backbone gives {list(features)}"
            )
        features = OrderedDict([(feature_level, features[feature_level])])
    padded_height, padded_width = padded_size
    vectors = []
    for index, (height, width) in enumerate(image_sizes):
        per_level = []
        for fmap in features.values():
            map_height, map_width = fmap.shape[-2:]
            valid_height = max(1, min(map_height, math.ceil(height * map_height / padded_height)))
            valid_width = max(1, min(map_width, math.ceil(width * map_width / padded_width)))
            per_level.append(fmap[index, :, :valid_height, :valid_width].mean(dim=(1, 2)))
        vectors.append(torch.cat(per_level))
    return torch.stack(vectors).float()


def postprocess_with_proposals(
    roi_heads: Any,
    class_logits: torch.Tensor,
    box_regression: torch.Tensor,
    proposals: list[torch.Tensor],
    image_shapes: list[tuple[int, int]],
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """torchvision's ``RoIHeads.postprocess_detections``, step for step, that also returns for
    each kept detection the index (within its image) of the proposal it was decoded from.

    Each proposal gives one box per foreground class; the proposal index rides along through
    score thresholding, small-box removal, per-class NMS and the top-k cut.
    Returns per image: boxes (k, 4), scores (k,), labels (k,), proposal indices (k,).
    """
    from torchvision.ops import boxes as box_ops

    device = class_logits.device
    num_classes = class_logits.shape[-1]
    boxes_per_image = [len(p) for p in proposals]
    pred_boxes = roi_heads.box_coder.decode(box_regression, proposals)
    pred_scores = F.softmax(class_logits, -1)

    all_boxes, all_scores, all_labels, all_proposals = [], [], [], []
    for boxes, scores, image_shape, count in zip(
        pred_boxes.split(boxes_per_image, 0),
        pred_scores.split(boxes_per_image, 0),
        image_shapes,
        boxes_per_image,
        strict=True,
    ):
        boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
        labels = torch.arange(num_classes, device=device).view(1, -1).expand_as(scores)
        proposal_index = torch.arange(count, device=device).view(-1, 1).expand_as(scores)

        boxes, scores = boxes[:, 1:], scores[:, 1:]
        labels, proposal_index = labels[:, 1:], proposal_index[:, 1:]
        boxes = boxes.reshape(-1, 4)
        scores = scores.reshape(-1)
        labels = labels.reshape(-1)
        proposal_index = proposal_index.reshape(-1)

        keep = torch.where(scores > roi_heads.score_thresh)[0]
        boxes, scores, labels, proposal_index = (
            boxes[keep],
            scores[keep],
            labels[keep],
            proposal_index[keep],
        )
        keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels, proposal_index = (
            boxes[keep],
            scores[keep],
            labels[keep],
            proposal_index[keep],
        )
        keep = box_ops.batched_nms(boxes, scores, labels, roi_heads.nms_thresh)
        keep = keep[: roi_heads.detections_per_img]
        all_boxes.append(boxes[keep])
        all_scores.append(scores[keep])
        all_labels.append(labels[keep])
        all_proposals.append(proposal_index[keep])
    return all_boxes, all_scores, all_labels, all_proposals


@dataclass
class ImageDetections:
    """One image's share of a detector pass, as tensors on the model's device.

    image_vector: (image_dim,); boxes (k, 4) in original pixels, scores (k,), categories (k,),
    vectors (k, box_dim) for the kept detections; label_vectors (n_labels, box_dim) or None.
    """

    image_vector: torch.Tensor
    boxes: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    categories: torch.Tensor | None = None
    vectors: torch.Tensor | None = None
    label_vectors: torch.Tensor | None = None


def detect_batch(
    model: Any,
    images: list[torch.Tensor],
    *,
    label_boxes: list[torch.Tensor] | None,
    feature_level: str | None,
    with_detections: bool = True,
) -> list[ImageDetections]:
    """One inference-mode pass over (3, H, W) [0, 1] tensors on the model's device.

    The detector pads a batch to its largest image and some backbones pool globally
    (squeeze-excitation), so callers batch images of one size together.
    """
    from torchvision.models.detection.transform import resize_boxes

    original_sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in images]
    image_list, features = feature_levels(model, images)
    image_vectors = pool_image_features(
        features,
        image_list.image_sizes,
        tuple(image_list.tensors.shape[-2:]),
        feature_level=feature_level,
    )
    results = [ImageDetections(vector) for vector in image_vectors]
    roi_heads = model.roi_heads
    if with_detections:
        proposals, _ = model.rpn(image_list, features)
        box_features = roi_heads.box_roi_pool(features, proposals, image_list.image_sizes)
        box_features = roi_heads.box_head(box_features)
        class_logits, box_regression = roi_heads.box_predictor(box_features)
        boxes, scores, labels, proposal_index = postprocess_with_proposals(
            roi_heads, class_logits, box_regression, proposals, image_list.image_sizes
        )
        per_image_features = box_features.flatten(1).split([len(p) for p in proposals])
        for i, (result, image_size) in enumerate(zip(results, image_list.image_sizes, strict=True)):
            result.boxes = resize_boxes(boxes[i], image_size, original_sizes[i])
            result.scores = scores[i]
            result.categories = labels[i]
            result.vectors = per_image_features[i][proposal_index[i]]
    if label_boxes is not None:
        scaled = [
            resize_boxes(b, original, size)
            for b, original, size in zip(
                label_boxes, original_sizes, image_list.image_sizes, strict=True
            )
        ]
        counts = [len(b) for b in scaled]
        if sum(counts):
            pooled = roi_heads.box_roi_pool(features, scaled, image_list.image_sizes)
            label_vectors = roi_heads.box_head(pooled).flatten(1).split(counts)
            for result, vectors in zip(results, label_vectors, strict=True):
                result.label_vectors = vectors
    return results


def as_label_boxes(boxes: Any, image_number: int) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float32)
    if array.size == 0:
        return np.zeros((0, 4), dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(
            f"label boxes of image {image_number} must be (n_boxes, 4) x1, y1, x2, y2, "
            f"got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise ValueError(f"label boxes of image {image_number} hold non-finite values")
    if (array[:, 2] < array[:, 0]).any() or (array[:, 3] < array[:, 1]).any():
        raise ValueError(f"label boxes of image {image_number} need x2 >= x1 and y2 >= y1")
    return array
