"""The object level of a detection dataset: the level switch, box-crop thumbnails, and the map,
outliers and similar pages on objects (the four VOC photos of tests/fixtures/detection)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shoal import jobs, view
from shoal.ingest.detection import import_coco
from shoal.store import Workspace
from tests.app.test_pages import assert_clean, open_app

DETECTION = Path(__file__).resolve().parents[1] / "fixtures" / "detection"


@pytest.fixture(scope="session")
def street_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The fixture imported with predictions, its boxes embedded by a real 'embed-objects' job."""
    ws = Workspace(tmp_path_factory.mktemp("objects_ws"))
    import_coco(
        ws,
        DETECTION / "detection.json",
        images=DETECTION,
        dataset="street",
        predictions=DETECTION / "predictions.json",
    )
    record = jobs.run_inline(
        ws, "embed-objects", dataset="street", params={"model": "efficientnet_lite0"}
    )
    assert record.state == "done", record.error
    return ws


# --------------------------------------------------------------------------- box thumbnails


def test_box_thumbnail_crops_the_box_and_outlines_it(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    source = np.zeros((200, 300, 3), dtype=np.uint8)
    source[50:150, 100:200] = (0, 0, 255)  # a blue square, the object
    image = tmp_path / "scene.png"
    Image.fromarray(source).save(image)

    data = view.box_thumbnail(ws, image, (100, 50, 200, 150), size=120, margin=0.2)
    tile = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
    assert tile.shape == (120, 120, 3)
    # The crop is the box plus 20 px each side: 140 px -> 120, so the box spans ~17..103.
    centre = tile[50:70, 50:70]
    assert (centre[..., 2] > 200).all() and (centre[..., :2] < 60).all()
    border = tile[18:102, 17]  # the box's left edge: drawn in the outline colour
    reddish = (border[:, 0] > 150) & (border[:, 1] < 110) & (border[:, 2] < 140)
    assert reddish.mean() > 0.9
    margin = tile[60, 5]  # context around the box (black in the source), not white padding
    assert (margin < 40).all()

    cached = view.box_thumbnail_path(ws, image, (100, 50, 200, 150), size=120, margin=0.2)
    assert cached.exists() and cached.read_bytes() == data
    other = view.box_thumbnail(ws, image, (0, 0, 50, 50), size=120, margin=0.2)
    assert other != data


def test_box_thumbnail_of_a_box_running_off_the_image(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    image = tmp_path / "scene.png"
    Image.fromarray(np.full((60, 80, 3), 128, dtype=np.uint8)).save(image)
    data = view.box_thumbnail(ws, image, (-20, 40, 120, 90), size=64)
    assert Image.open(io.BytesIO(data)).size == (64, 64)


def test_object_rows_are_described_by_category_kind_and_status() -> None:
    import pandas as pd

    objects = pd.DataFrame(
        {
            "object_id": ["o1", "o2"],
            "sample_id": ["s1", "s1"],
            "kind": ["label", "inference"],
            "category": ["person", "car"],
            "x0": [1.0, 2.0], "y0": [1.0, 2.0], "x1": [5.0, 6.0], "y1": [5.0, 6.0],
            "score": [np.nan, 0.9],
            "status": ["fn", "fp"],
            "match_id": [None, None],
        }
    )  # fmt: skip
    assert view.row_ids(objects).tolist() == ["o1", "o2"]
    assert view.tile_caption(objects, 1) == ["car · inference · fp · score 0.90", "o2"]
    assert view.object_box(objects, 0) == (1.0, 1.0, 5.0, 5.0)
    colourings = view.metadata_colourings(objects)
    assert {"category", "kind", "status"} <= set(colourings)
    assert not {"x0", "object_id", "match_id"} & set(colourings)
    assert dict(colourings["status"].colours) == view.STATUS_COLOURS


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
    rows = view.Selection.from_rows(range(n_objects), n_rows=n_objects).to_token()
    at = open_app(
        street_ws, monkeypatch, page="pages/map.py", level="object", color=colour, sel=rows
    )
    at.run()
    assert_clean(at)
    assert any(f"{n_objects:,} selected" in h.value for h in at.subheader)
    assert len(at.image) == min(n_objects, 24)  # a page of the gallery, one crop per object
    crops = list(
        (street_ws.root / ".cache" / "thumbnails" / f"box{view.THUMBNAIL_SIZE}").rglob("*.jpg")
    )
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
