"""The store's block reader and writer: what every analysis reads a large set through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shoal.analysis.knn import NeighborIndex, build_knn_graph
from shoal.store import vectors as module
from shoal.store.vectors import VectorFile, VectorWriter, in_memory_if_small


def _rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no /proc/self/status here")


def _write(path: Path, matrix: np.ndarray) -> VectorFile:
    writer = VectorWriter(path, count=len(matrix), dim=matrix.shape[1])
    for start in range(0, len(matrix), 1000):
        writer.write(matrix[start : start + 1000])
    writer.close()
    return VectorFile(path)


def test_a_pass_over_the_file_does_not_stay_resident(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: through a plain memory map, one pass over a set left all of it in the
    process's resident set (5 GB for 1M x 1280). The reader hands pages back as it goes."""
    monkeypatch.setattr(module, "RELEASE_BYTES", 8 << 20)
    rng = np.random.default_rng(0)
    vectors = _write(tmp_path / "v.npy", rng.normal(size=(40_000, 512)).astype(np.float32))  # 82 MB
    before = _rss_file_kib()
    total = 0.0
    for start in range(0, len(vectors), 2048):
        total += float(vectors[start : start + 2048].sum())
    scattered = vectors[np.sort(rng.choice(len(vectors), 5000, replace=False))]
    grown_mib = (_rss_file_kib() - before) / 1024
    assert np.isfinite(total) and scattered.shape == (5000, 512)
    assert grown_mib < 40, f"{grown_mib:.0f} MiB of an 82 MB file stayed resident"
    plain = np.load(tmp_path / "v.npy", mmap_mode="r")
    before = _rss_file_kib()
    float(np.asarray(plain[:]).sum())
    assert (_rss_file_kib() - before) / 1024 > 60  # what the reader avoids


def test_many_scattered_rows_are_read_in_pieces_with_pages_handed_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: one gather of 65k rows spread over a 4.9 GB set mapped almost all of it
    (each row maps its whole page-cache folio) before any page was handed back. The reader now
    gathers a few hundred rows at a time and releases between them; the rows are unchanged."""
    monkeypatch.setattr(module, "RELEASE_BYTES", 8 << 20)
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(20_000, 64)).astype(np.float32)
    vectors = _write(tmp_path / "v.npy", matrix)
    releases = []
    monkeypatch.setattr(module, "release_pages", lambda mapping: releases.append(1))
    rows = rng.integers(0, len(matrix), 6_000)
    np.testing.assert_array_equal(vectors[rows], matrix[rows])
    step = vectors._scatter_rows  # about 8 MiB of mapped file per piece
    assert 1 < step < 6_000 and len(releases) >= (6_000 // step) // 2
    np.testing.assert_array_equal(vectors[rows, 5:9], matrix[rows, 5:9])
    mask = rng.random(len(matrix)) < 0.5
    np.testing.assert_array_equal(vectors[mask], matrix[mask])
    assert vectors[[]].shape == (0, 64)


def test_writer_refuses_a_non_finite_row_and_reads_back_in_any_order(tmp_path: Path) -> None:
    writer = VectorWriter(tmp_path / "v.npy", count=4, dim=2)
    with pytest.raises(ValueError, match="row 1"):
        writer.write(np.array([[0.0, 1.0], [np.inf, 0.0]]))
    writer.write(np.array([[3.0, 3.0], [1.0, 1.0]]), rows=np.array([3, 1]))
    assert writer.missing().tolist() == [0, 2]
    writer.write(np.array([[0.0, 0.0], [2.0, 2.0]]), rows=np.array([0, 2]))
    writer.close()
    stored = VectorFile(tmp_path / "v.npy")
    assert np.load(tmp_path / "v.npy").tolist() == [[0, 0], [1, 1], [2, 2], [3, 3]]
    assert stored[[3, 0, 3]].tolist() == [[3, 3], [0, 0], [3, 3]]
    assert stored[1:3].tolist() == [[1, 1], [2, 2]] and stored[::2].tolist() == [[0, 0], [2, 2]]


@pytest.mark.parametrize("method", ["exact", "hnsw"])
def test_graph_read_through_the_file_equals_the_in_memory_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real: dict[str, np.ndarray], method: str
) -> None:
    """The graph over the block reader (many blocks, pages released all along) is the graph of
    the same vectors in memory, row for row."""
    import shoal.analysis.knn

    monkeypatch.setattr(module, "RELEASE_BYTES", 1 << 20)
    monkeypatch.setattr(shoal.analysis.knn, "BLOCK_ROWS", 256)
    matrix = real["fmnist"][:3000]
    stored = _write(tmp_path / "v.npy", matrix)
    on_disk = build_knn_graph(stored, n_neighbors=10, method=method)
    in_memory = build_knn_graph(matrix, n_neighbors=10, method=method)
    np.testing.assert_array_equal(on_disk.indices, in_memory.indices)
    np.testing.assert_allclose(on_disk.distances, in_memory.distances, atol=1e-6)


def test_a_stored_hnsw_index_answers_as_the_one_built(
    tmp_path: Path, real: dict[str, np.ndarray]
) -> None:
    stored = _write(tmp_path / "v.npy", real["fmnist"][:3000])
    built = NeighborIndex(stored, method="hnsw")
    built.write_graph(tmp_path / "graph.faiss")
    loaded = NeighborIndex.from_arrays(
        stored, built.to_arrays(), built.to_meta(), tmp_path / "graph.faiss"
    )
    queries = real["fmnist"][3000:3050]
    for a, b in zip(built.search(queries, 20), loaded.search(queries, 20), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="covers 3000"):
        NeighborIndex.from_arrays(
            real["fmnist"][:10], built.to_arrays(), built.to_meta(), tmp_path / "graph.faiss"
        )


def test_a_small_set_is_read_whole_and_a_large_one_stays_a_file(
    tmp_path: Path, real: dict[str, np.ndarray]
) -> None:
    matrix = real["fmnist"][:1000]
    stored = _write(tmp_path / "v.npy", matrix)
    whole = in_memory_if_small(stored, max_bytes=matrix.nbytes)
    assert isinstance(whole, np.ndarray) and whole.dtype == np.float32
    np.testing.assert_array_equal(whole, matrix)
    assert in_memory_if_small(stored, max_bytes=matrix.nbytes - 1) is stored
    assert in_memory_if_small(matrix, max_bytes=0) is matrix  # arrays pass through
