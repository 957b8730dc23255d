"""The object level of a detection dataset: the level switch, box-crop galleries, and the map,
outliers and similar pages on objects (the four VOC photos of tests/fixtures/detection).

Box-crop thumbnails and object captions are tested without Streamlit in tests/shoal/app."""

from __future__ import annotations

import pytest

from shoal.app.selection import Selection
from shoal.app.thumbnails import THUMBNAIL_SIZE
from shoal.store import Workspace
from tests.app.test_pages import assert_clean, open_app


@pytest.fixture(scope="session")
def street_ws(street) -> Workspace:
    """The shared detection fixture (tests/conftest.py), its boxes embedded."""
    return street[0]


# --------------------------------------------------------------------------- pages


@pytest.mark.slow
def test_level_switch_only_for_datasets_with_objects(
    street_ws: Workspace, embedded_sample: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = open_app(street_ws, monkeypatch, page="pages/map.py").run()
    assert_clean(at)
    levels = [w for w in at.sidebar.get("segmented_control") if w.label == "Level"]
    assert len(levels) == 1 and levels[0].value == "sample"
    levels[0].set_value("object").run()
    assert_clean(at)
    assert at.query_params["level"] == ["object"] or at.query_params["level"] == "object"
    assert any("objects ·" in c.value for c in at.caption)

    plain = open_app(embedded_sample, monkeypatch, page="pages/map.py").run()
    assert_clean(plain)
    assert not [w for w in plain.sidebar.get("segmented_control") if w.label == "Level"]


def test_a_dataset_with_only_box_embeddings_opens_on_its_boxes(
    workspace: Workspace, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Box embeddings from the user's own detector, no image-level set: the pages open at the
    Objects level (Images would only say "no embeddings"), and choosing Images sticks."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shoal.ingest.embeddings import add_embeddings
    from tests.shoal.ingest.detection_fixture import import_street

    ds = import_street(workspace).open("street")
    objects = ds.objects()
    vectors = np.random.default_rng(0).normal(size=(len(objects), 16)).astype(np.float32)
    table = pa.table(
        {
            "object_id": objects["object_id"].astype(str).tolist(),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 16),
        }
    )
    pq.write_table(table, tmp_path / "boxes.parquet")
    add_embeddings(ds, tmp_path / "boxes.parquet", name="detector")

    at = open_app(workspace, monkeypatch, page="pages/map.py").run()
    assert_clean(at)
    levels = [w for w in at.sidebar.get("segmented_control") if w.label == "Level"]
    assert len(levels) == 1 and levels[0].value == "object"
    assert any(f"{len(objects)} objects" in c.value for c in at.caption)
    levels[0].set_value("sample").run()
    assert_clean(at)
    assert [w for w in at.sidebar.get("segmented_control") if w.label == "Level"][0].value == (
        "sample"
    )
    assert any("has no embeddings yet" in i.value for i in at.info)


@pytest.mark.slow
@pytest.mark.parametrize("colour", ["status", "kind", "category"])
def test_map_at_object_level_colours_by(
    street_ws: Workspace, monkeypatch: pytest.MonkeyPatch, colour: str
) -> None:
    at = open_app(
        street_ws, monkeypatch, page="pages/map.py", level="object", color=colour, sel="r:"
    ).run()
    assert_clean(at)
    n_objects = len(street_ws.open("street").objects())
    assert at.selectbox(key="view_color").value == colour
    assert any(f"{n_objects} objects" in c.value for c in at.caption)
    # Select every object: the gallery shows box crops with their object ids.
    rows = Selection.from_rows(range(n_objects), n_rows=n_objects).to_token()
    at = open_app(
        street_ws, monkeypatch, page="pages/map.py", level="object", color=colour, sel=rows
    )
    at.run()
    assert_clean(at)
    assert any(f"{n_objects:,} selected" in h.value for h in at.subheader)
    assert len(at.image) == min(n_objects, 24)  # a page of the gallery, one crop per object
    crops = list((street_ws.root / ".cache" / "thumbnails" / f"box{THUMBNAIL_SIZE}").rglob("*.jpg"))
    assert len(crops) >= len(at.image)


@pytest.mark.slow
@pytest.mark.parametrize("section", ["outliers", "duplicates", "mislabels"])
def test_outliers_page_at_object_level(
    street_ws: Workspace, monkeypatch: pytest.MonkeyPatch, section: str
) -> None:
    at = open_app(
        street_ws, monkeypatch, page="pages/outliers.py", level="object", show=section
    ).run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    if section == "outliers":
        objects = set(street_ws.open("street").objects()["object_id"].astype(str))
        shown = " ".join(str(c.value) for c in at.caption)
        assert any(object_id in shown for object_id in objects)


@pytest.mark.slow
def test_similar_page_at_object_level(
    street_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = street_ws.open("street").objects()
    person = str(objects.loc[objects["category"] == "person", "object_id"].iloc[0])
    at = open_app(
        street_ws, monkeypatch, page="pages/similar.py", level="object", mode="sample", q=person
    ).run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    shown = " ".join(str(c.value) for c in at.caption)
    assert person in shown


@pytest.mark.slow
@pytest.mark.parametrize("page", ["pages/compare.py", "pages/datasets.py", "pages/jobs.py"])
def test_other_pages_accept_the_object_level(
    street_ws: Workspace, monkeypatch: pytest.MonkeyPatch, page: str
) -> None:
    at = open_app(street_ws, monkeypatch, page=page, level="object").run()
    assert_clean(at)


@pytest.mark.slow
def test_row_metadata_of_an_object_set_is_the_objects_with_their_image_columns(
    street_ws: Workspace,
) -> None:
    from shoal.workflows.analyse import outliers, row_metadata

    ds = street_ws.open("street")
    embeddings = ds.load_embeddings(level="object")
    table = row_metadata(ds, embeddings)
    assert table["object_id"].tolist() == embeddings.ids.astype(str).tolist()
    samples = ds.samples().set_index("sample_id")
    assert table["path"].tolist() == samples.loc[table["sample_id"], "path"].tolist()
    assert set(table["status"]) <= {"tp", "fp", "fn"}
    found = outliers(ds, embeddings.info.name)
    assert len(found.result.scores) == len(table)
    assert row_metadata(ds, ds.load_embeddings())["sample_id"].tolist() == (
        ds.load_embeddings().ids.astype(str).tolist()
    )
