"""shoal.analysis.results.ArrayRecord: every stored result class survives the store unchanged, edge
cases included (infinite thresholds, NaN, empty arrays such as 0 duplicate pairs)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from shoal.analysis.compare import ClusterShift, ComparisonResult, compare
from shoal.analysis.duplicates import DuplicateResult, find_duplicates
from shoal.analysis.knn import KnnGraph, build_knn_graph
from shoal.analysis.mislabels import MislabelResult, score_mislabels
from shoal.analysis.outliers import OutlierResult, score_outliers
from shoal.analysis.projection import Projection, project
from shoal.analysis.results import ArrayRecord
from shoal.store import Dataset, Workspace
from tests.analysis.synthetic import clustered_embeddings


@pytest.fixture
def ds(workspace: Workspace) -> Dataset:
    samples = pd.DataFrame(
        {"sample_id": ["s0"], "source": ["x"], "path": [None], "split": [None], "label": [None]}
    )
    return workspace.create("results", samples, has_images=False)


def stored(ds: Dataset, result: Any) -> Any:
    """``result`` written as an artefact and read back, as the workflow cache does."""
    ds.save_artefact("result", "key", result.to_arrays(), result.to_meta())
    loaded = ds.load_artefact("result", "key")
    assert loaded is not None
    return type(result).from_arrays(*loaded)


def assert_same_record(again: ArrayRecord, original: ArrayRecord) -> None:
    arrays, again_arrays = original.to_arrays(), again.to_arrays()
    assert again_arrays.keys() == arrays.keys()
    for name, array in arrays.items():
        assert again_arrays[name].dtype == array.dtype, name
        assert again_arrays[name].shape == array.shape, name
        np.testing.assert_array_equal(again_arrays[name], array)  # NaN equals NaN here
    # Serialised, so that NaN == NaN and inf == inf.
    assert json.dumps(again.to_meta(), sort_keys=True) == json.dumps(
        original.to_meta(), sort_keys=True
    )


def test_knn_graph(ds: Dataset) -> None:
    x, _ = clustered_embeddings(60, dim=8, seed=0)
    graph = build_knn_graph(x, n_neighbors=5)
    again = stored(ds, graph)
    assert isinstance(again, KnnGraph) and again.n_neighbors == 5
    assert_same_record(again, graph)
    empty = build_knn_graph(x[:1], n_neighbors=5)
    assert_same_record(stored(ds, empty), empty)


def test_projection_with_nan_trustworthiness(ds: Dataset) -> None:
    x, _ = clustered_embeddings(30, dim=8, seed=1)
    for rows in (30, 3):  # three samples: a PCA map, trustworthiness undefined (NaN)
        result = project(x[:rows])
        again = stored(ds, result)
        assert isinstance(again, Projection) and again.method == result.method
        assert_same_record(again, result)
    assert np.isnan(again.trustworthiness)


def test_outliers_with_an_infinite_threshold_and_nothing_flagged(ds: Dataset) -> None:
    x, _ = clustered_embeddings(8, dim=4, seed=2)
    # Fewer than 10 scores give no robust spread: threshold inf, no flags, empty evidence.
    result = score_outliers(x, method="knn_local", n_neighbors=3)
    assert result.threshold == np.inf and result.neighbor_indices.shape == (0, 3)
    again = stored(ds, result)
    assert isinstance(again, OutlierResult) and again.threshold == np.inf
    assert_same_record(again, result)
    flagged = score_outliers(x, method="knn_local", n_neighbors=3, threshold=0.0)
    assert_same_record(stored(ds, flagged), flagged)


def test_duplicates_with_no_pairs_and_with_leaks(ds: Dataset) -> None:
    x, _ = clustered_embeddings(40, dim=8, seed=3)
    none = find_duplicates(x, threshold=0.0)
    assert none.pairs.shape == (0, 2)
    again = stored(ds, none)
    assert isinstance(again, DuplicateResult) and again.pairs.shape == (0, 2)
    assert_same_record(again, none)
    x[1] = x[0]
    leaking = find_duplicates(x, threshold=1e-6, splits=["test"] + ["train"] * 39)
    assert leaking.pairs.tolist() == [[0, 1]] and leaking.cross_split.tolist() == [True]
    assert_same_record(stored(ds, leaking), leaking)


def test_mislabels_with_unlabelled_samples(ds: Dataset) -> None:
    x, classes = clustered_embeddings(80, dim=8, n_clusters=3, seed=4)
    labels = np.array([f"class {c}" for c in classes], dtype=object)
    labels[:5] = None
    labels[10] = "class 9"
    result = score_mislabels(labels, embeddings=x, n_neighbors=5)
    assert np.isnan(result.scores[:5]).all()
    again = stored(ds, result)
    assert isinstance(again, MislabelResult)
    assert_same_record(again, result)


def test_comparison_with_ids_and_clusters(ds: Dataset) -> None:
    x, _ = clustered_embeddings(120, dim=8, seed=5)
    result = compare(x[:70], x[70:], n_permutations=19)
    assert_same_record(stored(ds, result), result)
    with_ids = replace(
        result,
        reference_ids=np.array([f"r{i}" for i in range(70)], dtype=object),
        current_ids=np.array([f"c{i}" for i in range(50)], dtype=object),
    )
    again = stored(ds, with_ids)
    assert isinstance(again, ComparisonResult)
    assert again.clusters == result.clusters and isinstance(again.clusters[0], ClusterShift)
    assert again.current_ids is not None and again.current_ids[0] == "c0"
    assert_same_record(again, with_ids)


@dataclass(frozen=True)
class _Record(ArrayRecord):
    values: np.ndarray
    names: np.ndarray
    threshold: float
    shifts: tuple[ClusterShift, ...] = ()
    ids: np.ndarray | None = None
    params: dict[str, Any] | None = None

    nested_records = {"shifts": ClusterShift}


def test_array_record_contract() -> None:
    shift = ClusterShift(0, 1, 2, 0.5, 0.5, 1.0, 1.0, 1.0, "even", False)
    record = _Record(
        values=np.zeros((0, 2), np.float32),
        names=np.array(["a", None], dtype=object),
        threshold=float("-inf"),
        shifts=(shift,),
        params={"z": np.float32(3.5), "sizes": (1, 2)},
    )
    arrays, meta = record.to_arrays(), record.to_meta()
    # None arrays are left out, object arrays stored as str; meta holds plain Python values.
    assert sorted(arrays) == ["names", "values"] and arrays["names"].dtype.kind == "U"
    assert meta == {
        "threshold": float("-inf"),
        "shifts": [shift.to_dict()],
        "params": {"z": 3.5, "sizes": [1, 2]},
    }
    again = _Record.from_arrays(arrays, {**meta, "saved_at": "2025-01-01T00:00:00+00:00"})
    assert again.ids is None and again.shifts == (shift,) and again.threshold == float("-inf")
    assert again.values.shape == (0, 2) and again.names.tolist() == ["a", "None"]
