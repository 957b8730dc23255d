from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shoal.cli import build_parser, main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def upload(sample_images: Path, tmp_path: Path) -> Path:
    root = tmp_path / "upload"
    for image in sorted(sample_images.glob("train/insects/*.jpg"))[:4]:
        (root / "insects").mkdir(parents=True, exist_ok=True)
        shutil.copy(image, root / "insects" / image.name)
    (root / "insects" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    (root / "insects" / "zero.png").write_bytes(b"")
    return root


def test_every_command_has_help() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in (
        "import",
        "embed",
        "add-embeddings",
        "export-embeddings",
        "datasets",
        "info",
        "delete",
        "serve",
        "demo",
    ):
        assert name in commands
        help_text = subprocess.run(
            [sys.executable, "-m", "shoal", name, "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "--workspace" in help_text


def test_import_lists_each_bad_file(
    capsys: pytest.CaptureFixture[str], upload: Path, tmp_path: Path
) -> None:
    ws = str(tmp_path / "ws")
    code, out, _ = _run(capsys, "import", str(upload), "--dataset", "bugs", "--workspace", ws)
    assert code == 0
    assert "imported 4 samples" in out
    assert "insects/broken.jpg: truncated or corrupt image" in out
    assert "insects/zero.png: empty file (0 bytes)" in out
    code, out, _ = _run(capsys, "info", "bugs", "--json", "--workspace", ws)
    info = json.loads(out)
    assert info["samples"] == 4 and info["labels"] == {"insects": 4} and info["rejected"] == 2
    assert len(info["import_report"]["rejected"]) == 2


def test_datasets_and_delete(
    capsys: pytest.CaptureFixture[str], upload: Path, tmp_path: Path
) -> None:
    ws = str(tmp_path / "ws")
    _run(capsys, "import", str(upload), "--dataset", "bugs", "--workspace", ws)
    code, out, _ = _run(capsys, "datasets", "--json", "--workspace", ws)
    assert [d["name"] for d in json.loads(out)] == ["bugs"]
    assert _run(capsys, "delete", "bugs", "--workspace", ws)[0] == 0
    code, out, _ = _run(capsys, "datasets", "--json", "--workspace", ws)
    assert json.loads(out) == []


def test_bad_input_is_one_line_and_nonzero(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = _run(capsys, "info", "nope", "--workspace", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "no dataset 'nope'" in err
    code, _, err = _run(
        capsys, "import", str(tmp_path / "missing"), "--dataset", "x", "--workspace", str(tmp_path)
    )
    assert code == 2 and "does not exist" in err
    code, _, err = _run(
        capsys, "import", str(tmp_path), "--dataset", "../x", "--workspace", str(tmp_path)
    )
    assert code == 2 and "not allowed" in err


def test_add_embeddings_rejects_bad_files_naming_the_problem(
    capsys: pytest.CaptureFixture[str], upload: Path, tmp_path: Path
) -> None:
    ws = str(tmp_path / "ws")
    _run(capsys, "import", str(upload), "--dataset", "bugs", "--workspace", ws)
    _, out, _ = _run(capsys, "info", "bugs", "--json", "--workspace", ws)
    ids = sorted(json.loads(out)["import_report"] and _sample_ids(ws, "bugs"))
    csv = tmp_path / "e.csv"
    rows = [f"{i},{k},{k}" for k, i in enumerate(ids)]
    csv.write_text("sample_id,a,b\n" + "\n".join(rows) + "\n")
    assert _run(capsys, "add-embeddings", "bugs", str(csv), "--workspace", ws)[0] == 0

    csv.write_text("sample_id,a,b\n" + "\n".join(rows[:-1] + [f"{ids[-1]},nan,1"]) + "\n")
    code, _, err = _run(capsys, "add-embeddings", "bugs", str(csv), "--workspace", ws)
    assert code == 2 and f"row 3 (id '{ids[-1]}') has a non-finite value (nan)" in err

    csv.write_text("sample_id,a,b\n" + "\n".join(rows[:-1] + ["ghost,1,1"]) + "\n")
    code, _, err = _run(capsys, "add-embeddings", "bugs", str(csv), "--workspace", ws)
    assert code == 2 and "unknown id 'ghost' at row 3" in err

    np.save(tmp_path / "e.npy", np.ones((4, 3), dtype=np.float32))
    code, _, err = _run(
        capsys,
        "add-embeddings",
        "bugs",
        str(tmp_path / "e.npy"),
        "--embedding",
        "user",
        "--workspace",
        ws,
    )
    assert code == 2 and "dimension 3 does not match this embedding set's 2" in err


def _sample_ids(ws: str, name: str) -> list[str]:
    from shoal.store import Workspace

    return Workspace(ws).open(name).samples()["sample_id"].tolist()


def test_export_embeddings(
    capsys: pytest.CaptureFixture[str], upload: Path, tmp_path: Path
) -> None:
    ws = str(tmp_path / "ws")
    _run(capsys, "import", str(upload), "--dataset", "bugs", "--workspace", ws)
    ids = _sample_ids(ws, "bugs")
    np.save(tmp_path / "e.npy", np.arange(8, dtype=np.float32).reshape(4, 2))
    assert (
        _run(capsys, "add-embeddings", "bugs", str(tmp_path / "e.npy"), "--workspace", ws)[0] == 0
    )
    out_file = tmp_path / "export.parquet"
    assert (
        _run(capsys, "export-embeddings", "bugs", "--out", str(out_file), "--workspace", ws)[0] == 0
    )
    import pandas as pd

    table = pd.read_parquet(out_file)
    assert table["sample_id"].tolist() == ids and table["label"].tolist() == ["insects"] * 4
    assert [list(v) for v in table["embedding"]] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_serving_beyond_this_machine_needs_a_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: `serve --address 0.0.0.0` with no token and no sign-in started an open app."""
    from shoal.cli.core import _gated

    monkeypatch.delenv("SHOAL_ACCESS_TOKEN", raising=False)
    ws = str(tmp_path / "ws")
    assert main(["serve", "--address", "0.0.0.0", "--workspace", ws]) == 2
    assert "refusing to serve on 0.0.0.0 with no access gate" in capsys.readouterr().err

    secrets = tmp_path / "secrets.toml"
    assert not _gated(secrets)
    secrets.write_text('[auth]\nclient_id = "x"\n')
    assert _gated(secrets)
    assert main(["serve", "--secrets", str(tmp_path / "missing.toml"), "--workspace", ws]) == 2
    assert "no such file" in capsys.readouterr().err
    secrets.write_text("[auth\n")  # the server refuses all
    assert _gated(secrets)
    secrets.unlink()
    monkeypatch.setenv("SHOAL_ACCESS_TOKEN", "s3cret")
    assert _gated(secrets)


def test_import_of_an_embeddings_parquet_makes_an_embeddings_only_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], real: dict[str, np.ndarray]
) -> None:
    """Regression: a Parquet of sample_id + a vector column was refused ("has no image path
    column") unless --metadata was given. Its other columns are kept as metadata."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shoal.store import Workspace

    vectors = real["fmnist"][:300]
    labels = [str(v) for v in real["fmnist_labels"][:300]]
    ids = [f"img-{i:04d}" for i in range(300)]
    table = pa.table(
        {
            "sample_id": ids,
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.ravel()), vectors.shape[1]
            ),
            "label": labels,
            "camera": ["a", "b", "c"] * 100,
        }
    )
    source = tmp_path / "emb.parquet"
    pq.write_table(table, source)
    ws = str(tmp_path / "ws")
    code, out, _ = _run(capsys, "import", str(source), "--dataset", "d", "--workspace", ws)
    assert code == 0 and "imported 300 samples" in out
    ds = Workspace(Path(ws)).open("d")
    samples = ds.samples()
    assert samples["sample_id"].tolist() == ids and samples["label"].tolist() == labels
    assert samples["camera"].tolist() == ["a", "b", "c"] * 100
    assert samples["path"].isna().all()
    stored = ds.load_embeddings()
    assert list(stored.ids) == ids
    np.testing.assert_allclose(np.asarray(stored.vectors), vectors)
    # Only ids and vectors: still recognised, still no --metadata needed.
    pq.write_table(table.select(["sample_id", "embedding"]), source)
    code, out, _ = _run(capsys, "import", str(source), "--dataset", "e", "--workspace", ws)
    assert code == 0 and "imported 300 samples" in out
    assert isinstance(Workspace(Path(ws)).open("e").samples(), pd.DataFrame)


def test_workspace_before_the_command_is_used(tmp_path: Path) -> None:
    """Regression: `shoal --workspace DIR import ...` wrote to ./shoal-workspace: the
    sub-command's own --workspace default overwrote the one given before it."""
    args = build_parser().parse_args(["--workspace", str(tmp_path), "datasets"])
    assert args.workspace == str(tmp_path)
    args = build_parser().parse_args(["datasets", "--workspace", str(tmp_path / "b")])
    assert args.workspace == str(tmp_path / "b")
