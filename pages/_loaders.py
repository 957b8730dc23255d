"""The pages' cached loaders: the workspace, the model, thumbnails, and every analysis they show.

Each dataset loader takes the Dataset as ``_ds`` (the leading underscore keeps it out of
Streamlit's cache key) and, for the key, ``dataset_key`` (:func:`pages._common.dataset_key`: which
dataset) plus the embedding set's ``version`` or the dataset's ``stamp`` (which state of its
data), then calls the workflow directly. A miss reads the stored artefact, or computes and stores
it (see :mod:`shoal.workflows.cache`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import streamlit as st

from shoal.analysis.outliers import DEFAULT_METHOD
from shoal.app import thumbnails
from shoal.store import Dataset, Workspace
from shoal.workflows import analyse
from shoal.workflows.compare import compare_dataset

if TYPE_CHECKING:
    from shoal.analysis.compare import ComparisonResult
    from shoal.analysis.duplicates import DuplicateResult
    from shoal.analysis.mislabels import MislabelResult
    from shoal.analysis.outliers import OutlierResult
    from shoal.analysis.similar import SimilarResult


def workspace() -> Workspace:
    """The workspace named by $SHOAL_WORKSPACE (set by `shoal serve`), else ./shoal-workspace."""
    return _workspace(os.environ.get("SHOAL_WORKSPACE") or "")


@st.cache_resource
def _workspace(root: str) -> Workspace:
    return Workspace(root or None)


@st.cache_data(show_spinner=False, max_entries=16)
def aligned_samples(
    _ds: Dataset, dataset_key: str, stamp: str, embedding: str | None
) -> pd.DataFrame:
    """The metadata table in the embedding set's row order (row i = embedding row i).

    For an object-level set, one row per box: the objects table joined with its image's columns.
    """
    if embedding is None:
        return _ds.samples().reset_index(drop=True)
    return analyse.row_metadata(_ds, _ds.load_embeddings(embedding))


@st.cache_data(show_spinner="Building the neighbour graph…", max_entries=8)
def neighbors(
    _ds: Dataset, dataset_key: str, embedding: str, version: str
) -> tuple[np.ndarray, np.ndarray]:
    """The shared kNN graph: (indices, distances), each (n_samples, k), nearest first."""
    graph = analyse.knn_graph(_ds, embedding).result
    return graph.indices, graph.distances


@st.cache_data(show_spinner="Computing the map…", max_entries=8)
def projection(
    _ds: Dataset, dataset_key: str, embedding: str, version: str, method: str = "umap"
) -> dict[str, Any]:
    result = analyse.project(_ds, embedding, method=method).result
    return {
        "coords": result.coords,
        "preservation": result.neighborhood_preservation,
        "trustworthiness": result.trustworthiness,
        "method": result.method,
    }


@st.cache_data(show_spinner="Picking samples to label…", max_entries=8)
def picks(
    _ds: Dataset,
    dataset_key: str,
    embedding: str,
    version: str,
    n_select: int,
    where: str | None,
    novel_vs: str,
    collections_stamp: str = "",
) -> pd.DataFrame:
    """The selection's table (pick order): see shoal.workflows.selection.select.
    ``collections_stamp``: the state of the collections a filter names (cache key only)."""
    from shoal.workflows.selection import select

    return select(_ds, n_select, embedding, where=where, novel_vs=novel_vs).to_frame()


@st.cache_data(show_spinner=False, max_entries=8)
def exact_duplicates(_ds: Dataset, dataset_key: str, stamp: str) -> pd.DataFrame:
    """Byte-identical image files (shoal.workflows.splits.exact_duplicates)."""
    from shoal.workflows.splits import exact_duplicates as find

    return find(_ds)


@st.cache_data(show_spinner="Checking the splits…", max_entries=8)
def leak_free(
    _ds: Dataset,
    dataset_key: str,
    stamp: str,
    embedding: str,
    version: str,
    policy: str,
    threshold: float | None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """The leak-free plan: (per-sample table, moves, counts); see shoal.workflows.splits."""
    from shoal.workflows.splits import leak_free as plan_splits

    plan = plan_splits(_ds, embedding, policy=policy, threshold=threshold)
    counts = {
        "leaking_groups": plan.result.n_leaking_groups,
        "leaking_samples": plan.result.n_leaking_samples,
        "moved": plan.result.n_moved,
    }
    return plan.to_frame(), plan.result.moves_frame(), counts


@st.cache_data(show_spinner="Scoring outliers…", max_entries=16)
def outliers(
    _ds: Dataset, dataset_key: str, embedding: str, version: str, method: str = DEFAULT_METHOD
) -> OutlierResult:
    return analyse.outliers(_ds, embedding, method=method).result


@st.cache_data(show_spinner="Finding near-duplicates…", max_entries=16)
def duplicates(
    _ds: Dataset, dataset_key: str, embedding: str, version: str, threshold: float | None
) -> DuplicateResult:
    return analyse.duplicates(_ds, embedding, threshold=threshold).result


@st.cache_data(show_spinner="Checking labels against neighbours…", max_entries=8)
def mislabels(_ds: Dataset, dataset_key: str, embedding: str, version: str) -> MislabelResult:
    return analyse.mislabels(_ds, embedding).result


@st.cache_data(show_spinner="Comparing…", max_entries=16)
def comparison(
    _ds: Dataset,
    dataset_key: str,
    embedding: str,
    version: str,
    reference: str,
    current: str | None,
    method: str,
    collections_stamp: str = "",
) -> ComparisonResult:
    """``collections_stamp``: the state of the collections a filter names (cache key only)."""
    return compare_dataset(
        _ds, reference=reference, current=current or None, embedding=embedding, method=method
    ).result


@st.cache_data(show_spinner=False, max_entries=64)
def similar(
    _ds: Dataset,
    dataset_key: str,
    embedding: str,
    version: str,
    sample_ids: tuple[str, ...] | None,
    vector: bytes | None,
    k: int,
    among: bytes | None = None,
) -> SimilarResult:
    """``among``: the bytes of a boolean row mask (a collection), or None for every row."""
    query = None if vector is None else np.frombuffer(vector, dtype=np.float32)
    rows = None if among is None else np.frombuffer(among, dtype=bool)
    return analyse.similar(
        _ds,
        embedding,
        sample_ids=list(sample_ids) if sample_ids else None,
        vector=query,
        k=k,
        among=rows,
    ).result


@st.cache_data(show_spinner=False, max_entries=16)
def collection_mask(
    _ds: Dataset, dataset_key: str, stamp: str, embedding: str, name: str, updated_at: str
) -> np.ndarray:
    """The rows of the embedding set ``embedding`` in collection ``name`` (as last changed at
    ``updated_at``): see shoal.workflows.collections.dataset_member_mask."""
    from shoal.store.collections import Collections
    from shoal.workflows.collections import dataset_member_mask

    collection = Collections(_ds).get(name)
    return dataset_member_mask(_ds, collection, aligned_samples(_ds, dataset_key, stamp, embedding))


@st.cache_resource(show_spinner="Loading the embedding model…", max_entries=2)
def embedding_model(model_name: str):
    import torch

    from shoal.embedding import create_model

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    return create_model(model_name)


@st.cache_data(show_spinner=False, max_entries=4096)
def thumbnail(root: str, image: str) -> bytes:
    return thumbnails.thumbnail(Workspace(root), Path(image))


@st.cache_data(show_spinner=False, max_entries=4096)
def box_thumbnail(root: str, image: str, box: tuple[float, float, float, float]) -> bytes:
    return thumbnails.box_thumbnail(Workspace(root), Path(image), box)
