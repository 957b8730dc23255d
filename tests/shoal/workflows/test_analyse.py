from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from shoal.analysis.knn import build_knn_graph
from shoal.store import StoreError, Workspace
from shoal.workflows import analyse as analysis_ws


@pytest.fixture
def dataset(tmp_path, real):
    """A dataset of 600 real Fashion-MNIST embeddings + 6 photos, with labels and splits."""
    rng = np.random.default_rng(0)
    rows = rng.choice(len(real["fmnist"]), 600, replace=False)
    vectors = np.concatenate([real["fmnist"][rows], real["photos"][:6]])
    labels = [str(v) for v in real["fmnist_labels"][rows]] + [None] * 6
    vectors[5] = vectors[4]  # one exact duplicate, across splits below
    ids = [f"s{i:04d}" for i in range(len(vectors))]
    splits = ["train"] * 300 + ["test"] * 306
    splits[4], splits[5] = "train", "test"
    samples = pd.DataFrame(
        {"sample_id": ids, "source": "fixture", "path": None, "split": splits, "label": labels}
    )
    ds = Workspace(tmp_path / "ws").create("fixture", samples, has_images=False)
    # Store rows in a different order than the samples table: alignment must go by id.
    order = rng.permutation(len(ids))
    ds.publish_embeddings("lite0", vectors[order], np.array(ids)[order], model="efficientnet_lite0")
    return ds, vectors, ids


def test_graph_is_computed_once_and_matches_the_kernel(dataset) -> None:
    ds, _, _ = dataset
    first = analysis_ws.knn_graph(ds)
    second = analysis_ws.knn_graph(ds)
    assert not first.cached and second.cached and first.key == second.key
    np.testing.assert_array_equal(first.result.indices, second.result.indices)
    stored = ds.load_embeddings()
    direct = build_knn_graph(stored.vectors, n_neighbors=15)
    np.testing.assert_array_equal(direct.indices, second.result.indices)


def test_analyses_cache_and_map_to_sample_ids(dataset) -> None:
    ds, vectors, ids = dataset
    found = analysis_ws.outliers(ds)
    assert not found.cached and analysis_ws.outliers(ds).cached
    frame = found.to_frame()
    flagged_ids = set(frame.loc[frame["flagged"], "sample_id"])
    photo_ids = {ids[i] for i in range(600, 606)}
    assert photo_ids <= flagged_ids

    dups = analysis_ws.duplicates(ds)
    pairs = dups.to_frame()
    assert {tuple(sorted(p)) for p in pairs[["a", "b"]].to_numpy()} >= {("s0004", "s0005")}
    assert pairs.loc[(pairs["a"].isin(["s0004", "s0005"])), "cross_split"].all()
    assert analysis_ws.duplicates(ds).cached

    labels = analysis_ws.mislabels(ds)
    table = labels.to_frame().set_index("sample_id")
    assert table.loc[ids[600:], "score"].isna().all()
    assert analysis_ws.mislabels(ds).cached

    for computed in (found, dups, labels):
        json.dumps(computed.to_dict(), allow_nan=False)


def test_a_stored_result_opens_without_the_graph(dataset) -> None:
    """A cached analysis needs the graph's key, not its arrays: with the graph's files gone,
    the stored results still open (and the graph is not rebuilt); a recompute rebuilds it."""
    import shutil

    ds, _, _ = dataset
    computed = [analysis_ws.outliers(ds), analysis_ws.duplicates(ds), analysis_ws.mislabels(ds)]
    graph_dir = ds.root / "artefacts" / "knn"
    assert any(graph_dir.iterdir())
    shutil.rmtree(graph_dir)
    again = [analysis_ws.outliers(ds), analysis_ws.duplicates(ds), analysis_ws.mislabels(ds)]
    assert all(c.cached for c in again) and [c.key for c in again] == [c.key for c in computed]
    assert not graph_dir.exists()
    assert not analysis_ws.outliers(ds, recompute=True).cached
    assert any(graph_dir.iterdir())


def test_mislabel_cache_follows_label_edits(dataset) -> None:
    ds, _, _ = dataset
    before = analysis_ws.mislabels(ds)
    samples = ds.samples()
    samples.loc[0, "label"] = "9" if samples.loc[0, "label"] != "9" else "0"
    ds.write_samples(samples)
    after = analysis_ws.mislabels(ds)
    assert not after.cached and after.key != before.key


@pytest.mark.slow
def test_projection_is_cached(dataset) -> None:
    ds, _, _ = dataset
    first = analysis_ws.project(ds)
    second = analysis_ws.project(ds)
    assert second.cached
    np.testing.assert_array_equal(first.result.coords, second.result.coords)
    frame = second.to_frame()
    assert list(frame.columns[:3]) == ["sample_id", "x", "y"] and len(frame) == 606
    json.dumps(second.to_dict(), allow_nan=False)


@pytest.mark.slow
def test_a_first_map_reuses_the_axes_of_the_index_its_graph_builds(
    dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a fresh HNSW-sized set, the map's PCA is the index's, fitted once: the graph (and so
    the index and its axes) is built before the map asks for them."""
    ds, _, _ = dataset
    from shoal.analysis import knn

    for module in (analysis_ws, knn):
        monkeypatch.setattr(module, "EXACT_MAX_SAMPLES", 100)
    computed = analysis_ws.project(ds)
    assert not computed.cached and computed.result.params["pca_fitted"] == "given"


def test_similar_by_ids_and_vector(dataset) -> None:
    ds, vectors, ids = dataset
    by_id = analysis_ws.similar(ds, sample_ids=["s0004"], k=3)
    hits = by_id.to_frame()
    assert hits.loc[0, "sample_id"] == "s0005" and hits.loc[0, "distance"] < 1e-6
    assert "s0004" not in set(hits["sample_id"])
    by_vector = analysis_ws.similar(ds, vector=vectors[600], k=1)
    assert by_vector.to_frame().loc[0, "sample_id"] == "s0600"
    with pytest.raises(StoreError, match="unknown sample"):
        analysis_ws.similar(ds, sample_ids=["nope"], k=3)
