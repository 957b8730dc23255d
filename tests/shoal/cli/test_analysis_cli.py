"""The analysis sub-commands of the ``shoal`` CLI (shoal/cli/analysis_cmds.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from shoal.cli import main
from shoal.store import Workspace


@pytest.fixture
def ws_root(tmp_path, real):
    rng = np.random.default_rng(1)
    rows = rng.choice(len(real["fmnist"]), 400, replace=False)
    vectors = np.concatenate([real["fmnist"][rows], real["photos"][:4]])
    vectors[1] = vectors[0]
    ids = [f"s{i}" for i in range(len(vectors))]
    samples = pd.DataFrame(
        {
            "sample_id": ids,
            "source": "fixture",
            "path": None,
            "split": ["train", "test"] * (len(ids) // 2),
            "label": [str(v) for v in real["fmnist_labels"][rows]] + [None] * 4,
        }
    )
    root = tmp_path / "ws"
    ds = Workspace(root).create("fx", samples, has_images=False)
    ds.publish_embeddings("lite0", vectors, ids, model="efficientnet_lite0")
    return str(root)


def run(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_outliers_duplicates_mislabels_similar(capsys, ws_root, tmp_path) -> None:
    out = run(capsys, "outliers", "fx", "--workspace", ws_root)
    assert "flagged as outliers" in out and "s403" in out
    payload = json.loads(
        run(capsys, "outliers", "fx", "--workspace", ws_root, "--json", "--top", "2")
    )
    assert payload["n_flagged"] >= 4 and len(payload["flagged"]) == 2
    ranked = payload["ranked"]
    assert len(ranked) == 2 and ranked[0]["score"] >= ranked[1]["score"] and ranked[0]["flagged"]
    assert len(ranked[0]["neighbours"]) == 5 and ranked[0]["neighbours"][0]["distance"] >= 0

    out = run(capsys, "duplicates", "fx", "--workspace", ws_root, "--out", str(tmp_path / "d.csv"))
    assert "LEAK" in out and "cross splits" in out
    assert pd.read_csv(tmp_path / "d.csv").loc[0, ["a", "b"]].tolist() == ["s0", "s1"]

    payload = json.loads(run(capsys, "mislabels", "fx", "--workspace", ws_root, "--json"))
    assert payload["dataset"] == "fx" and "class_thresholds" in payload

    payload = json.loads(
        run(
            capsys,
            "similar",
            "fx",
            "--workspace",
            ws_root,
            "--sample-id",
            "s0",
            "-k",
            "3",
            "--json",
        )
    )
    assert payload["results"][0]["sample"] == "s1"


def test_errors_are_one_line(capsys, ws_root) -> None:
    assert main(["similar", "fx", "--workspace", ws_root, "--sample-id", "missing"]) == 2
    assert "unknown sample id" in capsys.readouterr().err
    assert main(["outliers", "nope", "--workspace", ws_root]) == 2


@pytest.mark.slow
def test_project_writes_coordinates(capsys, ws_root, tmp_path) -> None:
    out = run(capsys, "project", "fx", "--workspace", ws_root, "--out", str(tmp_path / "p.parquet"))
    assert "trustworthiness" in out
    frame = pd.read_parquet(tmp_path / "p.parquet")
    assert len(frame) == 404 and {"x", "y", "neighborhood_preservation"} <= set(frame.columns)
