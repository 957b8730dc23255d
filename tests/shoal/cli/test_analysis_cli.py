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
    out = run(capsys, "project", "fx", "--workspace", ws_root, "--method", "pca")
    assert "with pca" in out and "trustworthiness" in out


def test_out_csv_neutralises_formula_cells(capsys, tmp_path) -> None:
    """Regression: ``--out x.csv`` wrote ids and labels from an upload as they were, so a
    spreadsheet opening the export ran ``=HYPERLINK(...)`` or ``+cmd`` as formulas. The CLI now
    writes CSV through the same neutraliser as the web app's downloads."""
    rng = np.random.default_rng(7)
    vectors = np.concatenate([rng.normal(size=(30, 8)), rng.normal(size=(30, 8)) + 3])
    ids = ['=HYPERLINK("http://evil","x")', "+cmd", "-2+3", "@SUM(A1)", "\tx", "\rx"]
    ids += [f"s{i}" for i in range(len(vectors) - len(ids))]
    labels = ["=1+1", "+a", "-b"] * (len(vectors) // 3)
    samples = pd.DataFrame(
        {"sample_id": ids, "source": "x", "path": None, "split": None, "label": labels}
    )
    root = tmp_path / "ws"
    Workspace(root).create("fx", samples, has_images=False).publish_embeddings(
        "user", vectors, ids, model="user-provided"
    )
    exports = {
        "outliers": ["outliers", "fx"],
        "mislabels": ["mislabels", "fx"],
        "similar": ["similar", "fx", "--sample", "s10", "-k", "20"],
        "duplicates": ["duplicates", "fx", "--threshold", "2.0"],
    }
    for name, argv in exports.items():
        out = tmp_path / f"{name}.csv"
        run(capsys, *argv, "--workspace", str(root), "--out", str(out))
        table = pd.read_csv(out, dtype=str, keep_default_na=False)
        text = [cell for column in table.columns for cell in table[column]]
        risky = [c for c in text if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
        assert not [c for c in risky if not _is_number(c)], (name, risky)
        assert any(c.startswith("'") for c in text), (name, "no id or label was exported")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_mislabel_suggestions_print_as_plain_labels(capsys, ws_root) -> None:
    """Regression: the list printed `suggested np.str_('pullover')`."""
    out = run(capsys, "mislabels", "fx", "--workspace", ws_root, "--top", "5")
    assert "suggested '" in out and "np.str_" not in out


def test_json_piped_into_a_reader_that_stops_early_ends_quietly(ws_root) -> None:
    """Regression: `shoal ... --json | head` ended in a BrokenPipeError traceback."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "shoal", "outliers", "fx", "--json", "--top", "400"]
    process = subprocess.Popen(
        [*command, "--workspace", ws_root], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stdout.readline().strip() == b"{"
    process.stdout.close()  # like `head -1`
    stderr = process.stderr.read().decode() if process.stderr else ""
    assert process.wait(timeout=120) in (0, 141)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


def test_compare_boxes_of_an_object_level_set(street, tmp_path, capsys):
    """`shoal compare --embedding <box set>`: the sides are boxes, named as boxes, listed by
    object id in the novelty table."""
    import shutil

    ws, _, _ = street
    root = shutil.copytree(ws.root, tmp_path / "ws")  # results are cached into it
    table = tmp_path / "novelty.csv"
    text = run(
        capsys,
        "compare",
        "street",
        "--embedding",
        "efficientnet_lite0-objects",
        "--reference",
        "category=person",
        "--out",
        str(table),
        "--workspace",
        str(root),
    )
    objects = Workspace(root).open("street").objects()
    person = int((objects["category"] == "person").sum())
    assert f"reference {person}, current {len(objects) - person} boxes" in text
    assert "current boxes are novel" in text and "samples" not in text
    novelty = pd.read_csv(table)
    assert novelty.columns[0] == "object_id"
    assert set(novelty["object_id"]) == set(
        objects.loc[objects["category"] != "person", "object_id"]
    )
