from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from shoal.ingest.images import check_image, import_source
from shoal.ingest.publish import ImportLimits, IngestError
from shoal.store import Workspace


def _real_images(sample_images: Path, n: int) -> list[Path]:
    return sorted(sample_images.glob("train/*/*.jpg"))[:n]


def _folder_with_bad_files(sample_images: Path, root: Path) -> Path:
    for split, label in (("train", "mammals"), ("test", "food")):
        for image in sorted(sample_images.glob(f"{split}/{label}/*.jpg"))[:3]:
            (root / split / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(image, root / split / label / image.name)
    good = sorted(sample_images.glob("train/birds/*.jpg"))[0].read_bytes()
    bad = root / "train" / "birds"
    bad.mkdir(parents=True)
    (bad / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.jpg").write_text("this is a text file with an image extension")
    (bad / "readme.txt").write_text("not an image")
    return root


def test_folder_import_keeps_good_files_and_reports_each_bad_one(
    workspace: Workspace, sample_images: Path, tmp_path: Path
) -> None:
    folder = _folder_with_bad_files(sample_images, tmp_path / "upload")
    report = import_source(workspace, folder, dataset="pets")
    assert report.imported == 6
    reasons = {r.file: r.reason for r in report.rejected}
    assert set(reasons) == {
        "train/birds/truncated.jpg",
        "train/birds/empty.png",
        "train/birds/notes.jpg",
        "train/birds/readme.txt",
    }
    assert "truncated or corrupt" in reasons["train/birds/truncated.jpg"]
    assert "empty file" in reasons["train/birds/empty.png"]
    assert "not an image" in reasons["train/birds/notes.jpg"]
    samples = workspace.open("pets").samples()
    assert sorted(samples["split"].unique()) == ["test", "train"]
    assert dict(samples.groupby("split")["label"].first()) == {"test": "food", "train": "mammals"}
    ds = workspace.open("pets")
    assert ds.import_report()["rejected"][0]["reason"]
    for path in samples["path"]:  # copied in: the upload location can go away
        assert ds.image_file(path).is_file()


def test_import_does_not_depend_on_upload_location(
    workspace: Workspace, sample_images: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "up" / "cats"
    folder.mkdir(parents=True)
    for image in _real_images(sample_images, 3):
        shutil.copy(image, folder / image.name)
    import_source(workspace, tmp_path / "up", dataset="cats", split="val")
    shutil.rmtree(tmp_path / "up")
    samples = workspace.open("cats").samples()
    assert set(samples["split"]) == {"val"} and set(samples["label"]) == {"cats"}
    assert all(Image.open(workspace.open("cats").image_file(p)).size for p in samples["path"])


def test_sample_ids_are_stable_across_imports(workspace: Workspace, sample_images: Path) -> None:
    first = import_source(workspace, sample_images, dataset="a")
    import_source(workspace, sample_images, dataset="b")
    ids_a = workspace.open("a").samples().set_index("source")["sample_id"]
    ids_b = workspace.open("b").samples().set_index("source")["sample_id"]
    assert first.imported == 354
    assert ids_a.equals(ids_b.loc[ids_a.index])


def test_decompression_bomb_is_rejected(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 12_000)).save(bomb)  # 144 Mpx in a few hundred KB
    assert bomb.stat().st_size < 2_000_000
    reason = check_image(bomb)
    assert reason is not None and "pixels" in reason
    assert check_image(bomb, ImportLimits(max_image_pixels=200_000_000)) is None


def _zip(entries: dict[str, bytes], path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def test_zip_slip_entries_are_refused_and_nothing_escapes(
    workspace: Workspace, sample_images: Path, tmp_path: Path
) -> None:
    image = _real_images(sample_images, 1)[0].read_bytes()
    archive = _zip(
        {
            "data/cats/ok.jpg": image,
            "data/cats/../../../evil.jpg": image,
            "/etc/evil.jpg": image,
            "data\\..\\..\\evil2.jpg": image,
        },
        tmp_path / "upload.zip",
    )
    report = import_source(workspace, archive, dataset="z")
    assert report.imported == 1
    reasons = [r.reason for r in report.rejected]
    assert len(reasons) == 3 and all("zip-slip" in r for r in reasons)
    assert not list(tmp_path.rglob("evil*.jpg")) and not list(
        workspace.root.parent.rglob("evil*.jpg")
    )
    assert workspace.open("z").samples()["label"].tolist() == ["cats"]


def test_zip_bomb_is_refused(workspace: Workspace, sample_images: Path, tmp_path: Path) -> None:
    image = _real_images(sample_images, 1)[0].read_bytes()
    archive = _zip({"a/ok.jpg": image, "a/bomb.jpg": b"\0" * (64 << 20)}, tmp_path / "bomb.zip")
    assert archive.stat().st_size < 1_000_000
    report = import_source(workspace, archive, dataset="z")
    assert report.imported == 1
    assert "zip bomb" in report.rejected[0].reason


def test_zip_total_size_cap(workspace: Workspace, sample_images: Path, tmp_path: Path) -> None:
    images = _real_images(sample_images, 4)
    archive = _zip(
        {f"x/{i}.jpg": p.read_bytes() for i, p in enumerate(images)}, tmp_path / "many.zip"
    )
    cap = sum(p.stat().st_size for p in images[:2])
    report = import_source(
        workspace, archive, dataset="z", limits=ImportLimits(max_zip_total_bytes=cap)
    )
    assert report.imported == 2
    assert sum("zip bomb" in r.reason for r in report.rejected) == 2


def test_corrupt_zip_is_one_clear_error(workspace: Workspace, tmp_path: Path) -> None:
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(IngestError, match="broken.zip is not a valid zip"):
        import_source(workspace, archive, dataset="z")
    assert workspace.list_datasets() == []


def test_manifest_with_metadata_and_missing_rows(
    workspace: Workspace, sample_images: Path, tmp_path: Path
) -> None:
    images = _real_images(sample_images, 3)
    for image in images:
        shutil.copy(image, tmp_path / image.name)
    manifest = pd.DataFrame(
        {
            "image": [p.name for p in images] + ["missing.jpg"],
            "label": ["a", "b", "a", "b"],
            "split": ["train", "test", "train", "test"],
            "prediction": ["a", "a", "a", "b"],
            "confidence": [0.9, 0.4, 0.8, 0.7],
            "camera": ["x", "y", "x", "y"],
        }
    )
    manifest.to_parquet(tmp_path / "manifest.parquet")
    report = import_source(workspace, tmp_path / "manifest.parquet", dataset="m")
    assert report.imported == 3
    assert report.rejected[0].file.startswith("row 4") and "not found" in report.rejected[0].reason
    samples = workspace.open("m").samples()
    assert {"prediction", "confidence", "camera"} <= set(samples.columns)
    assert samples["confidence"].tolist() == [0.9, 0.4, 0.8]


def test_manifest_without_path_column_names_the_columns(
    workspace: Workspace, tmp_path: Path
) -> None:
    (tmp_path / "m.csv").write_text("name,label\na.jpg,x\n")
    with pytest.raises(IngestError, match="no image path column.*columns found: name, label"):
        import_source(workspace, tmp_path / "m.csv", dataset="m")


def test_nothing_valid_is_an_error_and_leaves_no_dataset(
    workspace: Workspace, tmp_path: Path
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jpg").write_bytes(b"")
    with pytest.raises(IngestError, match="x.jpg: empty file"):
        import_source(workspace, tmp_path / "in", dataset="none")
    assert workspace.list_datasets() == []
    assert not any((workspace.root / ".staging").iterdir())


def test_image_formats(tmp_path: Path) -> None:
    image = Image.new("RGB", (20, 10), (200, 10, 10))
    for fmt, suffix in (
        ("PNG", "png"),
        ("WEBP", "webp"),
        ("BMP", "bmp"),
        ("TIFF", "tif"),
        ("JPEG", "jpg"),
    ):
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        (tmp_path / f"a.{suffix}").write_bytes(buffer.getvalue())
        assert check_image(tmp_path / f"a.{suffix}") is None, fmt


def test_zip_wrapper_folder_with_a_stray_text_file(
    workspace: Workspace, sample_images: Path, tmp_path: Path
) -> None:
    """Regression: a notes file beside the class folders made every image labelled with the wrapper's name."""
    images = _real_images(sample_images, 2)
    entries = {f"pets/cats/{p.name}": p.read_bytes() for p in images[:1]}
    entries |= {f"pets/dogs/{p.name}": p.read_bytes() for p in images[1:]}
    entries["pets/notes.txt"] = b"collected in May"
    report = import_source(workspace, _zip(entries, tmp_path / "pets.zip"), dataset="pets")
    assert report.labels == {"cats": 1, "dogs": 1}
    assert [r.file for r in report.rejected] == ["notes.txt"]


def test_checking_an_image_leaves_pillows_global_cap_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: check_image switched Pillow's process-wide decompression-bomb cap off while it
    ran, so a web thread decoding at the same moment (the Similar page's query image) had none."""
    image = tmp_path / "ok.png"
    Image.new("RGB", (64, 48)).save(image)
    seen: list[int | None] = []
    original_open = Image.open

    def open_and_record(*args, **kwargs):
        seen.append(Image.MAX_IMAGE_PIXELS)
        return original_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", open_and_record)
    default = Image.MAX_IMAGE_PIXELS
    assert check_image(image) is None
    assert seen == [default] and default is not None
    assert "over the cap of 10" in (check_image(image, ImportLimits(max_image_pixels=10)) or "")
    assert default == Image.MAX_IMAGE_PIXELS


def test_a_zip_of_many_small_compressible_entries_is_refused(
    workspace: Workspace, tmp_path: Path
) -> None:
    """Regression: the ratio check looked only at entries above 1 MiB, so thousands of small,
    highly compressible entries (128 MiB from a ~150 KB zip here) were all extracted."""
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for i in range(2_000):
            bundle.writestr(f"train/a/{i:04d}.png", b"\0" * (64 << 10))
    assert archive.stat().st_size < 1_000_000
    with pytest.raises(
        IngestError, match=r"would expand .*:1 .* \(zip bomb\); nothing was extracted"
    ):
        import_source(workspace, archive, dataset="bomb")
    assert not workspace.exists("bomb")
    assert not any((workspace.root / ".staging").rglob("*.png"))


def test_a_table_that_decodes_to_too_many_cells_is_refused_from_its_footer(
    tmp_path: Path,
) -> None:
    """Regression: a small Parquet file could decode to many GB before any check."""
    from shoal.ingest.images import read_table

    table = tmp_path / "meta.parquet"
    pd.DataFrame({f"c{i}": ["same value"] * 500 for i in range(4)}).to_parquet(table)
    with pytest.raises(IngestError, match=r"500 rows x 4 columns, over the cap of 1,000 cells"):
        read_table(table, limits=ImportLimits(max_table_cells=1_000))
    assert len(read_table(table)) == 500


@pytest.mark.parametrize("file_first", [True, False], ids=["file-first", "folder-first"])
def test_zip_with_a_file_and_a_folder_of_one_name_imports_the_rest(
    workspace: Workspace, sample_images: Path, tmp_path: Path, file_first: bool
) -> None:
    """Regression: a zip holding both ``cats/a`` (a file) and ``cats/a/b.jpg`` aborted the whole
    import with FileExistsError (NotADirectoryError the other way round) and a server path.
    Now the later entry is skipped, named in the report, and everything else is imported."""
    images = [p.read_bytes() for p in _real_images(sample_images, 4)]
    clash = [("pets/cats/a", images[0]), ("pets/cats/a/b.jpg", images[1])]
    clash = clash if file_first else clash[::-1]
    entries = dict([("pets/cats/c.jpg", images[2]), *clash, ("pets/dogs/d.jpg", images[3])])
    report = import_source(workspace, _zip(entries, tmp_path / "pets.zip"), dataset="pets")
    kept, skipped = clash[0][0], clash[1][0]  # the first in the zip wins
    reasons = {r.file: r.reason for r in report.rejected}
    assert skipped in reasons and "rename" in reasons[skipped], reasons
    assert str(tmp_path) not in reasons[skipped]
    sources = set(workspace.open("pets").samples()["source"])
    assert {"cats/c.jpg", "dogs/d.jpg"} <= sources
    if kept.endswith(".jpg"):
        assert "cats/a/b.jpg" in sources
    else:  # 'a' (no image extension) is listed as not an image: nothing of the clash is lost silently
        assert "cats/a" in reasons


def test_zip_with_one_name_twice_keeps_the_first(
    workspace: Workspace, sample_images: Path, tmp_path: Path
) -> None:
    """Regression: a second entry of the same name silently overwrote the first."""
    first, second = (p.read_bytes() for p in _real_images(sample_images, 2))
    archive = tmp_path / "twice.zip"
    with zipfile.ZipFile(archive, "w") as bundle, pytest.warns(UserWarning, match="Duplicate"):
        bundle.writestr("x/cats/a.jpg", first)
        bundle.writestr("x/cats/a.jpg", second)
    report = import_source(workspace, archive, dataset="twice")
    assert [r.file for r in report.rejected] == ["x/cats/a.jpg"]
    assert "same name" in report.rejected[0].reason
    ds = workspace.open("twice")
    assert ds.image_file(ds.samples()["path"].iloc[0]).read_bytes() == first
