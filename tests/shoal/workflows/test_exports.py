"""Exports of a collection: COCO that pycocotools loads, a zip of the images, tables."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shoal.cli import main
from shoal.ingest.coco import import_coco
from shoal.store import StoreError, Workspace
from shoal.store.collections import Collections
from shoal.workflows.exports import export_coco, export_images, export_table
from tests.shoal.ingest.detection_fixture import import_street


@pytest.fixture
def street(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    import_street(ws)
    return ws


def test_coco_export_loads_in_pycocotools_and_imports_back(
    street: Workspace, tmp_path: Path
) -> None:
    coco_api = pytest.importorskip("pycocotools.coco")
    ds = street.open("street")
    chosen = ds.samples()["sample_id"].astype(str).tolist()[:3]
    written = export_coco(ds, chosen, tmp_path / "out.json")
    coco = coco_api.COCO(str(written["coco"]))
    objects = ds.objects()
    mine = objects[objects["sample_id"].astype(str).isin(chosen)]
    labels = mine[mine["kind"] == "label"]
    assert len(coco.getImgIds()) == 3 and len(coco.getAnnIds()) == len(labels)
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} >= set(labels["category"])
    for image in coco.loadImgs(coco.getImgIds()):
        assert ds.image_file(image["file_name"]).is_file()
    if (mine["kind"] == "inference").any():
        results = coco.loadRes(str(written["predictions"]))
        assert len(results.getAnnIds()) == int((mine["kind"] == "inference").sum())
    again = Workspace(tmp_path / "again")
    import_coco(again, written["coco"], images=ds.root, dataset="back")
    back = again.open("back").objects()
    assert sorted(back["category"]) == sorted(labels["category"])
    np.testing.assert_allclose(
        np.sort(back[["x0", "y0", "x1", "y1"]].to_numpy(), axis=0),
        np.sort(labels[["x0", "y0", "x1", "y1"]].to_numpy(), axis=0),
        atol=1e-3,
    )


def test_the_images_zip_holds_the_same_bytes_and_a_listing(
    street: Workspace, tmp_path: Path
) -> None:
    ds = street.open("street")
    samples = ds.samples()
    chosen = samples["sample_id"].astype(str).tolist()[:2]
    out = export_images(ds, chosen, tmp_path / "images.zip")
    with zipfile.ZipFile(out) as bundle:
        listing = pd.read_csv(bundle.open("files.csv"))
        assert listing["sample_id"].astype(str).tolist() == chosen
        for row in listing.itertuples(index=False):
            stored = samples.set_index("sample_id").loc[row.sample_id, "path"]
            assert bundle.read(row.file) == ds.image_file(stored).read_bytes()
    with pytest.raises(StoreError, match="not samples of 'street'"):
        export_images(ds, ["nope"], tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()  # nothing half-written


def test_the_cli_exports_a_collection_in_each_format(
    street: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = street.open("street")
    chosen = ds.samples()["sample_id"].astype(str).tolist()[:2]
    Collections(ds).create("night", chosen)
    root = str(street.root)
    for name in ("night.csv", "night.parquet", "night.json", "night.zip"):
        assert (
            main(
                [
                    "collections",
                    "export",
                    "street",
                    "night",
                    "--out",
                    str(tmp_path / name),
                    "--workspace",
                    root,
                ]
            )
            == 0
        )
        assert (tmp_path / name).stat().st_size > 0
    assert "wrote coco of 2 samples" in capsys.readouterr().out
    assert pd.read_parquet(tmp_path / "night.parquet")["sample_id"].astype(str).tolist() == chosen
    assert (
        main(
            [
                "collections",
                "export",
                "street",
                "night",
                "--out",
                str(tmp_path / "n.txt"),
                "--workspace",
                root,
            ]
        )
        == 2
    )


def test_a_parquet_export_can_carry_the_vectors(
    tmp_path: Path, real: dict[str, np.ndarray]
) -> None:
    from shoal.ingest.embeddings import create_from_embeddings

    np.save(tmp_path / "e.npy", real["fmnist"][:20])
    ws = Workspace(tmp_path / "ws")
    create_from_embeddings(ws, "vec", tmp_path / "e.npy")
    ids = ["row-7", "row-2"]
    out = export_table(ws.open("vec"), ids, tmp_path / "v.parquet", with_embeddings=True)
    table = pd.read_parquet(out)
    np.testing.assert_allclose(np.stack(table["embedding"]), real["fmnist"][[7, 2]])
    with pytest.raises(StoreError, match="go into a .parquet"):
        export_table(ws.open("vec"), ids, tmp_path / "v.csv", with_embeddings=True)


def test_vectors_are_written_a_row_group_at_a_time(
    tmp_path: Path, real: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of 3 rows (three row groups for 7 samples, asked for out of order): the same
    table and vectors as one block, and only one block of vectors in memory at a time."""
    import pyarrow.parquet as pq

    import shoal.workflows.exports as exports
    from shoal.ingest.embeddings import create_from_embeddings

    np.save(tmp_path / "e.npy", real["fmnist"][:20])
    ws = Workspace(tmp_path / "ws")
    create_from_embeddings(ws, "vec", tmp_path / "e.npy")
    ids = ["row-7", "row-2", "row-19", "row-0", "row-5", "row-11", "row-3"]
    whole = pd.read_parquet(
        export_table(ws.open("vec"), ids, tmp_path / "a.parquet", with_embeddings=True)
    )
    monkeypatch.setattr(exports, "BLOCK_ROWS", 3)
    out = export_table(ws.open("vec"), ids, tmp_path / "b.parquet", with_embeddings=True)
    assert pq.ParquetFile(out).metadata.num_row_groups == 3
    blocked = pd.read_parquet(out)
    pd.testing.assert_frame_equal(
        blocked.drop(columns="embedding"), whole.drop(columns="embedding")
    )
    rows = [int(i.split("-")[1]) for i in ids]
    np.testing.assert_array_equal(np.stack(blocked["embedding"]), real["fmnist"][rows])
    assert blocked["sample_id"].tolist() == ids
