from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shoal.ingest.embeddings import (
    EmbeddingFileError,
    add_embeddings,
    create_from_embeddings,
    export_embeddings,
    read_embeddings_file,
)
from shoal.store import Dataset, Workspace


@pytest.fixture
def dataset(workspace: Workspace) -> Dataset:
    samples = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c"],
            "source": ["a.jpg", "b.jpg", "c.jpg"],
            "path": [None] * 3,
            "split": ["train", "train", "test"],
            "label": ["x", "y", "x"],
        }
    )
    return workspace.create("d", samples, has_images=False)


def _parquet(path: Path, ids: list[str], vectors: list[list[float]], *, fixed: bool = True) -> Path:
    if fixed:
        flat = pa.array(np.asarray(vectors, dtype=np.float32).ravel())
        column = pa.FixedSizeListArray.from_arrays(flat, len(vectors[0]))
    else:
        column = pa.array(vectors, type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"sample_id": ids, "embedding": column}), path)
    return path


def test_parquet_rows_are_aligned_to_samples(dataset: Dataset, tmp_path: Path) -> None:
    file = _parquet(tmp_path / "e.parquet", ["c", "a", "b"], [[3, 3], [1, 1], [2, 2]])
    info = add_embeddings(dataset, file, name="mine")
    loaded = dataset.load_embeddings("mine")
    assert loaded.vectors[:, 0].tolist() == [1, 2, 3] and info.dim == 2
    assert info.model == "user-provided"


def test_variable_length_list_column(dataset: Dataset, tmp_path: Path) -> None:
    file = _parquet(
        tmp_path / "e.parquet", ["a", "b", "c"], [[1, 1], [2, 2, 2], [3, 3]], fixed=False
    )
    with pytest.raises(EmbeddingFileError, match=r"row 1 \(id 'b'\) has dimension 3, expected 2"):
        add_embeddings(dataset, file)


def test_csv_and_npy_with_ids(dataset: Dataset, tmp_path: Path) -> None:
    pd.DataFrame({"id": ["b", "a", "c"], "f0": [2.0, 1.0, 3.0], "f1": [0, 0, 0]}).to_csv(
        tmp_path / "e.csv", index=False
    )
    add_embeddings(dataset, tmp_path / "e.csv", name="csv")
    np.save(tmp_path / "e.npy", np.array([[2.0], [1.0], [3.0]], dtype=np.float32))
    (tmp_path / "ids.txt").write_text("b\na\nc\n")
    add_embeddings(dataset, tmp_path / "e.npy", name="npy", ids_file=tmp_path / "ids.txt")
    assert dataset.load_embeddings("csv").vectors[:, 0].tolist() == [1, 2, 3]
    assert dataset.load_embeddings("npy").vectors[:, 0].tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("ids", "vectors", "message"),
    [
        (
            ["a", "b", "c"],
            [[1, 1], [np.nan, 1], [1, 1]],
            r"row 1 \(id 'b'\) has a non-finite value \(nan\)",
        ),
        (
            ["a", "b", "c"],
            [[1, 1], [1, np.inf], [1, 1]],
            r"row 1 \(id 'b'\) has a non-finite value \(inf\)",
        ),
        (["a", "b", "zz"], [[1, 1], [1, 1], [1, 1]], r"unknown id 'zz' at row 2"),
        (["a", "b", "b"], [[1, 1], [1, 1], [1, 1]], r"duplicate id 'b' \(row 2\)"),
        (["a", "b"], [[1, 1], [1, 1]], r"no embedding for 1 sample\(s\), e.g. 'c'"),
    ],
)
def test_strict_validation_names_row_or_id(
    dataset: Dataset, tmp_path: Path, ids: list[str], vectors: list[list[float]], message: str
) -> None:
    with pytest.raises(EmbeddingFileError, match=message):
        add_embeddings(dataset, _parquet(tmp_path / "e.parquet", ids, vectors))
    assert dataset.embedding_names() == []


def test_wrong_dimension_for_existing_set(dataset: Dataset, tmp_path: Path) -> None:
    add_embeddings(
        dataset, _parquet(tmp_path / "e.parquet", ["a", "b", "c"], [[1, 1]] * 3), name="m"
    )
    with pytest.raises(
        EmbeddingFileError, match="dimension 3 does not match this embedding set's 2"
    ):
        add_embeddings(
            dataset, _parquet(tmp_path / "f.parquet", ["a", "b", "c"], [[1, 1, 1]] * 3), name="m"
        )


def test_non_numeric_csv_column(dataset: Dataset, tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("sample_id,f0\na,1\nb,oops\nc,2\n")
    with pytest.raises(EmbeddingFileError, match=r"column 'f0' is not numeric \(row 2: 'oops'\)"):
        add_embeddings(dataset, tmp_path / "e.csv")


def test_pickled_npy_is_never_loaded(dataset: Dataset, tmp_path: Path) -> None:
    np.save(
        tmp_path / "evil.npy",
        np.array([{"x": 1}, {"y": 2}, {"z": 3}], dtype=object),
        allow_pickle=True,
    )
    with pytest.raises(EmbeddingFileError, match="without unpickling"):
        add_embeddings(dataset, tmp_path / "evil.npy")


def test_npy_row_count_must_match_without_ids(dataset: Dataset, tmp_path: Path) -> None:
    np.save(tmp_path / "e.npy", np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(EmbeddingFileError, match="2 rows but the dataset has 3 samples"):
        add_embeddings(dataset, tmp_path / "e.npy")


def test_dataset_from_embeddings_and_metadata_only(workspace: Workspace, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "audio.npy", rng.normal(size=(5, 8)).astype(np.float32))
    pd.DataFrame(
        {"id": [f"clip{i}" for i in range(5)], "label": list("aabbb"), "speaker": list("xyzxy")}
    ).to_csv(tmp_path / "meta.csv", index=False)
    report = create_from_embeddings(
        workspace, "audio", tmp_path / "audio.npy", metadata_file=tmp_path / "meta.csv"
    )
    ds = workspace.open("audio")
    assert report.imported == 5 and not ds.has_images
    assert ds.samples()["speaker"].tolist() == list("xyzxy")
    assert ds.load_embeddings().vectors.shape == (5, 8)


def test_export_round_trips(dataset: Dataset, tmp_path: Path) -> None:
    add_embeddings(
        dataset, _parquet(tmp_path / "e.parquet", ["a", "b", "c"], [[1, 2], [3, 4], [5, 6]])
    )
    out = export_embeddings(dataset, tmp_path / "out" / "export.parquet")
    table = pq.read_table(out)
    assert table.column_names[:2] == ["sample_id", "embedding"] and "label" in table.column_names
    assert pa.types.is_fixed_size_list(table.schema.field("embedding").type)
    ids, vectors = read_embeddings_file(out)
    assert ids.tolist() == ["a", "b", "c"] and vectors.tolist() == [[1, 2], [3, 4], [5, 6]]


def test_a_huge_id_is_refused_naming_its_row(workspace: Workspace, tmp_path: Path) -> None:
    """Regression: ids became fixed-width numpy strings, so one 50k-character id among 200k
    rows asked for 40 GB. Ids are capped (MAX_ID_LENGTH) and the file and row are named."""
    from shoal.ingest.embeddings import create_from_embeddings
    from shoal.ingest.publish import IngestError
    from shoal.store import MAX_ID_LENGTH, StoreError

    ids = [f"s{i}" for i in range(200_000)]
    ids[123_456] = "x" * 50_000
    vectors = pa.array([[0.5, 1.0]] * len(ids), type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"sample_id": ids, "embedding": vectors}), tmp_path / "e.parquet")
    with pytest.raises(
        IngestError,
        match=rf"e.parquet: the sample_id at row 123457 has 50,000 characters; "
        rf"ids are at most {MAX_ID_LENGTH}",
    ):
        create_from_embeddings(workspace, "huge", tmp_path / "e.parquet")
    assert not workspace.exists("huge")
    # The store refuses them too, whatever path they came by.
    staged = Dataset(workspace.staging_dir("guard"))
    with pytest.raises(StoreError, match="id at row 1 has 300 characters"):
        staged.publish_embeddings("e", np.zeros((2, 2)), ["a", "b" * 300], model="m")


def test_box_embeddings_keyed_by_object_id_become_an_object_level_set(
    workspace: Workspace, tmp_path: Path
) -> None:
    """A detector's own box embeddings: a file keyed by ``object_id`` (any order, the image's
    ``sample_id`` beside it) attaches to the dataset's boxes; the analyses then run on it."""
    from shoal.workflows import analyse
    from tests.shoal.ingest.detection_fixture import import_street

    ds = import_street(workspace).open("street")
    objects = ds.objects()
    assert objects is not None
    order = np.random.default_rng(0).permutation(len(objects))
    vectors = np.random.default_rng(1).normal(size=(len(objects), 8)).astype(np.float32)
    shuffled = objects.iloc[order]
    table = pa.table(
        {
            "object_id": shuffled["object_id"].astype(str).tolist(),
            "sample_id": shuffled["sample_id"].astype(str).tolist(),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors[order].ravel()), 8),
        }
    )
    pq.write_table(table, tmp_path / "boxes.parquet")
    info = add_embeddings(ds, tmp_path / "boxes.parquet", name="detector")
    assert info.level == "object" and info.count == len(objects)
    stored = ds.load_embeddings("detector")
    assert stored.ids.astype(str).tolist() == objects["object_id"].astype(str).tolist()
    np.testing.assert_allclose(np.asarray(stored.vectors), vectors)
    assert ds.default_embedding(level="object") == "detector"
    assert ds.default_embedding(level="sample") is None  # no image-level set was made

    # The same as CSV: sample_id is not taken for a dimension.
    frame = shuffled[["object_id", "sample_id"]].reset_index(drop=True)
    frame = pd.concat(
        [frame, pd.DataFrame(vectors[order], columns=[f"d{i}" for i in range(8)])], axis=1
    )
    frame.to_csv(tmp_path / "boxes.csv", index=False)
    assert add_embeddings(ds, tmp_path / "boxes.csv", name="detector").dim == 8

    outliers = analyse.outliers(ds, "detector")
    assert len(outliers.result.scores) == len(objects)

    # Every box needs its row; the message says which box.
    pq.write_table(table.slice(1), tmp_path / "short.parquet")
    with pytest.raises(EmbeddingFileError, match=r"no embedding for 1 box\(s\)"):
        add_embeddings(ds, tmp_path / "short.parquet", name="other")
    # Not into an image-level set, and not onto a dataset without boxes.
    image_ids = ds.samples()["sample_id"].astype(str).tolist()
    _parquet(tmp_path / "images.parquet", image_ids, [[1.0] * 8] * len(image_ids))
    assert add_embeddings(ds, tmp_path / "images.parquet", name="images").level == "sample"
    with pytest.raises(EmbeddingFileError, match="object-level embeddings but set 'images'"):
        add_embeddings(ds, tmp_path / "boxes.parquet", name="images")
    plain = workspace.create(
        "plain",
        pd.DataFrame(
            {"sample_id": ["a"], "source": ["a"], "path": [None], "split": [None], "label": [None]}
        ),
        has_images=False,
    )
    with pytest.raises(EmbeddingFileError, match="has no boxes; import the boxes first"):
        add_embeddings(plain, tmp_path / "boxes.parquet")
    with pytest.raises(EmbeddingFileError, match="keyed by object_id"):
        create_from_embeddings(workspace, "boxes-only", tmp_path / "boxes.parquet")
