"""Embedding engine: pretrained models by name and a batched, resumable embedding pipeline.

>>> from embedding import create_model, embed_paths
>>> model = create_model()                                   # offline default, 1280-d
>>> vectors = embed_paths(["cat.jpg"], model)                # doctest: +SKIP
"""

from embedding.models import (
    DEFAULT_MODEL,
    DataConfig,
    EmbeddingModel,
    ModelUnavailableError,
    create_model,
    imagenet_class_names,
    list_models,
    register_model,
)
from embedding.pipeline import (
    CheckpointMismatchError,
    EmbeddingCancelled,
    Progress,
    embed_batch,
    embed_images,
    embed_paths,
    resolve_precision,
)
from embedding.preprocess import ImageDecodeError, load_image, resize_crop

__all__ = [
    "DEFAULT_MODEL",
    "CheckpointMismatchError",
    "DataConfig",
    "EmbeddingCancelled",
    "EmbeddingModel",
    "ImageDecodeError",
    "ModelUnavailableError",
    "Progress",
    "create_model",
    "embed_batch",
    "embed_images",
    "embed_paths",
    "imagenet_class_names",
    "list_models",
    "load_image",
    "register_model",
    "resize_crop",
    "resolve_precision",
]
