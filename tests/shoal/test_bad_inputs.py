"""The bad-input catalogue: every importer, and the web uploader, fed one broken input each.

Each row builds one bad input, hands it to one entry point and says what the answer must hold:
``names`` (a regex for the file, row, entry or id at fault), ``hint`` (a regex for what to do),
and optionally ``says`` (what is wrong, where a message could name the file yet mislead).

Two outcomes:

- ``refused``: the import as a whole is refused with a Shoal error (never a library exception or
  a traceback), and the workspace is exactly as before: no dataset, no partial files, nothing
  left in ``.staging`` or ``.uploads``.
- ``skipped``: the import goes on without the bad item (a box, a duplicate zip entry), which is
  listed in the import report with its reason and is absent from what was stored.

Rows whose entry point is the web uploader (``web:<mode>``) run the Datasets page's own path
(:func:`shoal.app.uploads.save_uploads` then :func:`~shoal.app.uploads.import_uploads`, the upload
folder discarded after) and their message must not name a server path. ``cli`` rows run
``shoal ...`` and must print one line. That the page itself keeps serving after each bad web
upload is :func:`test_the_datasets_page_keeps_serving_after_every_bad_upload`.
"""

from __future__ import annotations

import io
import json
import re
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from shoal.app.uploads import discard_upload, import_uploads, save_uploads, upload_dir
from shoal.cli import main as cli_main
from shoal.ingest.coco import import_coco
from shoal.ingest.embeddings import add_embeddings, create_from_embeddings
from shoal.ingest.images import import_source
from shoal.ingest.publish import ImportLimits
from shoal.ingest.voc import import_voc
from shoal.store import StoreError, Workspace

# --------------------------------------------------------------------------- inputs


@cache
def jpeg(width: int = 32, height: int = 24) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (180, 40, 40)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@cache
def png(width: int = 32, height: int = 24) -> bytes:
    buffer = io.BytesIO()
    gradient = np.arange(width * height * 3, dtype=np.uint8).reshape(height, width, 3)
    Image.fromarray(gradient).save(buffer, "PNG")
    return buffer.getvalue()


def noise_png(side: int = 64) -> bytes:
    """A PNG that does not compress (a few kB)."""
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "PNG")
    return buffer.getvalue()


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (8, 8)).save(buffer, "GIF")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def broken_png() -> bytes:
    """A PNG with a damaged data chunk (its CRC no longer matches)."""
    data = bytearray(png(64, 64))
    start = data.index(b"IDAT") + 20
    data[start : start + 16] = b"\x00" * 16
    return bytes(data)


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def make_zip(
    path: Path,
    entries: list[tuple[str | zipfile.ZipInfo, bytes]],
    *,
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression) as bundle, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": on purpose
        for name, data in entries:
            bundle.writestr(name, data)
    return path


def patch_zip(path: Path, *, flag: int | None = None, method: int | None = None) -> Path:
    """Rewrite the first entry's general-purpose flags or compression method in both headers."""
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    if flag is not None:
        struct.pack_into("<H", data, 6, flag)
        struct.pack_into("<H", data, central + 8, flag)
    if method is not None:
        struct.pack_into("<H", data, 8, method)
        struct.pack_into("<H", data, central + 10, method)
    path.write_bytes(bytes(data))
    return path


def corrupt_first_entry(path: Path) -> Path:
    """Flip bytes inside the first (stored) entry's data: its CRC no longer matches."""
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack_from("<HH", data, 26)
    start = 30 + name_length + extra_length + 200
    data[start : start + 8] = bytes(b ^ 0xFF for b in data[start : start + 8])
    path.write_bytes(bytes(data))
    return path


def symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def table_parquet(path: Path, columns: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def embeddings_parquet(path: Path, ids: list[Any], vectors: list[Any], **types: Any) -> Path:
    column = pa.array(vectors, type=types.get("type", pa.list_(pa.float32())))
    return table_parquet(path, {"sample_id": pa.array(ids), "embedding": column})


def npy(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array, allow_pickle=True)
    return path


def coco(path: Path, *, images=None, annotations=None, categories=None) -> Path:
    payload = {
        "images": images
        if images is not None
        else [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
        "annotations": annotations
        if annotations is not None
        else [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 20]}],
        "categories": categories if categories is not None else [{"id": 1, "name": "cat"}],
    }
    return write(path, json.dumps(payload))


def voc_xml(name: str = "a.jpg", objects: str | None = None) -> str:
    box = "<bndbox><xmin>3</xmin><ymin>3</ymin><xmax>20</xmax><ymax>20</ymax></bndbox>"
    objects = objects if objects is not None else f"<object><name>cat</name>{box}</object>"
    return (
        f"<annotation><filename>{name}</filename><size><width>64</width><height>48</height>"
        f"</size>{objects}</annotation>"
    )


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY a "aaaaaaaaaa">'
    + "".join(
        f'<!ENTITY {c} "{("&" + p + ";") * 10}">' for p, c in zip("abcdefg", "bcdefgh", strict=True)
    )
    + "]>"
    + voc_xml(objects="<object><name>&h;</name></object>")
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY secret SYSTEM "file:///etc/passwd">]>'
    + voc_xml(objects="<object><name>&secret;</name></object>")
)


class FakeUpload:
    """What st.file_uploader hands the page: a name and the bytes."""

    def __init__(self, name: str, data: bytes | str = b"x"):
        self.name = name
        self._data = data.encode() if isinstance(data, str) else data

    def getbuffer(self) -> memoryview:
        return memoryview(self._data)


@dataclass(frozen=True)
class Web:
    """An upload through the Datasets page: the files, the mode and the target dataset."""

    files: list[FakeUpload]
    mode: str
    dataset: str = "new"
    embedding_name: str = "user"


@dataclass(frozen=True)
class Cli:
    argv: list[str]


Call = Callable[[], Any] | Web | Cli


def existing_dataset(workspace: Workspace, folder: Path) -> None:
    """'pets': three samples (a, b, c) and a 4-d embedding set 'user', no images."""
    ids = ["a", "b", "c"]
    vectors = npy(folder / "seed.npy", np.eye(3, 4, dtype=np.float32) + 1)
    meta = write(folder / "seed.csv", "sample_id,label\n" + "".join(f"{i},x\n" for i in ids))
    create_from_embeddings(workspace, "pets", vectors, metadata_file=meta)


def add_to_pets(workspace: Workspace, folder: Path, file: Path, **options: Any) -> Call:
    """Add ``file`` to 'pets' as the new embedding set 'clip' (unless ``name`` says otherwise)."""
    existing_dataset(workspace, folder)
    options.setdefault("name", "clip")
    return lambda: add_embeddings(workspace.open("pets"), file, **options)


def detection_images(folder: Path) -> Path:
    write(folder / "a.jpg", jpeg(64, 48))
    return folder


# --------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Bad:
    id: str
    build: Callable[[Path, Workspace], Call]
    names: str
    hint: str
    says: str | None = None
    outcome: str = "refused"
    check: Callable[[Workspace], None] | None = None


def _only_first_copy_kept(workspace: Workspace) -> None:
    ds = workspace.open("new")
    samples = ds.samples()
    assert samples["source"].tolist() == ["a.jpg"]
    assert ds.image_file(samples["path"].iloc[0]).read_bytes() == jpeg(32, 24)


def _conflict_imports_the_rest(workspace: Workspace) -> None:
    samples = workspace.open("new").samples()
    assert sorted(samples["source"]) == ["a.jpg", "b.jpg"]


CATALOGUE: list[Bad] = [
    # ---- folder of images / folder per class
    Bad(
        "folder-empty",
        lambda d, ws: (
            lambda: import_source(ws, (d / "photos").mkdir() or d / "photos", dataset="new")
        ),
        names=r"photos",
        hint=r"add .*(JPEG|image)",
    ),
    Bad(
        "folder-only-text-file",
        lambda d, ws: (
            write(d / "photos" / "notes.txt", "hello"),
            lambda: import_source(ws, d / "photos", dataset="new"),
        )[1],
        names=r"notes\.txt",
        hint=r"rename|remove",
    ),
    Bad(
        "folder-mac-junk-only",
        lambda d, ws: (
            write(d / "photos" / ".DS_Store", b"\0\0\0\1Bud1"),
            write(d / "photos" / "__MACOSX" / "._a.jpg", b"\0\5\26\7"),
            lambda: import_source(ws, d / "photos", dataset="new"),
        )[-1],
        names=r"photos",
        hint=r"add .*(JPEG|image)",
    ),
    Bad(
        "class-folder-empty-image",
        lambda d, ws: (
            write(d / "pets" / "cat" / "empty.png", b""),
            lambda: import_source(ws, d / "pets", dataset="new"),
        )[1],
        names=r"cat/empty\.png",
        hint=r"re-export|remove",
        says=r"empty",
    ),
    Bad(
        "class-folder-truncated-jpeg",
        lambda d, ws: (
            write(d / "pets" / "cat" / "cut.jpg", jpeg(200, 150)[:400]),
            lambda: import_source(ws, d / "pets", dataset="new"),
        )[1],
        names=r"cat/cut\.jpg",
        hint=r"re-export|re-save",
        says=r"truncated|corrupt",
    ),
    Bad(
        "split-class-broken-png",
        lambda d, ws: (
            write(d / "pets" / "train" / "dog" / "broken.png", broken_png()),
            lambda: import_source(ws, d / "pets", dataset="new"),
        )[1],
        names=r"train/dog/broken\.png",
        hint=r"re-export|re-save",
    ),
    Bad(
        "text-with-image-extension",
        lambda d, ws: (
            write(d / "pets" / "cat" / "notes.jpg", "not a picture"),
            lambda: import_source(ws, d / "pets", dataset="new"),
        )[1],
        names=r"cat/notes\.jpg",
        hint=r"re-export|remove",
        says=r"not an image",
    ),
    Bad(
        "gif-named-png",
        lambda d, ws: (
            write(d / "pets" / "cat" / "anim.png", gif()),
            lambda: import_source(ws, d / "pets", dataset="new"),
        )[1],
        names=r"cat/anim\.png",
        hint=r"convert|use JPEG",
        says=r"GIF",
    ),
    Bad(
        "image-over-pixel-cap",
        lambda d, ws: (
            write(d / "pets" / "cat" / "big.jpg", jpeg()),
            lambda: import_source(
                ws, d / "pets", dataset="new", limits=ImportLimits(max_image_pixels=100)
            ),
        )[1],
        names=r"cat/big\.jpg",
        hint=r"downscale",
    ),
    Bad(
        "decompression-bomb-header",
        lambda d, ws: (
            write(d / "pets" / "cat" / "bomb.png", png_header(40_000, 40_000)),
            lambda: import_source(ws, d / "pets", dataset="new"),
        )[1],
        names=r"cat/bomb\.png",
        hint=r"downscale",
        says=r"decompression bomb",
    ),
    # ---- zip
    Bad(
        "zip-not-a-zip",
        lambda d, ws: (
            write(d / "photos.zip", "this is text"),
            lambda: import_source(ws, d / "photos.zip", dataset="new"),
        )[1],
        names=r"photos\.zip",
        hint=r"zip the files again",
    ),
    Bad(
        "zip-truncated",
        lambda d, ws: (
            write(
                d / "photos.zip",
                make_zip(d / "full.zip", [("a.jpg", jpeg()), ("b.jpg", png())]).read_bytes()[:300],
            ),
            lambda: import_source(ws, d / "photos.zip", dataset="new"),
        )[1],
        names=r"photos\.zip",
        hint=r"zip the files again",
    ),
    Bad(
        "zip-empty",
        lambda d, ws: (
            make_zip(d / "photos.zip", []),
            lambda: import_source(ws, d / "photos.zip", dataset="new"),
        )[1],
        names=r"photos\.zip",
        hint=r"add .*(JPEG|image)",
    ),
    Bad(
        "zip-slip-dotdot",
        lambda d, ws: (
            make_zip(d / "photos.zip", [("../../evil.jpg", jpeg())]),
            lambda: import_source(ws, d / "photos.zip", dataset="new"),
        )[1],
        names=r"\.\./\.\./evil\.jpg",
        hint=r"relative path",
        says=r"zip-slip",
    ),
    Bad(
        "zip-slip-absolute",
        lambda d, ws: (
            make_zip(d / "photos.zip", [("/tmp/evil.jpg", jpeg())]),
            lambda: import_source(ws, d / "photos.zip", dataset="new"),
        )[1],
        names=r"/tmp/evil\.jpg",
        hint=r"relative path",
    ),
    Bad(
        "zip-slip-drive-letter",
        lambda d, ws: (
            make_zip(d / "photos.zip", [("C:\\Windows\\evil.jpg", jpeg())]),
            lambda: import_source(ws, d / "photos.zip", dataset="new"),
        )[1],
        names=r"C:.Windows.evil\.jpg",
        hint=r"relative path",
    ),
    Bad(
        "zip-symlink",
        lambda d, ws: (
            make_zip(d / "photos.zip", [symlink_entry("cat/link.jpg", "/etc/passwd")]),
            lambda: import_source(ws, d / "photos.zip", dataset="new"),
        )[1],
        names=r"cat/link\.jpg",
        hint=r"the file itself",
    ),
    Bad(
        "zip-entry-bomb",
        lambda d, ws: (
            make_zip(d / "photos.zip", [("bomb.jpg", b"\0" * (3 << 20))]),
            lambda: import_source(ws, d / "photos.zip", dataset="new"),
        )[1],
        names=r"bomb\.jpg",
        hint=r"real image|split",
        says=r"zip bomb",
    ),
    Bad(
        "zip-many-small-bombs",
        lambda d, ws: (
            make_zip(d / "photos.zip", [(f"p{i}.jpg", b"\0" * (1 << 20)) for i in range(65)]),
            lambda: import_source(ws, d / "photos.zip", dataset="new"),
        )[1],
        names=r"photos\.zip",
        hint=r"real image|split",
        says=r"zip bomb",
    ),
    Bad(
        "zip-too-many-entries",
        lambda d, ws: (
            make_zip(d / "photos.zip", [(f"p{i}.jpg", jpeg()) for i in range(5)]),
            lambda: import_source(
                ws, d / "photos.zip", dataset="new", limits=ImportLimits(max_zip_entries=3)
            ),
        )[1],
        names=r"photos\.zip",
        hint=r"split",
    ),
    Bad(
        "zip-entry-over-size-cap",
        lambda d, ws: (
            make_zip(d / "photos.zip", [("big.png", noise_png())], compression=zipfile.ZIP_STORED),
            lambda: import_source(
                ws, d / "photos.zip", dataset="new", limits=ImportLimits(max_zip_total_bytes=1000)
            ),
        )[1],
        names=r"big\.png",
        hint=r"downscale|split",
    ),
    Bad(
        "zip-entry-bad-crc",
        lambda d, ws: (
            corrupt_first_entry(
                make_zip(d / "photos.zip", [("a.png", noise_png())], compression=zipfile.ZIP_STORED)
            ),
            lambda: import_source(ws, d / "photos.zip", dataset="new"),
        )[1],
        names=r"a\.png",
        hint=r"zip the files again",
        says=r"corrupt",
    ),
    Bad(
        "zip-encrypted-entry",
        lambda d, ws: (
            patch_zip(make_zip(d / "photos.zip", [("secret.jpg", jpeg())]), flag=0x1),
            lambda: import_source(ws, d / "photos.zip", dataset="new"),
        )[1],
        names=r"secret\.jpg",
        hint=r"without a password",
        says=r"encrypted",
    ),
    Bad(
        "zip-unsupported-compression",
        lambda d, ws: (
            patch_zip(make_zip(d / "photos.zip", [("a.jpg", jpeg())]), method=9),
            lambda: import_source(ws, d / "photos.zip", dataset="new"),
        )[1],
        names=r"a\.jpg",
        hint=r"deflate",
        says=r"compression",
    ),
    Bad(
        "zip-entry-name-too-long",
        lambda d, ws: (
            make_zip(d / "photos.zip", [("a" * 300 + ".jpg", jpeg())]),
            lambda: import_source(ws, d / "photos.zip", dataset="new"),
        )[1],
        names=r"a{20}",
        hint=r"shorter|rename",
    ),
    Bad(
        "zip-folder-name-too-long",
        lambda d, ws: (
            make_zip(d / "photos.zip", [("f" * 300 + "/a.jpg", jpeg())]),
            lambda: import_source(ws, d / "photos.zip", dataset="new"),
        )[1],
        names=r"f{20}",
        hint=r"shorter|rename",
    ),
    Bad(
        "zip-file-and-folder-of-one-name",
        lambda d, ws: (
            make_zip(
                d / "photos.zip",
                [("a.jpg", jpeg()), ("a.jpg/c.jpg", jpeg()), ("b.jpg", png())],
            ),
            lambda: import_source(ws, d / "photos.zip", dataset="new"),
        )[1],
        names=r"a\.jpg/c\.jpg",
        hint=r"rename",
        outcome="skipped",
        check=_conflict_imports_the_rest,
    ),
    Bad(
        "zip-same-name-twice",
        lambda d, ws: (
            make_zip(d / "photos.zip", [("a.jpg", jpeg(32, 24)), ("a.jpg", jpeg(48, 48))]),
            lambda: import_source(ws, d / "photos.zip", dataset="new"),
        )[1],
        names=r"a\.jpg",
        hint=r"rename",
        says=r"same name",
        outcome="skipped",
        check=_only_first_copy_kept,
    ),
    # ---- CSV manifest
    Bad(
        "csv-empty-file",
        lambda d, ws: (
            write(d / "list.csv", b""),
            lambda: import_source(ws, d / "list.csv", dataset="new"),
        )[1],
        names=r"list\.csv",
        hint=r"header row",
    ),
    Bad(
        "csv-ragged-rows",
        lambda d, ws: (
            write(d / "list.csv", "path,label\na.jpg,cat\nb.jpg,dog,extra,more\n"),
            lambda: import_source(ws, d / "list.csv", dataset="new"),
        )[1],
        names=r"list\.csv.*line 3",
        hint=r"quote|same number",
    ),
    Bad(
        "csv-not-utf8",
        lambda d, ws: (
            write(d / "list.csv", "path,label\na.jpg,caf\xe9\n".encode("latin-1")),
            lambda: import_source(ws, d / "list.csv", dataset="new"),
        )[1],
        names=r"list\.csv",
        hint=r"save it as UTF-8",
    ),
    Bad(
        "csv-header-only",
        lambda d, ws: (
            write(d / "list.csv", "path,label\n"),
            lambda: import_source(ws, d / "list.csv", dataset="new"),
        )[1],
        names=r"list\.csv",
        hint=r"add .*row",
        says=r"no rows",
    ),
    Bad(
        "csv-no-path-column",
        lambda d, ws: (
            write(d / "list.csv", "picture,label\na.jpg,cat\n"),
            lambda: import_source(ws, d / "list.csv", dataset="new"),
        )[1],
        names=r"list\.csv",
        hint=r"name one of",
    ),
    Bad(
        "csv-empty-path-cell",
        lambda d, ws: (
            write(d / "list.csv", "path,label\n,cat\n"),
            lambda: import_source(ws, d / "list.csv", dataset="new"),
        )[1],
        names=r"row 2",
        hint=r"fill it in",
    ),
    Bad(
        "csv-numeric-path",
        lambda d, ws: (
            write(d / "list.csv", "path,label\n123,cat\n"),
            lambda: import_source(ws, d / "list.csv", dataset="new"),
        )[1],
        names=r"row 2",
        hint=r"path of an image",
        says=r"123",
    ),
    Bad(
        "csv-image-missing",
        lambda d, ws: (
            write(d / "list.csv", "path,label\nmissing.jpg,cat\n"),
            lambda: import_source(ws, d / "list.csv", dataset="new"),
        )[1],
        names=r"row 2.*missing\.jpg",
        hint=r"relative to the manifest",
    ),
    Bad(
        "csv-path-too-long",
        lambda d, ws: (
            write(d / "list.csv", "path,label\n" + "p" * 300 + ".jpg,cat\n"),
            lambda: import_source(ws, d / "list.csv", dataset="new"),
        )[1],
        names=r"row 2",
        hint=r"shorter|rename",
    ),
    Bad(
        "csv-duplicate-ids",
        lambda d, ws: (
            write(d / "a.jpg", jpeg()),
            write(d / "list.csv", "path,sample_id\na.jpg,x\na.jpg,x\n"),
            lambda: import_source(ws, d / "list.csv", dataset="new"),
        )[-1],
        names=r"'x'.*rows 2, 3",
        hint=r"own id|unique",
    ),
    Bad(
        "csv-id-too-long",
        lambda d, ws: (
            write(d / "a.jpg", jpeg()),
            write(d / "list.csv", "path,sample_id\na.jpg," + "i" * 300 + "\n"),
            lambda: import_source(ws, d / "list.csv", dataset="new"),
        )[-1],
        names=r"row 2",
        hint=r"shorten",
    ),
    # ---- Parquet manifest
    Bad(
        "parquet-not-parquet",
        lambda d, ws: (
            write(d / "list.parquet", "path,label\na.jpg,cat\n"),
            lambda: import_source(ws, d / "list.parquet", dataset="new"),
        )[1],
        names=r"list\.parquet",
        hint=r"save it again|write it again",
    ),
    Bad(
        "parquet-over-cell-cap",
        lambda d, ws: (
            table_parquet(d / "list.parquet", {"path": ["a.jpg"] * 50, "x": list(range(50))}),
            lambda: import_source(
                ws, d / "list.parquet", dataset="new", limits=ImportLimits(max_table_cells=10)
            ),
        )[1],
        names=r"list\.parquet",
        hint=r"split it",
    ),
    Bad(
        "parquet-integer-paths",
        lambda d, ws: (
            table_parquet(d / "list.parquet", {"path": [17, 18]}),
            lambda: import_source(ws, d / "list.parquet", dataset="new"),
        )[1],
        names=r"row 1",
        hint=r"path of an image",
    ),
    Bad(
        "parquet-duplicate-ids",
        lambda d, ws: (
            write(d / "a.jpg", jpeg()),
            table_parquet(d / "list.parquet", {"path": ["a.jpg", "a.jpg"], "id": ["x", "x"]}),
            lambda: import_source(ws, d / "list.parquet", dataset="new"),
        )[-1],
        names=r"'x'.*rows 1, 2\b",
        hint=r"own id|unique",
    ),
    # ---- embeddings for an existing dataset (add-embeddings)
    Bad(
        "npy-pickled-objects",
        lambda d, ws: add_to_pets(ws, d, npy(d / "e.npy", np.array([{"a": 1}] * 3, dtype=object))),
        names=r"e\.npy",
        hint=r"np\.save",
        says=r"Python objects",
    ),
    Bad(
        "npy-one-dimensional",
        lambda d, ws: add_to_pets(ws, d, npy(d / "e.npy", np.ones(3, np.float32)), name="clip"),
        names=r"e\.npy",
        hint=r"\(n_samples, dim\)",
    ),
    Bad(
        "npy-strings",
        lambda d, ws: add_to_pets(ws, d, npy(d / "e.npy", np.array([["a"] * 4] * 3)), name="clip"),
        names=r"e\.npy",
        hint=r"float",
    ),
    Bad(
        "npy-nan",
        lambda d, ws: add_to_pets(
            ws, d, npy(d / "e.npy", np.array([[1, 2], [np.nan, 1], [3, 4]], np.float32)), name="c"
        ),
        names=r"e\.npy.*row 1",
        hint=r"must be a finite number",
    ),
    Bad(
        "npy-wrong-row-count",
        lambda d, ws: add_to_pets(ws, d, npy(d / "e.npy", np.ones((5, 4), np.float32))),
        names=r"e\.npy",
        hint=r"ids",
    ),
    Bad(
        "npy-empty-file",
        lambda d, ws: add_to_pets(ws, d, write(d / "e.npy", b"")),
        names=r"e\.npy",
        hint=r"np\.save",
        says=r"empty",
    ),
    Bad(
        "npy-truncated",
        lambda d, ws: add_to_pets(
            ws, d, write(d / "e.npy", npy(d / "full.npy", np.ones((3, 64))).read_bytes()[:-100])
        ),
        names=r"e\.npy",
        hint=r"np\.save",
        says=r"truncated|shorter",
    ),
    Bad(
        "npy-not-numpy",
        lambda d, ws: add_to_pets(ws, d, write(d / "e.npy", b"PK\x03\x04 a zip, not numpy")),
        names=r"e\.npy",
        hint=r"np\.save",
        says=r"not an \.npy",
    ),
    Bad(
        "npy-zero-rows",
        lambda d, ws: add_to_pets(ws, d, npy(d / "e.npy", np.ones((0, 4), np.float32))),
        names=r"e\.npy",
        hint=r"one row per sample",
    ),
    Bad(
        "npy-dimension-mismatch",
        lambda d, ws: add_to_pets(
            ws, d, npy(d / "e.npy", np.ones((3, 5), np.float32)), name="user"
        ),
        names=r"e\.npy",
        hint=r"another (embedding )?name",
    ),
    Bad(
        "ids-file-count-mismatch",
        lambda d, ws: add_to_pets(
            ws,
            d,
            npy(d / "e.npy", np.ones((3, 4), np.float32)),
            name="clip",
            ids_file=write(d / "ids.txt", "a\nb\n"),
        ),
        names=r"ids\.txt",
        hint=r"one id per (row|line)",
    ),
    Bad(
        "ids-file-not-utf8",
        lambda d, ws: add_to_pets(
            ws,
            d,
            npy(d / "e.npy", np.ones((3, 4), np.float32)),
            name="clip",
            ids_file=write(d / "ids.txt", b"a\n\xff\xfe\nc\n"),
        ),
        names=r"ids\.txt",
        hint=r"UTF-8",
    ),
    Bad(
        "parquet-ragged-vectors",
        lambda d, ws: add_to_pets(
            ws, d, embeddings_parquet(d / "e.parquet", ["a", "b", "c"], [[1, 2], [1, 2, 3], [1, 2]])
        ),
        names=r"row 1 \(id 'b'\)",
        hint=r"same (number of values|dimension)",
    ),
    Bad(
        "parquet-null-vector",
        lambda d, ws: add_to_pets(
            ws, d, embeddings_parquet(d / "e.parquet", ["a", "b", "c"], [[1, 2], None, [1, 2]])
        ),
        names=r"row 1 \(id 'b'\)",
        hint=r"give (it|every row)|drop",
    ),
    Bad(
        "parquet-string-vectors",
        lambda d, ws: add_to_pets(
            ws,
            d,
            embeddings_parquet(
                d / "e.parquet", ["a", "b", "c"], [["x"], ["y"], ["z"]], type=pa.list_(pa.string())
            ),
        ),
        names=r"'embedding'",
        hint=r"float",
    ),
    Bad(
        "parquet-no-id-column",
        lambda d, ws: add_to_pets(
            ws, d, table_parquet(d / "e.parquet", {"key": ["a"], "f0": [1.0]})
        ),
        names=r"e\.parquet",
        hint=r"name one of",
    ),
    Bad(
        "parquet-unknown-id",
        lambda d, ws: add_to_pets(
            ws, d, embeddings_parquet(d / "e.parquet", ["a", "b", "zz"], [[1.0, 2.0]] * 3)
        ),
        names=r"'zz'",
        hint=r"must match",
    ),
    Bad(
        "parquet-missing-sample",
        lambda d, ws: add_to_pets(
            ws, d, embeddings_parquet(d / "e.parquet", ["a", "b"], [[1.0, 2.0]] * 2)
        ),
        names=r"'c'",
        hint=r"one row per sample",
    ),
    Bad(
        "parquet-duplicate-id",
        lambda d, ws: add_to_pets(
            ws, d, embeddings_parquet(d / "e.parquet", ["a", "b", "b", "c"], [[1.0, 2.0]] * 4)
        ),
        names=r"'b' \(row 2\)",
        hint=r"once",
    ),
    Bad(
        "parquet-id-too-long",
        lambda d, ws: add_to_pets(
            ws, d, embeddings_parquet(d / "e.parquet", ["a", "b" * 400, "c"], [[1.0]] * 3)
        ),
        names=r"the sample_id at row 2",
        hint=r"shorten",
    ),
    Bad(
        "parquet-infinite-value",
        lambda d, ws: add_to_pets(
            ws,
            d,
            embeddings_parquet(d / "e.parquet", ["a", "b", "c"], [[1.0], [float("inf")], [0.0]]),
        ),
        names=r"row 1 \(id 'b'\)",
        hint=r"must be a finite number",
    ),
    Bad(
        "csv-vectors-not-numeric",
        lambda d, ws: add_to_pets(
            ws, d, write(d / "e.csv", "sample_id,f0,f1\na,1,2\nb,1,oops\nc,3,4\n")
        ),
        names=r"'f1'.*oops",
        hint=r"numeric columns only",
    ),
    Bad(
        "csv-only-id-column",
        lambda d, ws: add_to_pets(ws, d, write(d / "e.csv", "sample_id\na\nb\nc\n"), name="x"),
        names=r"e\.csv",
        hint=r"numeric column",
    ),
    Bad(
        "embeddings-unsupported-format",
        lambda d, ws: add_to_pets(ws, d, write(d / "e.txt", "1 2 3")),
        names=r"e\.txt",
        hint=r"use \.npy, \.parquet or \.csv",
    ),
    Bad(
        "embedding-name-with-slash",
        lambda d, ws: add_to_pets(
            ws, d, npy(d / "e.npy", np.ones((3, 4), np.float32)), name="../clip"
        ),
        names=r"\.\./clip",
        hint=r"use letters",
    ),
    # ---- embeddings + metadata (a dataset without images)
    Bad(
        "metadata-no-id-column",
        lambda d, ws: (
            lambda: create_from_embeddings(
                ws,
                "new",
                npy(d / "e.npy", np.ones((2, 4), np.float32)),
                metadata_file=write(d / "meta.csv", "name,label\na,x\nb,y\n"),
            )
        ),
        names=r"meta\.csv",
        hint=r"name one of",
    ),
    Bad(
        "metadata-duplicate-id",
        lambda d, ws: (
            lambda: create_from_embeddings(
                ws,
                "new",
                embeddings_parquet(d / "e.parquet", ["a", "b"], [[1.0], [2.0]]),
                metadata_file=write(d / "meta.csv", "sample_id,label\na,x\nb,y\nb,z\n"),
            )
        ),
        names=r"meta\.csv.*'b'.*row 4",
        hint=r"once",
    ),
    Bad(
        "metadata-row-count-mismatch",
        lambda d, ws: (
            lambda: create_from_embeddings(
                ws,
                "new",
                npy(d / "e.npy", np.ones((3, 4), np.float32)),
                metadata_file=write(d / "meta.csv", "sample_id\na\nb\n"),
            )
        ),
        names=r"meta\.csv",
        hint=r"one to one",
    ),
    Bad(
        "metadata-ids-do-not-match",
        lambda d, ws: (
            lambda: create_from_embeddings(
                ws,
                "new",
                embeddings_parquet(d / "e.parquet", ["a", "zz"], [[1.0], [2.0]]),
                metadata_file=write(d / "meta.csv", "sample_id\na\nb\n"),
            )
        ),
        names=r"'zz'",
        hint=r"must match",
        says=r"meta\.csv",
    ),
    Bad(
        "metadata-ragged-csv",
        lambda d, ws: (
            lambda: create_from_embeddings(
                ws,
                "new",
                npy(d / "e.npy", np.ones((2, 4), np.float32)),
                metadata_file=write(d / "meta.csv", "sample_id,label\na,x\nb,y,z\n"),
            )
        ),
        names=r"meta\.csv.*line 3",
        hint=r"quote|same number",
    ),
    # ---- COCO
    Bad(
        "coco-not-json",
        lambda d, ws: (
            write(d / "ann.json", "{'images': []}"),
            lambda: import_coco(ws, d / "ann.json", images=detection_images(d), dataset="new"),
        )[1],
        names=r"ann\.json.*line 1",
        hint=r"export it again|fix",
    ),
    Bad(
        "coco-not-utf8",
        lambda d, ws: (
            write(d / "ann.json", b'{"images": "\xff"}'),
            lambda: import_coco(ws, d / "ann.json", images=detection_images(d), dataset="new"),
        )[1],
        names=r"ann\.json",
        hint=r"UTF-8",
    ),
    Bad(
        "coco-nested-too-deep",
        lambda d, ws: (
            write(d / "ann.json", "[" * 100_000 + "]" * 100_000),
            lambda: import_coco(ws, d / "ann.json", images=detection_images(d), dataset="new"),
        )[1],
        names=r"ann\.json",
        hint=r"export it again|fix",
        says=r"nest",
    ),
    Bad(
        "coco-not-a-coco-file",
        lambda d, ws: (
            write(d / "ann.json", "[1, 2, 3]"),
            lambda: import_coco(ws, d / "ann.json", images=detection_images(d), dataset="new"),
        )[1],
        names=r"ann\.json",
        hint=r"needs an 'images' list",
    ),
    Bad(
        "coco-images-folder-missing",
        lambda d, ws: (
            coco(d / "ann.json"),
            lambda: import_coco(ws, d / "ann.json", images=d / "nowhere", dataset="new"),
        )[1],
        names=r"nowhere",
        hint=r"--images|images=",
    ),
    Bad(
        "coco-image-file-missing",
        lambda d, ws: (
            coco(d / "ann.json", images=[{"id": 1, "file_name": "gone.jpg"}]),
            lambda: import_coco(ws, d / "ann.json", images=detection_images(d), dataset="new"),
        )[1],
        names=r"gone\.jpg",
        hint=r"images folder",
    ),
    Bad(
        "coco-absolute-file-name",
        lambda d, ws: (
            coco(d / "ann.json", images=[{"id": 1, "file_name": "/etc/a.jpg"}]),
            lambda: import_coco(ws, d / "ann.json", images=detection_images(d), dataset="new"),
        )[1],
        names=r"/etc/a\.jpg",
        hint=r"relative path",
    ),
    Bad(
        "coco-malformed-bbox",
        lambda d, ws: (
            coco(
                d / "ann.json",
                annotations=[
                    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 20]},
                    {"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 2]},
                ],
            ),
            lambda: import_coco(ws, d / "ann.json", images=detection_images(d), dataset="new"),
        )[1],
        names=r"ann\.json annotation 7",
        hint=r"expected \[x, y, width, height\]",
        outcome="skipped",
    ),
    Bad(
        "coco-unknown-category",
        lambda d, ws: (
            coco(
                d / "ann.json",
                annotations=[
                    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 20]},
                    {"id": 8, "image_id": 1, "category_id": 99, "bbox": [2, 2, 9, 9]},
                ],
            ),
            lambda: import_coco(ws, d / "ann.json", images=detection_images(d), dataset="new"),
        )[1],
        names=r"annotation 8.*99",
        hint=r"add it to 'categories'",
        outcome="skipped",
    ),
    Bad(
        "coco-unknown-image",
        lambda d, ws: (
            coco(
                d / "ann.json",
                annotations=[
                    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 20]},
                    {"id": 9, "image_id": 42, "category_id": 1, "bbox": [2, 2, 9, 9]},
                ],
            ),
            lambda: import_coco(ws, d / "ann.json", images=detection_images(d), dataset="new"),
        )[1],
        names=r"annotation 9.*42",
        hint=r"add it to 'images'",
        outcome="skipped",
    ),
    Bad(
        "coco-zero-size-box",
        lambda d, ws: (
            coco(
                d / "ann.json",
                annotations=[
                    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 20]},
                    {"id": 10, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 9]},
                ],
            ),
            lambda: import_coco(ws, d / "ann.json", images=detection_images(d), dataset="new"),
        )[1],
        names=r"annotation 10",
        hint=r"positive width and height",
        outcome="skipped",
    ),
    Bad(
        "coco-box-outside-image",
        lambda d, ws: (
            coco(
                d / "ann.json",
                annotations=[
                    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 20]},
                    {"id": 11, "image_id": 1, "category_id": 1, "bbox": [500, 500, 10, 10]},
                ],
            ),
            lambda: import_coco(ws, d / "ann.json", images=detection_images(d), dataset="new"),
        )[1],
        names=r"annotation 11",
        hint=r"pixels of this image|coordinates",
        outcome="skipped",
    ),
    Bad(
        "coco-coordinate-not-a-number",
        lambda d, ws: (
            coco(
                d / "ann.json",
                annotations=[
                    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 20]},
                    {"id": 12, "image_id": 1, "category_id": 1, "bbox": [2, "two", 9, 9]},
                ],
            ),
            lambda: import_coco(ws, d / "ann.json", images=detection_images(d), dataset="new"),
        )[1],
        names=r"annotation 12.*'two'",
        hint=r"numbers",
        outcome="skipped",
    ),
    # ---- detection predictions
    Bad(
        "predictions-not-a-list",
        lambda d, ws: (
            coco(d / "ann.json"),
            write(d / "preds.json", '{"image_id": 1}'),
            lambda: import_coco(
                ws,
                d / "ann.json",
                images=detection_images(d),
                dataset="new",
                predictions=d / "preds.json",
            ),
        )[-1],
        names=r"preds\.json",
        hint=r"must hold a list",
    ),
    Bad(
        "predictions-not-json",
        lambda d, ws: (
            coco(d / "ann.json"),
            write(d / "preds.json", "image_id,score\n1,0.5\n"),
            lambda: import_coco(
                ws,
                d / "ann.json",
                images=detection_images(d),
                dataset="new",
                predictions=d / "preds.json",
            ),
        )[-1],
        names=r"preds\.json",
        hint=r"export it again|fix",
    ),
    Bad(
        "prediction-without-score",
        lambda d, ws: (
            coco(d / "ann.json"),
            write(
                d / "preds.json",
                json.dumps([{"image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 20]}]),
            ),
            lambda: import_coco(
                ws,
                d / "ann.json",
                images=detection_images(d),
                dataset="new",
                predictions=d / "preds.json",
            ),
        )[-1],
        names=r"preds\.json prediction 0",
        hint=r"add a 'score'",
        outcome="skipped",
    ),
    # ---- VOC
    Bad(
        "voc-no-xml",
        lambda d, ws: lambda: import_voc(ws, detection_images(d / "voc"), dataset="new"),
        names=r"voc",
        hint=r"Annotations/",
    ),
    Bad(
        "voc-malformed-xml",
        lambda d, ws: (
            write(d / "voc" / "a.xml", "<annotation><filename>a.jpg</filename>"),
            lambda: import_voc(ws, detection_images(d / "voc"), dataset="new"),
        )[-1],
        names=r"a\.xml.*line 1",
        hint=r"fix|export it again",
    ),
    Bad(
        "voc-billion-laughs",
        lambda d, ws: (
            write(d / "voc" / "a.xml", BILLION_LAUGHS),
            lambda: import_voc(ws, detection_images(d / "voc"), dataset="new"),
        )[-1],
        names=r"a\.xml",
        hint=r"fix|export it again",
    ),
    Bad(
        "voc-external-entity",
        lambda d, ws: (
            write(d / "voc" / "a.xml", EXTERNAL_ENTITY),
            lambda: import_voc(ws, detection_images(d / "voc"), dataset="new"),
        )[-1],
        names=r"a\.xml",
        hint=r"fix|export it again",
    ),
    Bad(
        "voc-wrong-root",
        lambda d, ws: (
            write(d / "voc" / "a.xml", "<svg><filename>a.jpg</filename></svg>"),
            lambda: import_voc(ws, detection_images(d / "voc"), dataset="new"),
        )[-1],
        names=r"a\.xml.*<svg>",
        hint=r"Pascal VOC",
    ),
    Bad(
        "voc-image-missing",
        lambda d, ws: (
            write(d / "voc" / "a.xml", voc_xml("gone.jpg")),
            lambda: import_voc(ws, d / "voc", dataset="new"),
        )[-1],
        names=r"gone\.jpg",
        hint=r"beside|JPEGImages",
    ),
    Bad(
        "voc-object-without-box",
        lambda d, ws: (
            write(
                d / "voc" / "a.xml",
                voc_xml(
                    objects="<object><name>cat</name><bndbox><xmin>3</xmin><ymin>3</ymin>"
                    "<xmax>20</xmax><ymax>20</ymax></bndbox></object>"
                    "<object><name>dog</name></object>"
                ),
            ),
            lambda: import_voc(ws, detection_images(d / "voc"), dataset="new"),
        )[-1],
        names=r"a\.xml object 2",
        hint=r"add a <bndbox>",
        outcome="skipped",
    ),
    Bad(
        "voc-coordinate-not-a-number",
        lambda d, ws: (
            write(
                d / "voc" / "a.xml",
                voc_xml(
                    objects="<object><name>cat</name><bndbox><xmin>3</xmin><ymin>3</ymin>"
                    "<xmax>20</xmax><ymax>20</ymax></bndbox></object>"
                    "<object><name>dog</name><bndbox><xmin>x</xmin><ymin>3</ymin>"
                    "<xmax>9</xmax><ymax>9</ymax></bndbox></object>"
                ),
            ),
            lambda: import_voc(ws, detection_images(d / "voc"), dataset="new"),
        )[-1],
        names=r"a\.xml object 2.*'x'",
        hint=r"numbers",
        outcome="skipped",
    ),
    # ---- the web uploader (the Datasets page's import path)
    Bad(
        "web-only-unsafe-names",
        lambda d, ws: Web([FakeUpload("../../x.png", png())], "images"),
        names=r"\.\./\.\./x\.png",
        hint=r"rename",
    ),
    Bad(
        "web-unsafe-name-beside-a-text-file",
        lambda d, ws: Web([FakeUpload("../x.png", png()), FakeUpload("notes.txt", "hi")], "images"),
        names=r"notes\.txt.*\.\./x\.png",
        hint=r"rename",
    ),
    Bad(
        "web-folder-with-no-images",
        lambda d, ws: Web([FakeUpload("pets/notes.txt", "hello")], "images"),
        names=r"notes\.txt",
        hint=r"rename|remove",
    ),
    Bad(
        "web-broken-image",
        lambda d, ws: Web([FakeUpload("cut.jpg", jpeg(200, 150)[:300])], "images"),
        names=r"cut\.jpg",
        hint=r"re-export|re-save",
    ),
    Bad(
        "web-zip-with-other-files",
        lambda d, ws: Web(
            [
                FakeUpload("a.zip", make_zip(d / "a.zip", [("a.jpg", jpeg())]).read_bytes()),
                FakeUpload("b.jpg", jpeg()),
            ],
            "images",
        ),
        names=r"\.zip",
        hint=r"upload one \.zip on its own",
    ),
    Bad(
        "web-zip-encrypted",
        lambda d, ws: Web(
            [
                FakeUpload(
                    "secret.zip",
                    patch_zip(make_zip(d / "s.zip", [("s.jpg", jpeg())]), flag=0x1).read_bytes(),
                )
            ],
            "images",
        ),
        names=r"s\.jpg",
        hint=r"without a password",
    ),
    Bad(
        "web-manifest-missing",
        lambda d, ws: Web([FakeUpload("a.jpg", jpeg())], "manifest"),
        names=r"\.csv/\.parquet",
        hint=r"upload exactly one",
    ),
    Bad(
        "web-manifest-absolute-path",
        lambda d, ws: Web([FakeUpload("list.csv", "path\n/etc/hostname\n")], "manifest"),
        names=r"row 2",
        hint=r"relative to the manifest",
    ),
    Bad(
        "web-manifest-climbing-path",
        lambda d, ws: Web(
            [FakeUpload("list.csv", "path\n../../secret.jpg\n"), FakeUpload("a.jpg", jpeg())],
            "manifest",
        ),
        names=r"row 2",
        hint=r"relative to the manifest",
    ),
    Bad(
        "web-manifest-nul-in-path",
        lambda d, ws: Web([FakeUpload("list.csv", "path\na\x00b.jpg\n")], "manifest"),
        names=r"row 2",
        hint=r"remove",
        says=r"NUL|control character",
    ),
    Bad(
        "web-manifest-path-too-long",
        lambda d, ws: Web([FakeUpload("list.csv", "path\n" + "p" * 300 + ".jpg\n")], "manifest"),
        names=r"row 2",
        hint=r"shorter|rename",
    ),
    Bad(
        "web-manifest-corrupt-parquet",
        lambda d, ws: Web([FakeUpload("list.parquet", b"PAR1" + b"\0" * 40 + b"PAR1")], "manifest"),
        names=r"list\.parquet",
        hint=r"save it again|write it again",
    ),
    Bad(
        "web-embeddings-dataset-gone",
        lambda d, ws: Web(
            [FakeUpload("e.npy", npy(d / "e.npy", np.ones((3, 4), np.float32)).read_bytes())],
            "embeddings",
            dataset="deleted-meanwhile",
        ),
        names=r"deleted-meanwhile",
        hint=r"choose|pick|another",
    ),
    Bad(
        "web-embeddings-no-vectors-file",
        lambda d, ws: (
            existing_dataset(ws, d),
            Web([FakeUpload("ids.txt", "a\nb\nc\n")], "embeddings", dataset="pets"),
        )[1],
        names=r"ids\.txt",
        hint=r"upload one embeddings file",
    ),
    Bad(
        "web-embeddings-corrupt-parquet",
        lambda d, ws: (
            existing_dataset(ws, d),
            Web([FakeUpload("clip.parquet", b"not parquet at all")], "embeddings", dataset="pets"),
        )[1],
        names=r"clip\.parquet",
        hint=r"save it again|write it again",
    ),
    Bad(
        "web-two-tables-one-empty",
        lambda d, ws: Web(
            [FakeUpload("e.csv", "sample_id,f0\na,1\n"), FakeUpload("meta.csv", b"")],
            "embeddings_only",
        ),
        names=r"meta\.csv",
        hint=r"header row",
    ),
    Bad(
        "web-two-tables-one-corrupt-parquet",
        lambda d, ws: Web(
            [FakeUpload("e.parquet", b"garbage"), FakeUpload("meta.csv", "sample_id\na\n")],
            "embeddings_only",
        ),
        names=r"e\.parquet",
        hint=r"save it again|write it again",
    ),
    Bad(
        "web-bad-dataset-name",
        lambda d, ws: Web([FakeUpload("a.jpg", jpeg())], "images", dataset="../etc"),
        names=r"\.\./etc",
        hint=r"use letters",
    ),
    Bad(
        "web-dataset-name-taken",
        lambda d, ws: (
            existing_dataset(ws, d),
            Web([FakeUpload("a.jpg", jpeg())], "images", dataset="pets"),
        )[1],
        names=r"pets",
        hint=r"choose another name",
    ),
    # ---- the command line
    Bad(
        "cli-unknown-source-type",
        lambda d, ws: Cli(["import", str(write(d / "photos.rar", b"Rar!")), "--dataset", "new"]),
        names=r"photos\.rar",
        hint=r"give a folder of images, a \.zip",
    ),
    Bad(
        "cli-source-missing",
        lambda d, ws: Cli(["import", str(d / "no-such-folder"), "--dataset", "new"]),
        names=r"no-such-folder",
        hint=r"check the path",
    ),
    Bad(
        "cli-add-embeddings-bad-file",
        lambda d, ws: (
            existing_dataset(ws, d),
            Cli(["add-embeddings", "pets", str(write(d / "e.npy", b"")), "--embedding", "x"]),
        )[1],
        names=r"e\.npy",
        hint=r"np\.save",
    ),
    Bad(
        "cli-import-coco-deep-json",
        lambda d, ws: Cli(
            [
                "import-coco",
                str(write(d / "ann.json", "[" * 50_000 + "]" * 50_000)),
                "--images",
                str(detection_images(d)),
                "--dataset",
                "new",
            ]
        ),
        names=r"ann\.json",
        hint=r"export it again|fix",
    ),
]


# --------------------------------------------------------------------------- running a row


def files_under(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: relative path -> (size, mtime); empty folders do not count."""
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def answer(call: Call, workspace: Workspace, capsys: pytest.CaptureFixture[str]) -> Any:
    """The report of a call that went through, or the message of one that was refused."""
    if isinstance(call, Web):
        folder = upload_dir(workspace)
        try:
            written, refused = save_uploads(call.files, folder)
            return import_uploads(
                workspace,
                folder,
                written,
                mode=call.mode,
                dataset=call.dataset,
                embedding_name=call.embedding_name,
                refused=refused,
            ).report
        except StoreError as error:  # what the page catches and shows
            return str(error)
        finally:
            discard_upload(folder)
    if isinstance(call, Cli):
        capsys.readouterr()
        code = cli_main([*call.argv, "--workspace", str(workspace.root)])
        out, err = capsys.readouterr()
        assert code == 2, (code, out, err)
        assert err.startswith("shoal: error: ") and err.count("\n") == 1, err
        return err
    try:
        return call()
    except StoreError as error:
        return str(error)


def rejected_lines(report: Any) -> str:
    items = report["rejected"] if isinstance(report, dict) else report.rejected
    return "\n".join(
        f"{r['file']}: {r['reason']}" if isinstance(r, dict) else f"{r.file}: {r.reason}"
        for r in items
    )


@pytest.mark.parametrize("bad", CATALOGUE, ids=[b.id for b in CATALOGUE])
def test_bad_input_is_answered_clearly_and_leaves_nothing(
    bad: Bad, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace = Workspace(tmp_path / "ws")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    call = bad.build(inputs, workspace)
    before = files_under(workspace.root)
    result = answer(call, workspace, capsys)

    if bad.outcome == "refused":
        assert isinstance(result, str), f"expected a refusal, got a report: {result}"
        message = result
        after = files_under(workspace.root)
        assert after == before, f"the workspace changed: {set(after) ^ set(before)}"
    else:
        assert not isinstance(result, str), f"expected the import to go on: {result}"
        message = rejected_lines(result)
        assert not files_under(workspace.root / ".staging"), "staging left behind"
        if bad.check is not None:
            bad.check(workspace)
        else:  # a skipped box is not in the objects table
            objects = workspace.open("new").objects()
            origins = set(objects["origin"]) if objects is not None else set()
            items = result["rejected"] if isinstance(result, dict) else result.rejected
            for item in items:
                assert (item["file"] if isinstance(item, dict) else item.file) not in origins

    assert "Traceback" not in message
    assert re.search(bad.names, message, re.DOTALL), f"does not name the culprit: {message}"
    assert re.search(bad.hint, message, re.IGNORECASE | re.DOTALL), f"no hint: {message}"
    if bad.says is not None:
        assert re.search(bad.says, message, re.IGNORECASE), f"does not say what: {message}"
    if isinstance(call, Web):
        assert str(tmp_path) not in message and ".uploads" not in message, message
        assert not files_under(workspace.root / ".uploads")


def test_the_catalogue_is_large_and_its_inputs_distinct() -> None:
    ids = [bad.id for bad in CATALOGUE]
    assert len(ids) == len(set(ids)) and len(ids) >= 40
    entries = {"web": 0, "cli": 0}
    for bad in CATALOGUE:
        prefix = bad.id.split("-")[0]
        if prefix in entries:
            entries[prefix] += 1
    assert entries["web"] >= 10 and entries["cli"] >= 3


# --------------------------------------------------------------------------- the page keeps serving

#: Web rows whose target the page cannot offer (the embeddings mode lists existing datasets only).
PAGE_SKIPS = {"web-embeddings-dataset-gone"}


def test_the_datasets_page_keeps_serving_after_every_bad_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every bad web upload of the catalogue, dropped on the real Datasets page one after the
    other in one session: each is answered by one error naming the culprit and no server path,
    the page never raises, nothing lands in the workspace, and a good upload still imports."""
    import streamlit

    from tests.app.test_pages import assert_clean, open_app

    workspace = Workspace(tmp_path / "ws")
    existing_dataset(workspace, tmp_path / "seed")
    uploads: list[FakeUpload] = []
    monkeypatch.setattr(streamlit, "file_uploader", lambda *args, **kwargs: list(uploads))
    at = open_app(workspace, monkeypatch).run()
    assert_clean(at)
    before = files_under(workspace.root)
    rows = [b for b in CATALOGUE if b.id.startswith("web-") and b.id not in PAGE_SKIPS]
    assert len(rows) >= 15

    def drop(call: Web) -> None:
        uploads[:] = call.files
        at.radio(key="datasets_mode").set_value(call.mode).run()
        if call.mode == "embeddings":
            at.selectbox(key="datasets_target").set_value(call.dataset)
        else:
            next(t for t in at.text_input if t.label == "New dataset name").input(call.dataset)
            if call.mode != "embeddings_only":
                at.checkbox(key="datasets_embed_now").uncheck()
        at.button(key="datasets_import").click().run()
        assert_clean(at)

    for number, bad in enumerate(rows):
        call = bad.build(tmp_path / f"in{number}", Workspace(tmp_path / f"scratch{number}"))
        assert isinstance(call, Web)
        drop(call)
        errors = [e.value for e in at.error]
        assert len(errors) == 1, (bad.id, errors)
        message = errors[0].replace("\\", "")  # the page escapes Markdown
        assert re.search(bad.names, message, re.DOTALL), (bad.id, message)
        assert re.search(bad.hint, message, re.IGNORECASE | re.DOTALL), (bad.id, message)
        assert str(tmp_path) not in message and ".uploads" not in message, (bad.id, message)
        assert files_under(workspace.root) == before, bad.id
        assert [t.value for t in at.title] == ["Datasets"]

    drop(Web([FakeUpload("cat.jpg", jpeg())], "images", dataset="fine"))
    assert not at.error
    assert [s.value for s in at.success] == [r"Imported 1 samples into **fine** from cat\.jpg."]
    assert workspace.list_datasets() == ["fine", "pets"]
