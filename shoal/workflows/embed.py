"""Embed a stored dataset's images with a registered model, resumably.

The per-batch checkpoints live in the dataset's ``embeddings/.partial-<name>/``; a killed run
continues from the last finished batch. The set is published only when every image is embedded.

Example:
    >>> embed_dataset(Workspace().open("pets"))                 # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shoal.embedding.defaults import DEFAULT_BATCH_SIZE, DEFAULT_MODEL
from shoal.store import Dataset, EmbeddingInfo, StoreError


def default_embedding_name(model: str) -> str:
    return model.replace("/", "-")


def embed_dataset(
    dataset: Dataset,
    *,
    model: str = DEFAULT_MODEL,
    name: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int | None = None,
    precision: str = "auto",
    backend: str = "auto",
    progress: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EmbeddingInfo:
    """Embed every image of ``dataset`` and store the set as ``name`` (default: the model name).

    ``backend``: "auto" (OpenVINO on x86 CPUs where it loads, else torch), "torch" or
    "openvino" (see :mod:`shoal.embedding.backends`); the set's preprocessing records the backend and
    precision really used.
    """
    from shoal.embedding import checkpoint_manifest, create_model, embed_paths
    from shoal.embedding.backends import create_embedder, default_device

    name = name or default_embedding_name(model)
    samples, paths = images_to_embed(dataset)
    with dataset.computing(name):  # a second job on this set is refused, not mixed in
        network = create_model(model, device=default_device(backend))  # CUDA: torch
        embedder = create_embedder(network, backend=backend, precision=precision)
        manifest = checkpoint_manifest(
            paths,
            network,
            batch_size=batch_size,
            precision=embedder.precision,
            backend=embedder.backend,
        )
        vectors = embed_paths(
            paths,
            network,
            batch_size=batch_size,
            num_workers=num_workers,
            backend=embedder,
            checkpoints=dataset.batch_checkpoints(name, manifest),
            progress=progress,
            should_stop=should_stop,
        )
        return publish_image_embeddings(
            dataset,
            name,
            vectors,
            samples,
            model=model,
            data_config=network.data_config,
            backend=embedder.backend,
            precision=embedder.precision,
        )


def images_to_embed(dataset: Dataset) -> tuple[pd.DataFrame, list[Path]]:
    """The samples table and each sample's image file, in row order."""
    if not dataset.has_images:
        raise StoreError(
            f"dataset {dataset.name!r} has no images to embed; add embeddings with `shoal add-embeddings`"
        )
    samples = dataset.samples()
    return samples, [dataset.image_file(p) for p in samples["path"]]


def publish_image_embeddings(
    dataset: Dataset,
    name: str,
    vectors: np.ndarray,
    samples: pd.DataFrame,
    *,
    model: str,
    data_config: Any,
    backend: str,
    precision: str,
    **provenance: Any,
) -> EmbeddingInfo:
    """Publish one vector per sample as the dataset's default set ``name``; its preprocessing
    records the model's data config, the backend and precision (and ``provenance``, e.g. the
    engine that ran it)."""
    return dataset.publish_embeddings(
        name,
        vectors,
        samples["sample_id"].astype(str).to_numpy(),
        model=model,
        preprocessing={
            **data_config.to_dict(),
            "backend": backend,
            "precision": precision,
            **provenance,
        },
        make_default=True,
    )
