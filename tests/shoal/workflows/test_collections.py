"""Grow a collection by similarity, in its own dataset and in another one (real embeddings)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shoal.cli import main
from shoal.ingest.embeddings import create_from_embeddings
from shoal.store import StoreError, Workspace
from shoal.store.collections import Collections
from shoal.workflows.collections import grow

SANDAL = 5  # Fashion-MNIST class


def _dataset(
    ws: Workspace, name: str, vectors: np.ndarray, labels: np.ndarray, folder: Path
) -> None:
    ids = [f"{name}-{i}" for i in range(len(vectors))]
    np.save(folder / f"{name}.npy", vectors)
    (folder / f"{name}.txt").write_text("\n".join(ids))
    pd.DataFrame({"sample_id": ids, "label": [str(v) for v in labels]}).to_csv(
        folder / f"{name}.csv", index=False
    )
    create_from_embeddings(
        ws,
        name,
        folder / f"{name}.npy",
        metadata_file=folder / f"{name}.csv",
        ids_file=folder / f"{name}.txt",
    )


@pytest.fixture
def workspace(tmp_path: Path, real: dict[str, np.ndarray]) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    _dataset(ws, "labelled", real["fmnist"][:1000], real["fmnist_labels"][:1000], tmp_path)
    _dataset(ws, "pool", real["fmnist_test"][:1000], real["fmnist_test_labels"][:1000], tmp_path)
    samples = ws.open("labelled").samples()
    sandals = samples.loc[samples["label"] == str(SANDAL), "sample_id"].head(15).tolist()
    Collections(ws.open("labelled")).create("sandals", sandals)
    return ws


def test_more_like_these_finds_the_same_kind_in_another_dataset(workspace: Workspace) -> None:
    found = grow(workspace.open("labelled"), "sandals", target=workspace.open("pool"), k=30)
    assert len(found) == 30 and found["distance"].is_monotonic_increasing
    assert (found["label"] == str(SANDAL)).mean() >= 0.8  # real embeddings: same kind of thing
    members = set(Collections(workspace.open("labelled")).get("sandals").ids)
    assert set(found["nearest_member"]) <= members
    cut = float(found["distance"].iloc[9])
    within = grow(
        workspace.open("labelled"), "sandals", target=workspace.open("pool"), k=30, max_distance=cut
    )
    assert (within["distance"] <= cut).all() and len(within) >= 10


def test_in_its_own_dataset_members_are_never_found_again(workspace: Workspace) -> None:
    found = grow(workspace.open("labelled"), "sandals", k=40)
    members = set(Collections(workspace.open("labelled")).get("sandals").ids)
    assert not members & set(found["sample_id"]) and len(found) == 40
    assert (found["label"] == str(SANDAL)).mean() >= 0.8


def test_members_read_in_small_blocks_give_the_same_list(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shoal.workflows.collections as collections

    whole = grow(workspace.open("labelled"), "sandals", target=workspace.open("pool"), k=30)
    monkeypatch.setattr(collections, "BLOCK_ROWS", 4)  # 15 members: four blocks
    blocked = grow(workspace.open("labelled"), "sandals", target=workspace.open("pool"), k=30)
    pd.testing.assert_frame_equal(blocked, whole)


def test_sets_from_different_models_are_refused(
    workspace: Workspace, tmp_path: Path, real: dict[str, np.ndarray]
) -> None:
    _dataset(
        workspace, "other", real["fmnist"][:50, :64].copy(), real["fmnist_labels"][:50], tmp_path
    )
    with pytest.raises(StoreError, match="come from different models"):
        grow(workspace.open("labelled"), "sandals", target=workspace.open("other"))


def test_the_cli_grows_into_the_pool_and_saves_it(
    workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(workspace.root)
    args = ["collections", "grow", "labelled", "sandals", "--from", "pool", "--k", "12"]
    assert main([*args, "--save-as", "sandals-to-label", "--workspace", root]) == 0
    out = capsys.readouterr().out
    assert "12 samples of 'pool' nearest to 'sandals'" in out
    assert "collection 'sandals-to-label' of 'pool': 12 samples" in out
    saved = Collections(workspace.open("pool")).get("sandals-to-label")
    assert saved.provenance["grown_from"] == "labelled/sandals"
    assert main([*args, "--add", "--workspace", root]) == 2
    assert "use --save-as" in capsys.readouterr().err
