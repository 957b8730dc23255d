"""A collection opened as a filter (sidebar or ``?collection=NAME``) on every page that shows
samples, under Streamlit's AppTest on the real sample dataset. The masks themselves are tested
without Streamlit in tests/shoal/workflows/test_collection_masks.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from shoal.app.scatter import read_map_payload
from shoal.app.selection import Selection
from shoal.store import Workspace
from shoal.store.collections import Collections
from tests.app.test_pages import assert_clean, open_app

NAME = "picked"


@pytest.fixture(scope="module")
def shelf_ws(tmp_path_factory: pytest.TempPathFactory, embedded_sample: Workspace) -> Workspace:
    """A copy of the sample workspace with a collection of every 10th sample."""
    workspace = Workspace(tmp_path_factory.mktemp("collection-ws") / "ws")
    shutil.copytree(embedded_sample.root, workspace.root)
    samples = workspace.open("sample").samples()
    Collections(workspace.open("sample")).create(
        NAME, samples["sample_id"].iloc[::10].tolist(), note="every 10th"
    )
    return workspace


def members(workspace: Workspace) -> set[str]:
    return set(Collections(workspace.open("sample")).get(NAME).ids)


def n_samples(workspace: Workspace) -> int:
    return len(workspace.open("sample").samples())


def tile_ids(at: AppTest, prefix: str) -> list[str]:
    """The ids under the tiles whose caption starts with ``prefix`` (the id is the last line;
    captions are escaped markdown)."""
    captions = [c.value.replace("\\", "") for c in at.caption]
    return [c.split("  \n")[-1] for c in captions if c.startswith(prefix)]


def shows_only_members(at: AppTest, workspace: Workspace) -> None:
    size = len(members(workspace))
    assert any(
        f"showing its {size} of {n_samples(workspace)} samples" in c.value for c in at.caption
    )
    assert at.sidebar.selectbox(key="_collection_picker").value == NAME
    assert at.query_params["collection"] == NAME
    share = [c.value for c in at.sidebar.code]
    assert share and f"collection={NAME}" in share[0]


@pytest.mark.slow
def test_the_map_draws_only_the_collection(
    shelf_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = len(members(shelf_ws))
    at = open_app(shelf_ws, monkeypatch, page="pages/map.py", ds="sample", collection=NAME).run()
    assert_clean(at)
    shows_only_members(at, shelf_ws)
    assert any(c.value.startswith(f"{size} samples · UMAP of") for c in at.caption)
    # A selection of rows 0..9 keeps the one member among them (row 0).
    token = Selection.from_rows(range(10), n_rows=n_samples(shelf_ws)).to_token()
    at = open_app(
        shelf_ws, monkeypatch, page="pages/map.py", ds="sample", collection=NAME, sel=token
    ).run()
    assert_clean(at)
    assert [h.value for h in at.subheader][0] == "1 selected"


@pytest.mark.slow
def test_the_map_colours_by_collection(
    shelf_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    colour = f"collection: {NAME}"
    at = open_app(shelf_ws, monkeypatch, page="pages/map.py", ds="sample", color=colour).run()
    assert_clean(at)
    assert at.selectbox(key="view_color").value == colour
    assert "collection" not in at.query_params  # colouring by one is not filtering by it
    header, _, codes = read_map_payload(at.get("bidi_component")[0].proto.bytes)
    legend = {item[0]: item[2] for item in header["legend"]["items"]}
    assert set(legend) == {"in the collection", "other"}
    assert legend["in the collection"] == -(-len(codes) // 10)  # every 10th sample
    assert len(codes) == sum(legend.values())


@pytest.mark.slow
def test_the_sidebar_picks_a_collection_and_the_link_follows(
    shelf_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = open_app(shelf_ws, monkeypatch, page="pages/outliers.py", ds="sample").run()
    assert_clean(at)
    assert at.sidebar.selectbox(key="_collection_picker").value == ""
    assert "collection" not in at.query_params
    at.sidebar.selectbox(key="_collection_picker").select(NAME).run()
    assert_clean(at)
    shows_only_members(at, shelf_ws)


@pytest.mark.slow
def test_outliers_list_only_members_but_score_the_whole_dataset(
    shelf_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = open_app(
        shelf_ws, monkeypatch, page="pages/outliers.py", ds="sample", collection=NAME
    ).run()
    assert_clean(at)
    shows_only_members(at, shelf_ws)
    assert any("computed on the whole dataset" in c.value for c in at.caption)
    assert any(f"of {len(members(shelf_ws))} members (" in c.value for c in at.caption)
    ranked = tile_ids(at, "#")
    assert ranked and set(ranked) <= members(shelf_ws)


@pytest.mark.slow
@pytest.mark.parametrize("section", ["duplicates", "mislabels"])
def test_the_other_issue_sections_open_with_a_collection(
    shelf_ws: Workspace, monkeypatch: pytest.MonkeyPatch, section: str
) -> None:
    at = open_app(
        shelf_ws,
        monkeypatch,
        page="pages/outliers.py",
        ds="sample",
        collection=NAME,
        show=section,
    ).run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    shows_only_members(at, shelf_ws)
    if section == "mislabels":
        assert any(c.value.endswith("of them in the collection.") for c in at.caption)
        flagged = tile_ids(at, "labelled ")
        assert set(flagged) <= members(shelf_ws)


@pytest.mark.slow
def test_similar_searches_among_members(
    shelf_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    inside = members(shelf_ws)
    query = next(s for s in shelf_ws.open("sample").samples()["sample_id"] if s not in inside)
    at = open_app(
        shelf_ws,
        monkeypatch,
        page="pages/similar.py",
        ds="sample",
        collection=NAME,
        q=query,
        k="48",
    ).run()
    assert_clean(at)
    shows_only_members(at, shelf_ws)
    assert [h.value for h in at.subheader] == [
        f"{len(inside)} nearest"
    ]  # more asked for than it holds
    found = tile_ids(at, "#")
    assert found and set(found) <= inside


@pytest.mark.slow
def test_compare_takes_the_collection_as_a_side(
    shelf_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = open_app(
        shelf_ws, monkeypatch, page="pages/compare.py", ds="sample", collection=NAME
    ).run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="compare_ref_choice").value == f"collection!={NAME}"
    assert at.selectbox(key="compare_cur_choice").value == f"collection={NAME}"
    size = len(members(shelf_ws))
    sides = next(m for m in at.metric if m.label == "Reference / current")
    assert sides.value == f"{n_samples(shelf_ws) - size:,} / {size:,}"


@pytest.mark.slow
def test_an_unknown_collection_in_a_link_is_ignored_with_a_warning(
    shelf_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = open_app(
        shelf_ws, monkeypatch, page="pages/outliers.py", ds="sample", collection="nope"
    ).run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    assert any(
        "Ignored the link's collection=nope: no such collection in sample"
        in w.value.replace("\\", "")
        for w in at.warning
    )
    assert [t.value for t in at.title] == ["Outliers & issues"]
    assert at.sidebar.selectbox(key="_collection_picker").value == ""
    assert "collection" not in at.query_params
    assert len(tile_ids(at, "#")) == 8  # the full list's first page


def test_the_collection_picker_is_absent_without_collections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = open_app(Workspace(tmp_path / "empty"), monkeypatch, page="pages/map.py").run()
    assert_clean(at)
    assert not [s for s in at.sidebar.selectbox if s.key == "_collection_picker"]


@pytest.mark.slow
def test_a_collection_of_images_filters_their_boxes(
    tmp_path: Path, street, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = Workspace(tmp_path / "ws")  # a copy: this test writes a collection
    shutil.copytree(street[0].root, workspace.root)
    objects = workspace.open("street").objects()
    image = str(objects["sample_id"].iloc[0])
    Collections(workspace.open("street")).create("one-photo", [image])
    boxes = int((objects["sample_id"].astype(str) == image).sum())
    at = open_app(
        workspace,
        monkeypatch,
        page="pages/map.py",
        ds="street",
        level="object",
        collection="one-photo",
    ).run()
    assert_clean(at)
    assert any(f"showing its {boxes} of {len(objects)} objects" in c.value for c in at.caption)
    assert any(c.value.startswith(f"{boxes} objects · ") for c in at.caption)
