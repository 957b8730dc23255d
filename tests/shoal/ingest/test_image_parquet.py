"""Parquet files holding the images (datasets-style), imported as a dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shoal.cli import main
from shoal.ingest.images import import_source
from shoal.ingest.publish import IngestError
from shoal.store import Workspace


def _write_image_parquet(
    target: Path, images: list[Path], *, extra_rows: list | None = None
) -> list[str]:
    """The layout Hugging Face `datasets` writes: an image struct {bytes, path}, an integer
    ClassLabel column whose names live in the schema's 'huggingface' metadata, and a split."""
    classes = sorted({image.parent.name for image in images})
    records = [
        {
            "image": {"bytes": image.read_bytes(), "path": image.name},
            "label": classes.index(image.parent.name),
            "split": "train" if i % 3 else "test",
            "photographer": f"p{i % 2}",
        }
        for i, image in enumerate(images)
    ] + (extra_rows or [])
    table = pa.Table.from_pylist(records)
    features = {
        "image": {"_type": "Image"},
        "label": {"names": classes, "_type": "ClassLabel"},
        "split": {"dtype": "string", "_type": "Value"},
        "photographer": {"dtype": "string", "_type": "Value"},
    }
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), target, row_group_size=4)
    return classes


def test_a_datasets_style_parquet_imports_its_images_and_label_names(
    sample_images: Path, tmp_path: Path
) -> None:
    images = sorted(sample_images.glob("train/*/*.jpg"))[:10]
    broken = {
        "image": {"bytes": b"not an image", "path": "broken.jpg"},
        "label": 0,
        "split": "train",
        "photographer": "p0",
    }
    empty = {"image": None, "label": 1, "split": "train", "photographer": "p1"}
    source = tmp_path / "train-00000-of-00001.parquet"
    classes = _write_image_parquet(source, images, extra_rows=[broken, empty])
    workspace = Workspace(tmp_path / "ws")
    report = import_source(workspace, source, dataset="hf")
    assert report.imported == 10
    reasons = {r.file: r.reason for r in report.rejected}
    assert "not an image" in reasons["row 11 (broken.jpg)"]
    assert "no image bytes in 'image'" in reasons["row 12"]
    samples = workspace.open("hf").samples()
    assert samples["label"].tolist() == [image.parent.name for image in images]
    assert set(samples["label"]) <= set(classes)
    assert samples["split"].tolist() == ["test" if i % 3 == 0 else "train" for i in range(10)]
    assert samples["photographer"].tolist() == [f"p{i % 2}" for i in range(10)]
    ds = workspace.open("hf")
    for stored, original in zip(samples["path"], images, strict=True):
        assert ds.image_file(stored).read_bytes() == original.read_bytes()  # byte for byte


def test_raw_bytes_columns_work_and_a_file_of_nothing_but_bad_rows_says_so(
    sample_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = sorted(sample_images.glob("train/*/*.jpg"))[0]
    source = tmp_path / "raw.parquet"
    table = pa.table({"img": [image.read_bytes()], "label": ["cat"], "id": ["photo-1"]})
    pq.write_table(table, source)
    ws = str(tmp_path / "ws")
    assert main(["import", str(source), "--dataset", "raw", "--workspace", ws]) == 0
    assert "imported 1 samples" in capsys.readouterr().out
    assert Workspace(Path(ws)).open("raw").samples()["sample_id"].tolist() == ["photo-1"]
    twice = tmp_path / "twice.parquet"
    pq.write_table(pa.concat_tables([table, table]), twice)
    with pytest.raises(IngestError, match="duplicate id 'photo-1'"):
        import_source(Workspace(Path(ws)), twice, dataset="twice")
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"image": [b"junk", b""], "label": ["a", "b"]}), bad)
    with pytest.raises(IngestError, match="no images imported from bad.parquet"):
        import_source(Workspace(Path(ws)), bad, dataset="bad")
    assert not (Path(ws) / "bad").exists()
    assert not any((Path(ws) / ".staging").glob("bad-*"))
