"""A collection as a filter: its rows in any table, the ``collection=NAME`` clause, a comparison
with a collection as one side, and a similarity search among its members. No Streamlit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shoal.store import StoreError, Workspace
from shoal.store.collections import Collection, Collections
from shoal.workflows import analyse
from shoal.workflows.collections import collection_masks, member_mask
from shoal.workflows.compare import compare_dataset
from shoal.workflows.filters import FilterError, mentions_collection, parse_filter
from shoal.workflows.selection import select

SAMPLES = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "split": ["train"] * 2 + ["test"] * 2})
#: Boxes of a detection dataset: image a holds two, c one, d one.
OBJECTS = pd.DataFrame(
    {"object_id": ["a:0", "a:1", "c:0", "d:0"], "sample_id": ["a", "a", "c", "d"]}
)


def test_a_sample_collection_covers_its_samples_and_their_boxes() -> None:
    pair = Collection("pair", ("a", "c"))
    assert member_mask(pair, SAMPLES).tolist() == [True, False, True, False]
    assert member_mask(pair, OBJECTS).tolist() == [True, True, True, False]


def test_a_box_collection_covers_its_boxes_and_the_images_holding_them() -> None:
    boxes = Collection("boxes", ("a:1", "d:0"), level="object")
    assert member_mask(boxes, OBJECTS).tolist() == [False, True, False, True]
    assert member_mask(boxes, SAMPLES, objects=OBJECTS).tolist() == [True, False, False, True]
    with pytest.raises(StoreError, match="objects table"):
        member_mask(boxes, SAMPLES)


def test_an_empty_collection_or_unknown_ids_cover_nothing() -> None:
    assert not member_mask(Collection("none", ()), SAMPLES).any()
    assert not member_mask(Collection("gone", ("zz",)), SAMPLES).any()


def test_the_collection_clause_selects_members_and_names_unknown_collections() -> None:
    masks = {"pair": np.array([1, 0, 1, 0], bool), "last": np.array([0, 0, 0, 1], bool)}
    assert parse_filter("collection=pair", SAMPLES, collections=masks).tolist() == [1, 0, 1, 0]
    assert parse_filter("collection!=pair", SAMPLES, collections=masks).tolist() == [0, 1, 0, 1]
    both = parse_filter("collection=pair,last & split=test", SAMPLES, collections=masks)
    assert both.tolist() == [0, 0, 1, 1]
    with pytest.raises(FilterError, match="no collection 'nope' \\(collections: last, pair\\)"):
        parse_filter("collection=nope", SAMPLES, collections=masks)
    with pytest.raises(FilterError, match="collection=NAME"):
        parse_filter("collection<3", SAMPLES, collections=masks)
    # A real column of that name is a column like any other.
    table = SAMPLES.assign(collection=["x", "y", "x", "y"])
    assert parse_filter("collection=x", table, collections=masks).tolist() == [1, 0, 1, 0]
    assert mentions_collection("split=train", "collection=pair") and not mentions_collection(
        "split=train", None
    )


@pytest.fixture
def dataset(workspace: Workspace):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(60, 8)).astype(np.float32)
    vectors[:20] += 3.0  # the first 20 sit apart: a collection unlike the rest
    ids = [f"img{i:03d}" for i in range(60)]
    samples = pd.DataFrame(
        {"sample_id": ids, "source": "synthetic", "path": None, "split": "train", "label": None}
    )
    ds = workspace.create("pets", samples, has_images=False)
    ds.publish_embeddings("demo", vectors, ids, model="synthetic")
    Collections(ds).create("apart", ids[:20])
    return ds


def test_collection_masks_follow_the_table(dataset) -> None:
    masks = collection_masks(dataset, dataset.samples())
    assert list(masks) == ["apart"] and masks["apart"].sum() == 20 and masks["apart"][:20].all()


def test_a_collection_is_a_side_of_a_comparison_and_its_changes_are_seen(dataset) -> None:
    computed = compare_dataset(
        dataset, reference="collection!=apart", current="collection=apart", n_permutations=49
    )
    result = computed.result
    assert len(result.current_ids) == 20 and len(result.reference_ids) == 40
    assert result.significant
    Collections(dataset).add("apart", ["img020", "img021"])
    grown = compare_dataset(
        dataset, reference="collection!=apart", current="collection=apart", n_permutations=49
    )
    assert not grown.cached and len(grown.result.current_ids) == 22
    with pytest.raises(FilterError, match="no collection 'other'"):
        compare_dataset(dataset, reference="collection=other")


def test_picks_come_from_a_collection(dataset) -> None:
    picked = select(dataset, 5, "demo", where="collection=apart", novel_vs="collection!=apart")
    assert set(picked.to_frame()["sample_id"]) <= {f"img{i:03d}" for i in range(20)}


def test_similar_searches_among_members_only(dataset) -> None:
    among = collection_masks(dataset, dataset.samples())["apart"]
    result = analyse.similar(dataset, "demo", sample_ids=["img050"], k=10, among=among).result
    assert len(result.indices) == 10 and among[result.indices].all()
    everything = analyse.similar(dataset, "demo", sample_ids=["img050"], k=10).result
    assert not among[everything.indices].all()  # a sample outside: its nearest are outside too
