"""Collections: named sets of a dataset's samples, kept on disk, changed by several people."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shoal.cli import main
from shoal.ingest.embeddings import create_from_embeddings
from shoal.store import StoreError, Workspace
from shoal.store.collections import CollectionNotFoundError, Collections


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ids = [f"s{i:03d}" for i in range(400)]
    np.save(tmp_path / "emb.npy", np.random.default_rng(0).normal(size=(400, 8)).astype("float32"))
    (tmp_path / "ids.txt").write_text("\n".join(ids))
    pd.DataFrame({"sample_id": ids, "label": ["cat", "dog"] * 200}).to_csv(
        tmp_path / "meta.csv", index=False
    )
    ws = Workspace(tmp_path / "ws")
    create_from_embeddings(
        ws,
        "pets",
        tmp_path / "emb.npy",
        metadata_file=tmp_path / "meta.csv",
        ids_file=tmp_path / "ids.txt",
    )
    return ws


def test_a_collection_keeps_its_ids_note_and_story(workspace: Workspace) -> None:
    shelf = Collections(workspace.open("pets"))
    made = shelf.create(
        "blurry",
        ["s003", "s001", "s003"],
        note="night shots",
        provenance={"page": "map"},
        created_by="ana",
    )
    assert made.ids == ("s003", "s001") and made.size == 2  # each once, in order
    again = Collections(workspace.open("pets")).get("blurry")  # read back from disk
    assert again == made and again.provenance == {"page": "map"} and again.created_by == "ana"
    assert shelf.add("blurry", ["s001", "s010"]).ids == ("s003", "s001", "s010")
    assert shelf.remove("blurry", ["s003"]).ids == ("s001", "s010")
    assert shelf.set_note("blurry", "dark").note == "dark"
    assert shelf.rename("blurry", "dark").name == "dark" and shelf.names() == ["dark"]
    shelf.delete("dark")
    assert shelf.names() == []


def test_bad_requests_are_refused_with_the_reason(workspace: Workspace) -> None:
    shelf = Collections(workspace.open("pets"))
    shelf.create("a", ["s000"])
    with pytest.raises(StoreError, match="already has a collection 'a'"):
        shelf.create("a", ["s001"])
    with pytest.raises(
        StoreError, match="1 id\\(s\\) are not samples of dataset 'pets', e.g. 'nope'"
    ):
        shelf.add("a", ["s001", "nope"])
    assert shelf.get("a").ids == ("s000",)  # nothing half-added
    with pytest.raises(CollectionNotFoundError, match="no collection 'b' \\(collections: a\\)"):
        shelf.get("b")
    with pytest.raises(StoreError, match="not allowed"):
        shelf.create("../escape", ["s000"])
    with pytest.raises(StoreError, match="no objects"):
        shelf.create("boxes", ["s000"], level="object")


def _add_many(root: str, worker: int) -> None:
    shelf = Collections(Workspace(Path(root)).open("pets"))
    for start in range(0, 200, 10):
        shelf.add("shared", [f"s{worker * 200 + i:03d}" for i in range(start, start + 10)])


def test_two_people_adding_at_once_lose_nothing(workspace: Workspace) -> None:
    Collections(workspace.open("pets")).create("shared", [])
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_add_many, args=(str(workspace.root), w)) for w in (0, 1)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    assert sorted(Collections(workspace.open("pets")).get("shared").ids) == [
        f"s{i:03d}" for i in range(400)
    ]


def test_the_cli_creates_grows_lists_and_exports(
    workspace: Workspace, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = str(workspace.root)
    assert (
        main(
            [
                "collections",
                "create",
                "pets",
                "cats",
                "--where",
                "label=cat",
                "--note",
                "all cats",
                "--workspace",
                root,
            ]
        )
        == 0
    )
    assert "collection 'cats' of 'pets': 200 samples" in capsys.readouterr().out
    (tmp_path / "more.txt").write_text("s001\ns003\n")
    assert (
        main(
            [
                "collections",
                "add",
                "pets",
                "cats",
                "--ids-file",
                str(tmp_path / "more.txt"),
                "--workspace",
                root,
            ]
        )
        == 0
    )
    assert "202 samples" in capsys.readouterr().out
    assert main(["collections", "list", "pets", "--workspace", root]) == 0
    assert "cats\t202 samples" in capsys.readouterr().out
    out = tmp_path / "cats.csv"
    assert (
        main(["collections", "show", "pets", "cats", "--out", str(out), "--workspace", root]) == 0
    )
    table = pd.read_csv(out)
    assert len(table) == 202 and table["sample_id"].iloc[-1] == "s003"
    assert main(["collections", "add", "pets", "cats", "--ids", "nope", "--workspace", root]) == 2
    assert "not samples of dataset 'pets'" in capsys.readouterr().err
