"""The streamed import equals the in-memory one, on files larger than one block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shoal.ingest import embeddings as ingest
from shoal.ingest.embeddings import EmbeddingFileError, add_embeddings, create_from_embeddings
from shoal.store import Workspace
from shoal.store import vectors as stored_vectors

N, DIM = 1000, 24


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 64 rows and a page release every 4 KiB: every path runs many blocks."""
    monkeypatch.setattr(ingest, "READ_BLOCK_ROWS", 64)
    monkeypatch.setattr(stored_vectors, "RELEASE_BYTES", 4096)


@pytest.fixture
def data() -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(7)
    return rng.normal(size=(N, DIM)).astype(np.float32), [f"id-{i:04d}" for i in range(N)]


def _parquet(path: Path, ids: list[str], vectors: np.ndarray, *, fixed: bool) -> Path:
    flat = pa.array(vectors.ravel())
    column = (
        pa.FixedSizeListArray.from_arrays(flat, DIM)
        if fixed
        else pa.ListArray.from_arrays(
            pa.array(np.arange(0, len(flat) + 1, DIM, dtype=np.int32)), flat
        )
    )
    table = pa.table({"sample_id": ids, "embedding": column, "label": [i[-1] for i in ids]})
    pq.write_table(table, path, row_group_size=300)  # several row groups, unaligned with blocks
    return path


@pytest.mark.parametrize("layout", ["npy", "parquet-fixed", "parquet-list", "csv", "npy-float64"])
def test_streamed_import_equals_the_file(
    small_blocks: None, data: tuple[np.ndarray, list[str]], tmp_path: Path, layout: str
) -> None:
    vectors, ids = data
    ws = Workspace(tmp_path / "ws")
    if layout.startswith("npy"):
        source = tmp_path / "e.npy"
        np.save(source, vectors.astype(np.float64) if layout == "npy-float64" else vectors)
        metadata = tmp_path / "meta.csv"
        pd.DataFrame({"sample_id": ids}).to_csv(metadata, index=False)
        create_from_embeddings(ws, "d", source, metadata_file=metadata)
    elif layout == "csv":
        source = tmp_path / "e.csv"
        frame = pd.DataFrame(vectors, columns=[f"f{i}" for i in range(DIM)])
        frame.insert(0, "sample_id", ids)
        frame.to_csv(source, index=False, float_format="%.9g")
        create_from_embeddings(ws, "d", source)
    else:
        source = _parquet(tmp_path / "e.parquet", ids, vectors, fixed=layout == "parquet-fixed")
        create_from_embeddings(ws, "d", source)
    stored = ws.open("d").load_embeddings()
    assert stored.ids.tolist() == ids
    np.testing.assert_array_equal(np.asarray(stored.vectors), vectors)


def test_shuffled_rows_land_on_their_samples(
    small_blocks: None, data: tuple[np.ndarray, list[str]], tmp_path: Path
) -> None:
    """add-embeddings of a file in another order than the samples scatters each block's rows."""
    vectors, ids = data
    ws = Workspace(tmp_path / "ws")
    create_from_embeddings(ws, "d", _parquet(tmp_path / "a.parquet", ids, vectors, fixed=True))
    order = np.random.default_rng(1).permutation(N)
    shuffled = _parquet(
        tmp_path / "b.parquet", [ids[i] for i in order], vectors[order] * 2, fixed=True
    )
    add_embeddings(ws.open("d"), shuffled, name="doubled")
    stored = ws.open("d").load_embeddings("doubled")
    assert stored.ids.tolist() == ids
    np.testing.assert_array_equal(np.asarray(stored.vectors), vectors * 2)


def test_a_bad_row_far_into_the_file_is_named_and_nothing_is_kept(
    small_blocks: None, data: tuple[np.ndarray, list[str]], tmp_path: Path
) -> None:
    vectors, ids = data
    vectors[877, 3] = np.nan
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(EmbeddingFileError, match=r"row 877 \(id 'id-0877'\) has a non-finite"):
        create_from_embeddings(ws, "d", _parquet(tmp_path / "e.parquet", ids, vectors, fixed=False))
    assert not ws.exists("d")
    assert not any((tmp_path / "ws").rglob("*.npy"))


def test_a_file_the_disk_cannot_hold_is_refused_before_writing(
    data: tuple[np.ndarray, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The size comes from the file's own header; nothing is written when it cannot fit."""
    vectors, ids = data
    source = _parquet(tmp_path / "e.parquet", ids, vectors, fixed=True)
    free = type("Usage", (), {"free": 10_000})  # bytes: less than 1000 x 24 float32
    monkeypatch.setattr(ingest.shutil, "disk_usage", lambda _: free)
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(EmbeddingFileError, match=r"1,000 rows x 24 values need .* GB"):
        create_from_embeddings(ws, "d", source)
    assert not ws.exists("d")
