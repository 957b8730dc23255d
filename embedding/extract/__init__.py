"""Bring your own model: embeddings from any layer of a user's PyTorch network.

Load a Python factory (``path/to/module.py:build_model``) or a TorchScript file with its
preprocessing, then extract one vector per image from a named layer, or from the task's default:
the pre-logits for classification, the bottleneck for segmentation, and for two-stage detectors
per-image, per-detection and per-label-box vectors.

>>> from shoal.embedding.extract import load_user_model, extract_embeddings
>>> user = load_user_model("models/net.py:build_model")                 # doctest: +SKIP
>>> extract_embeddings(user, ["a.jpg", "b.jpg"], task="classification").shape  # doctest: +SKIP
(2, 2048)
"""

from shoal.embedding.extract.detection import BoxEmbeddings, DetectionEmbeddings
from shoal.embedding.extract.extraction import (
    AUTO_OPENVINO_MIN_IMAGES,
    DEFAULT_MAX_ELEMENTS,
    TASKS,
    Task,
    default_device,
    extract_detection,
    extract_embeddings,
    extraction_backend,
    resolve_layer,
)
from shoal.embedding.extract.layers import LayerNotFoundError, LayerRecord, list_layers
from shoal.embedding.extract.loading import ModelLoadError, UserModel, load_user_model
from shoal.embedding.extract.pooling import SpatialPlan, plan_spatial_pool, pool_activations
from shoal.embedding.extract.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

__all__ = [
    "AUTO_OPENVINO_MIN_IMAGES",
    "DEFAULT_MAX_ELEMENTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TASKS",
    "BoxEmbeddings",
    "DetectionEmbeddings",
    "LayerNotFoundError",
    "LayerRecord",
    "ModelLoadError",
    "Preprocessing",
    "SpatialPlan",
    "Task",
    "UserModel",
    "default_device",
    "extract_detection",
    "extract_embeddings",
    "extraction_backend",
    "list_layers",
    "load_user_model",
    "plan_spatial_pool",
    "pool_activations",
    "resolve_layer",
]
