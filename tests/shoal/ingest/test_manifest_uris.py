"""A manifest that names its images by URI (``file://`` here; ``s3://``, ``gs://`` read the same
way through pyarrow.fs): accepted from the CLI, refused from the web uploader, and every bad row
named with its reason."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from shoal.cli import main
from shoal.ingest.images import fetch_uri, import_manifest
from shoal.store import Workspace


@pytest.fixture
def manifest(sample_images: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    images = sorted(sample_images.glob("train/birds/*.jpg"))[:3]
    folder = tmp_path / "listing"
    folder.mkdir()
    local = folder / "local.jpg"
    local.write_bytes(images[0].read_bytes())
    rows = [{"path": image.resolve().as_uri(), "label": "bird"} for image in images]
    rows += [
        {"path": "local.jpg", "label": "bird"},
        {"path": "file:///no/such/folder/x.jpg", "label": "bird"},
        {"path": "ftp://example.org/x.jpg", "label": "bird"},
        {"path": "hdfs://127.0.0.1:1/x.jpg", "label": "bird"},
    ]
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path, images


def test_file_uris_import_and_bad_ones_are_named(
    manifest: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, images = manifest
    workspace = tmp_path / "ws"
    assert main(["import", str(path), "--dataset", "uris", "--workspace", str(workspace)]) == 0
    ds = Workspace(workspace).open("uris")
    samples = ds.samples()
    assert len(samples) == 4
    stored = {row.source: ds.image_file(row.path).read_bytes() for row in samples.itertuples()}
    for image in images:
        assert stored[image.resolve().as_uri()] == image.read_bytes()
    reasons = {r["file"]: r["reason"] for r in ds.import_report()["rejected"]}
    assert len(reasons) == 3
    missing, ftp, hdfs = (next(v for k, v in reasons.items() if f"row {n}" in k) for n in (6, 7, 8))
    assert missing == "image file not found at file:///no/such/folder/x.jpg"
    assert "'ftp://' is not read by Shoal" in ftp and "s3://" in ftp
    assert hdfs.startswith("cannot open hdfs://127.0.0.1:1/x.jpg:") and "\n" not in hdfs
    assert "rejected" in capsys.readouterr().out


def test_the_web_uploader_refuses_uris(manifest: tuple[Path, list[Path]], tmp_path: Path) -> None:
    path, _ = manifest
    report = import_manifest(Workspace(tmp_path / "ws"), path, dataset="web", confined=True)
    assert report.imported == 1  # local.jpg, inside the upload
    uri_rows = [r for r in report.rejected if "://" in r.file]
    assert len(uri_rows) == 6
    assert all("read only by `shoal import` on the server" in r.reason for r in uri_rows)


def test_a_file_uri_is_read_in_place(sample_images: Path, tmp_path: Path) -> None:
    image = next(sample_images.glob("train/*/*.jpg")).resolve()
    assert fetch_uri(image.as_uri(), tmp_path) == image
    assert list(tmp_path.iterdir()) == []  # nothing copied for a local file
