"""Pick what to label next on a stored set of real embeddings, through the workflow and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shoal.cli import main
from shoal.ingest.embeddings import create_from_embeddings
from shoal.store import Workspace
from shoal.workflows.filters import FilterError
from shoal.workflows.selection import select


@pytest.fixture(scope="module")
def fashion(tmp_path_factory: pytest.TempPathFactory, real: dict[str, np.ndarray]) -> Workspace:
    """2,000 real Fashion-MNIST embeddings: half of classes 0-6 are 'train', the rest 'pool'
    (so the pool holds every class, and classes 7-9 only the pool)."""
    folder = tmp_path_factory.mktemp("fashion")
    vectors, labels = real["fmnist"][:2000], real["fmnist_labels"][:2000]
    ids = [f"s{i}" for i in range(len(vectors))]
    np.save(folder / "emb.npy", vectors)
    (folder / "ids.txt").write_text("\n".join(ids))
    pd.DataFrame(
        {
            "sample_id": ids,
            "label": [str(v) for v in labels],
            "split": np.where((labels < 7) & (np.arange(len(labels)) % 2 == 0), "train", "pool"),
        }
    ).to_csv(folder / "meta.csv", index=False)
    workspace = Workspace(folder / "ws")
    create_from_embeddings(
        workspace,
        "fashion",
        folder / "emb.npy",
        metadata_file=folder / "meta.csv",
        ids_file=folder / "ids.txt",
    )
    return workspace


def test_picks_cover_what_the_reference_lacks(fashion: Workspace) -> None:
    picked = select(fashion.open("fashion"), 30, novel_vs="split=train")
    frame = picked.to_frame()
    assert picked.result.method == "k-center" and len(frame) == 30
    assert (frame["split"] == "pool").all()  # never a reference sample
    # The pool holds every class, about a third of it the three the reference lacks: the
    # most novel picks come from those.
    pool = fashion.open("fashion").samples().query("split == 'pool'")
    base_rate = pool["label"].astype(int).ge(7).mean()
    assert base_rate < 0.6 and frame["label"].astype(int).ge(7).mean() >= 0.8
    assert frame["sample_id"].is_unique and (frame["pick_distance"] > 0).all()


def test_covered_samples_are_never_picked_and_subsets_get_representatives(
    fashion: Workspace,
) -> None:
    ds = fashion.open("fashion")
    picked = select(ds, 20, covered="split=train").to_frame()
    assert (picked["split"] == "pool").all()
    cats = select(ds, 5, where="label=3").to_frame()
    assert (cats["label"] == "3").all() and len(cats) == 5
    with pytest.raises(FilterError, match="the candidates"):
        select(ds, 5, where="colour=red")


def test_the_cli_writes_the_picks(
    fashion: Workspace, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = str(fashion.root)
    out = tmp_path / "picks.csv"
    args = ["select", "fashion", "--n", "12", "--novel-vs", "split=train", "--out", str(out)]
    assert main([*args, "--workspace", root]) == 0
    text = capsys.readouterr().out
    n_train = int((fashion.open("fashion").samples()["split"] == "train").sum())
    assert f"picked 12 of {2000 - n_train:,} candidates (k-center, {n_train:,} covered" in text
    table = pd.read_csv(out)
    assert len(table) == 12 and list(table.columns[:2]) == ["pick", "sample_id"]
    assert main(["select", "fashion", "--n", "3", "--json", "--workspace", root]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["n_selected"] == 3 and payload["method"] == "k-means"
    assert main(["select", "fashion", "--where", "label=nope", "--workspace", root]) == 2
    assert "the candidates (label=nope)" in capsys.readouterr().err
