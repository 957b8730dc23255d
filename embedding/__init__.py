"""Embedding engine: pretrained models by name and a batched, resumable embedding pipeline.

Names load on first use, so ``from shoal.embedding.defaults import DEFAULT_MODEL`` (the job
parameters, the CLI's help) does not import torch.

>>> from embedding import create_model, embed_paths
>>> model = create_model()                                   # offline default, 1280-d
>>> vectors = embed_paths(["cat.jpg"], model)                # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from shoal.embedding.defaults import DEFAULT_MODEL

if TYPE_CHECKING:
    from shoal.embedding.backends import Embedder, create_embedder
    from shoal.embedding.inference import embed_batch, resolve_precision
    from shoal.embedding.models import (
        DataConfig,
        EmbeddingModel,
        ModelUnavailableError,
        create_model,
        imagenet_class_names,
        list_models,
        register_model,
    )
    from shoal.embedding.pipeline import (
        Checkpoints,
        EmbeddingCancelled,
        Progress,
        checkpoint_manifest,
        embed_images,
        embed_paths,
    )
    from shoal.embedding.preprocess import ImageDecodeError, load_image, resize_crop

_SOURCES = {
    "shoal.embedding.backends": ("Embedder", "create_embedder"),
    "shoal.embedding.models": (
        "DataConfig",
        "EmbeddingModel",
        "ModelUnavailableError",
        "checkpoint_manifest",
        "create_model",
        "imagenet_class_names",
        "list_models",
        "register_model",
    ),
    "shoal.embedding.pipeline": (
        "Checkpoints",
        "EmbeddingCancelled",
        "Progress",
        "checkpoint_manifest",
        "embed_images",
        "embed_paths",
    ),
    "shoal.embedding.inference": ("embed_batch", "resolve_precision"),
    "shoal.embedding.preprocess": ("ImageDecodeError", "load_image", "resize_crop"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = [
    "DEFAULT_MODEL",
    "Checkpoints",
    "DataConfig",
    "Embedder",
    "EmbeddingCancelled",
    "EmbeddingModel",
    "ImageDecodeError",
    "ModelUnavailableError",
    "Progress",
    "checkpoint_manifest",
    "create_embedder",
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


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'embedding' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value
