"""shoal.app.uploads: safe names, uploads written inside their folder, then imported by mode."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from shoal.app.uploads import (
    discard_upload,
    import_uploads,
    safe_relative_path,
    save_uploads,
    suggest_dataset_name,
    upload_dir,
)
from shoal.store import Workspace


class FakeUpload:
    """What st.file_uploader hands the page: a name and the bytes."""

    def __init__(self, name: str, data: bytes = b"data"):
        self.name, self._data = name, data

    def getbuffer(self) -> memoryview:
        return memoryview(self._data)


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("cat.jpg", "cat.jpg"),
        ("photos/2024/a.jpg", "photos/2024/a.jpg"),
        ("photos\\win\\b.png", "photos/win/b.png"),
        ("../../etc/passwd", None),
        ("/abs/x.png", "abs/x.png"),
        ("C:/x.png", None),
        ("a/\x00b.png", None),
        ("", None),
    ],
)
def test_safe_relative_path(name: str, safe: str | None) -> None:
    result = safe_relative_path(name)
    assert (None if result is None else str(result)) == safe


def test_save_uploads_writes_inside_the_folder_only(tmp_path: Path) -> None:
    folder = tmp_path / "up"
    written, refused = save_uploads(
        [
            FakeUpload("a/b.png", b"1"),
            FakeUpload("../x.png"),
            FakeUpload("a/b.png", b"2"),
            FakeUpload("c.jpg", b"3"),
        ],
        folder,
    )
    assert [p.relative_to(folder).as_posix() for p in written] == ["a/b.png", "c.jpg"]
    assert (folder / "a" / "b.png").read_bytes() == b"1"
    assert [name for name, _ in refused] == ["../x.png", "a/b.png"]
    assert not (tmp_path / "x.png").exists()


def test_suggested_dataset_names_are_valid_and_unused() -> None:
    from shoal.store import validate_name

    assert suggest_dataset_name(["My Photos.zip"], []) == "My-Photos"
    assert suggest_dataset_name(["pets/cat/1.jpg"], ["pets"]) == "pets-2"
    assert suggest_dataset_name(["..zip"], []) == "dataset"
    for name in (suggest_dataset_name([n], ["x"]) for n in ["_a.png", "ü.zip", "a" * 90 + ".zip"]):
        validate_name(name)


def test_upload_zip_through_the_page_import_path(tmp_path: Path, sample_images: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for image in sorted((sample_images / "train" / "birds").iterdir())[:4]:
            bundle.write(image, f"pets/train/birds/{image.name}")
        bundle.writestr("pets/train/birds/broken.jpg", b"not an image at all")
        bundle.writestr("pets/train/birds/notes.txt", b"hello")
    uploads = [FakeUpload("pets.zip", archive.read_bytes()), FakeUpload("../escape.png", b"x")]
    folder = upload_dir(workspace)
    written, refused = save_uploads(uploads, folder)
    assert [p.name for p in written] == ["pets.zip"] and written[
        0
    ].read_bytes() == archive.read_bytes()
    assert refused and refused[0][0] == "../escape.png"
    assert not (folder.parent / "escape.png").exists()
    outcome = import_uploads(
        workspace, folder, written, mode="images", dataset="pets", refused=refused
    )
    discard_upload(folder)
    assert not folder.exists()
    assert outcome.report["imported"] == 4
    reasons = {r["file"]: r["reason"] for r in outcome.report["rejected"]}
    assert set(reasons) == {"../escape.png", "train/birds/broken.jpg", "train/birds/notes.txt"}
    assert workspace.open("pets").samples()["label"].unique().tolist() == ["birds"]
    assert len(workspace.open("pets").import_report()["rejected"]) == 3


def test_upload_loose_images_with_manifest_and_embeddings(
    tmp_path: Path, sample_images: Path
) -> None:
    workspace = Workspace(tmp_path / "ws")
    images = sorted((sample_images / "train" / "food").iterdir())[:3]
    manifest = "path,label,camera\n" + "".join(
        f"{p.name},food,cam{i}\n" for i, p in enumerate(images)
    )
    folder = upload_dir(workspace)
    written, _ = save_uploads(
        [
            FakeUpload("list.csv", manifest.encode()),
            *(FakeUpload(p.name, p.read_bytes()) for p in images),
        ],
        folder,
    )
    outcome = import_uploads(workspace, folder, written, mode="manifest", dataset="food")
    assert outcome.report["imported"] == 3
    samples = workspace.open("food").samples()
    assert sorted(samples["camera"]) == ["cam0", "cam1", "cam2"]

    vectors = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    table = "sample_id," + ",".join(f"e{i}" for i in range(16)) + "\n"
    table += "".join(
        sid + "," + ",".join(map(str, row)) + "\n"
        for sid, row in zip(samples["sample_id"], vectors, strict=True)
    )
    folder = upload_dir(workspace)
    written, _ = save_uploads([FakeUpload("clip.csv", table.encode())], folder)
    outcome = import_uploads(
        workspace, folder, written, mode="embeddings", dataset="food", embedding_name="clip"
    )
    assert outcome.embedding == "clip"
    stored = workspace.open("food").load_embeddings("clip")
    np.testing.assert_allclose(stored.vectors, vectors, rtol=1e-6)


def test_an_uploaded_manifest_cannot_reach_or_probe_files_outside_its_upload(
    tmp_path: Path, sample_images: Path
) -> None:
    """Regression: a web manifest's path column read any image the server could read, and the
    reasons ("not found at /...") let a visitor probe the server's filesystem."""
    workspace = Workspace(tmp_path / "ws")
    inside, secret = sorted((sample_images / "train" / "food").iterdir())[:2]
    outside = tmp_path / "server-private"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(secret.read_bytes())
    folder = upload_dir(workspace)
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "link.jpg").symlink_to(outside / "secret.jpg")
    rows = [
        inside.name,  # the one legitimate row
        str(outside / "secret.jpg"),  # absolute path elsewhere on the server
        "../" * 8 + str(outside / "secret.jpg").lstrip("/"),  # climbing out
        "sub/link.jpg",  # a symlink inside the upload pointing out
        "missing.jpg",  # not there: the reason must not name a server path
    ]
    manifest = "path,label\n" + "".join(f"{row},food\n" for row in rows)
    written, _ = save_uploads(
        [FakeUpload("list.csv", manifest.encode()), FakeUpload(inside.name, inside.read_bytes())],
        folder,
    )
    outcome = import_uploads(workspace, folder, written, mode="manifest", dataset="food")

    assert outcome.report["imported"] == 1
    reasons = {item["file"]: item["reason"] for item in outcome.report["rejected"]}
    assert len(reasons) == 4
    for file, reason in reasons.items():
        assert str(tmp_path) not in reason, (file, reason)
        if "missing.jpg" not in file:
            assert "leaves the upload" in reason, (file, reason)
    samples = workspace.open("food").samples()
    assert samples["source"].tolist() == [inside.name]


@pytest.mark.parametrize(
    ("names", "shown"),
    [
        (["pets/cat/a.jpg", "pets/dog/b.jpg"], "pets"),
        (["a.jpg"], "a.jpg"),
        (["a.jpg", "b.jpg"], "2 uploaded files"),
        (["pets/a.jpg", "c.jpg"], "2 uploaded files"),
    ],
)
def test_an_upload_is_reported_by_its_own_name_never_the_server_folder(
    tmp_path: Path, sample_images: Path, names: list[str], shown: str
) -> None:
    """Regression: an upload of loose files or a picked folder was reported (and shown on the
    Datasets page) as "imported N images from /srv/<workspace>/.uploads/upload-..."."""
    workspace = Workspace(tmp_path / "ws")
    images = sorted(sample_images.glob("train/*/*.jpg"))
    folder = upload_dir(workspace)
    written, _ = save_uploads(
        [FakeUpload(n, p.read_bytes()) for n, p in zip(names, images, strict=False)], folder
    )
    outcome = import_uploads(workspace, folder, written, mode="images", dataset="up")
    discard_upload(folder)
    assert outcome.report["source"] == shown
    stored = workspace.open("up").import_report()
    assert str(tmp_path) not in str(stored) and str(tmp_path) not in str(outcome.report)


def test_an_uploaded_parquet_of_images_is_imported_from_its_own_bytes(
    tmp_path: Path, sample_images: Path
) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    images = sorted((sample_images / "train" / "food").iterdir())[:3]
    buffer = io.BytesIO()
    pq.write_table(
        pa.table(
            {
                "image": [{"bytes": p.read_bytes(), "path": p.name} for p in images],
                "label": ["food"] * 3,
            }
        ),
        buffer,
    )
    workspace = Workspace(tmp_path / "ws")
    folder = upload_dir(workspace)
    written, _ = save_uploads([FakeUpload("train.parquet", buffer.getvalue())], folder)
    outcome = import_uploads(workspace, folder, written, mode="manifest", dataset="food")
    assert outcome.report["imported"] == 3 and outcome.report["source"] == "train.parquet"
    assert workspace.open("food").samples()["label"].tolist() == ["food"] * 3
