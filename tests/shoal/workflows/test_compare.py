"""shoal.workflows.compare and its filter language: subsets chosen by filters, aligned by id, cached."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.analysis.compare import compare
from shoal.store import Workspace
from shoal.workflows.compare import compare_dataset
from shoal.workflows.filters import FilterError, parse_filter
from tests.analysis.synthetic import shifted_gaussians

# --------------------------------------------------------------------------- filters


@pytest.fixture
def samples() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(8)],
            "split": ["train"] * 5 + ["test"] * 3,
            "label": ["cat", "dog", "cat", "bird", None, "dog", "cat", "bird"],
            "confidence": [0.9, 0.4, 0.7, np.nan, 0.2, 0.55, 0.95, 0.1],
            "class_id": [0, 1, 0, 2, 3, 1, 0, 2],
        }
    )


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("split=train", [1, 1, 1, 1, 1, 0, 0, 0]),
        ("split == test", [0, 0, 0, 0, 0, 1, 1, 1]),
        ("label=cat,dog", [1, 1, 1, 0, 0, 1, 1, 0]),
        ("label!=cat", [0, 1, 0, 1, 0, 1, 0, 1]),  # a missing label matches neither = nor !=
        ("confidence<0.5", [0, 1, 0, 0, 1, 0, 0, 1]),
        ("confidence>=0.7", [1, 0, 1, 0, 0, 0, 1, 0]),
        ("split=train & confidence>0.5", [1, 0, 1, 0, 0, 0, 0, 0]),
        ("class_id=0,2", [1, 0, 1, 1, 0, 0, 1, 1]),
        ("label='cat'", [1, 0, 1, 0, 0, 0, 1, 0]),
        ("*", [1] * 8),
    ],
)
def test_parse_filter_selects_the_right_rows(samples, expr, expected):
    np.testing.assert_array_equal(parse_filter(expr, samples), np.array(expected, bool))


def test_parse_filter_accepts_a_mapping(samples):
    mask = parse_filter({"split": "test", "label": ["cat", "bird"]}, samples)
    np.testing.assert_array_equal(mask, [0, 0, 0, 0, 0, 0, 1, 1])


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("splt=train", "unknown column 'splt'; columns are: sample_id, split"),
        ("label=cta", "no sample has label='cta'; values of 'label': bird, cat, dog"),
        ("label<3", "column 'label' is not numeric"),
        ("confidence<high", "'high' is not a number"),
        ("split", "cannot read filter clause 'split'"),
        ("", "empty filter"),
        ("label=", "empty value"),
        ("label='cat", "unclosed quote"),
    ],
)
def test_parse_filter_errors_name_the_culprit(samples, expr, message):
    with pytest.raises(FilterError, match=re.escape(message)):
        parse_filter(expr, samples)


_VALUE = (
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-. ", min_size=1, max_size=8)
    .map(str.strip)
    .filter(bool)
)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(_VALUE, min_size=1, max_size=12),
    picks=st.lists(st.integers(0, 11), min_size=1, max_size=3),
)
def test_parse_filter_equality_matches_isin(values, picks):
    frame = pd.DataFrame({"tag": pd.Series(values, dtype=object)})
    chosen = sorted({values[i % len(values)] for i in picks})
    expr = "tag=" + ",".join(f"'{v}'" for v in chosen)
    np.testing.assert_array_equal(parse_filter(expr, frame), frame["tag"].isin(chosen).to_numpy())
    np.testing.assert_array_equal(
        parse_filter(expr.replace("=", "!=", 1), frame), ~frame["tag"].isin(chosen).to_numpy()
    )


@settings(max_examples=60, deadline=None)
@given(
    numbers=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=20),
    threshold=st.floats(-1e6, 1e6, allow_nan=False),
    op=st.sampled_from(["<", "<=", ">", ">="]),
)
def test_parse_filter_comparisons_match_numpy(numbers, threshold, op):
    frame = pd.DataFrame({"score": numbers})
    expected = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}[op](
        np.array(numbers), float(repr(threshold))
    )
    np.testing.assert_array_equal(parse_filter(f"score{op}{threshold!r}", frame), expected)


# --------------------------------------------------------------------------- the workflow


def _dataset_with_embeddings(workspace, *, shift: float):
    reference, current = shifted_gaussians(150, 100, shift=shift, dim=16)
    vectors = np.vstack([reference, current])
    samples = pd.DataFrame(
        {
            "sample_id": [f"img{i:04d}" for i in range(250)],
            "source": "synthetic",
            "path": None,
            "split": ["train"] * 150 + ["test"] * 100,
            "label": np.where(np.arange(250) % 2, "cat", "dog"),
        }
    )
    ds = workspace.create("shifted", samples, has_images=False)
    # Store rows in reverse order: the orchestrator must align by sample id, not position.
    ds.publish_embeddings(
        "demo", vectors[::-1], samples["sample_id"][::-1].tolist(), model="synthetic"
    )
    return ds, reference, current


def test_compare_dataset_selects_by_filter_aligns_ids_and_caches(workspace):
    ds, reference, current = _dataset_with_embeddings(workspace, shift=1.0)
    computed = compare_dataset(ds, reference="split=train", current="split=test", n_permutations=99)
    result = computed.result
    assert not computed.cached and list(computed.sample_ids) == list(result.current_ids)
    direct = compare(reference, current, n_permutations=99)
    assert result.p_value == direct.p_value and result.statistic == pytest.approx(direct.statistic)
    np.testing.assert_allclose(result.novelty, direct.novelty)
    assert result.current_ids[0] == "img0150" and len(result.reference_ids) == 150
    assert result.params["reference"] == "split=train" and result.params["embedding"] == "demo"
    frame = result.novelty_frame()
    assert (
        frame["sample_id"].iloc[0] == "img0150"
        and frame["nearest_reference_id"].str.startswith("img").all()
    )

    (artefact,) = (ds.root / "artefacts" / "compare").glob("*.npz")
    again = compare_dataset(ds, reference="split=train", current="split=test", n_permutations=99)
    assert again.cached
    cached = again.result
    assert cached.p_value == result.p_value
    np.testing.assert_array_equal(cached.current_ids, result.current_ids)
    assert len(list((ds.root / "artefacts" / "compare").glob("*.npz"))) == 1
    # Another selection (or the same one spelled differently) is another artefact.
    rest = compare_dataset(ds, reference="split=train", current=None, n_permutations=99).result
    assert rest.params["current"] == "not (split=train)" and rest.p_value == result.p_value
    compare_dataset(
        ds, reference="split=train", current="label=cat & split=test", n_permutations=99
    )
    assert len(list((ds.root / "artefacts" / "compare").glob("*.npz"))) == 3
    assert artefact.exists()
    fresh = compare_dataset(
        ds, reference="split=train", current="split=test", n_permutations=99, recompute=True
    ).result
    assert fresh.p_value == result.p_value


def test_compare_dataset_refuses_overlap_and_tiny_subsets(workspace):
    ds, _, _ = _dataset_with_embeddings(workspace, shift=0.0)
    with pytest.raises(FilterError, match="share 75 samples"):
        compare_dataset(ds, reference="split=train", current="label=cat")
    with pytest.raises(FilterError, match="selects 0 samples"):
        compare_dataset(ds, reference="split=train", current="label=cat & label=dog")
    with pytest.raises(FilterError, match="unknown column 'spilt'"):
        compare_dataset(ds, reference="spilt=train", current="split=test")


def test_compare_at_object_level_selects_boxes_by_their_columns_and_their_images(street, tmp_path):
    """With an object-level set the sides are boxes: filtered on box columns (category) or on
    their image's (sample_id, split), with object ids in the result."""
    import shutil

    ws, _, _ = street
    copy = Workspace(shutil.copytree(ws.root, tmp_path / "ws"))  # results are cached into it
    ds = copy.open("street")
    objects = ds.objects()
    boxes = "efficientnet_lite0-objects"
    person = (objects["category"] == "person").to_numpy()
    result = compare_dataset(
        ds, reference="category=person", current="category!=person", embedding=boxes
    ).result
    assert sorted(result.reference_ids) == sorted(objects.loc[person, "object_id"])
    assert sorted(result.current_ids) == sorted(objects.loc[~person, "object_id"])
    assert (result.n_reference, result.n_current) == (person.sum(), (~person).sum())
    assert 0.0 <= result.p_value <= 1.0 and len(result.novelty_flags) == result.n_current

    first = str(ds.samples()["sample_id"].iloc[0])
    in_first = (objects["sample_id"].astype(str) == first).to_numpy()
    by_image = compare_dataset(ds, reference=f"sample_id={first}", embedding=boxes).result
    assert sorted(by_image.reference_ids) == sorted(objects.loc[in_first, "object_id"])
    assert sorted(by_image.current_ids) == sorted(objects.loc[~in_first, "object_id"])

    with pytest.raises(FilterError, match=r"share \d+ boxes"):
        compare_dataset(ds, reference="category=person", current="kind=label", embedding=boxes)
