from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.store import (
    DatasetNotFoundError,
    InvalidNameError,
    StoreError,
    Workspace,
    artefact_key,
    atomic_path,
    validate_name,
)
from shoal.store.vectors import VectorFile


def _samples(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "source": [f"img{i}.jpg" for i in range(n)],
            "path": [None] * n,
            "split": ["train"] * n,
            "label": ["a"] * n,
        }
    )


def test_create_list_describe_delete(workspace: Workspace) -> None:
    ds = workspace.create("cats", _samples(3), has_images=False)
    assert workspace.list_datasets() == ["cats"]
    assert ds.describe()["samples"] == 3
    workspace.delete("cats")
    assert workspace.list_datasets() == []
    with pytest.raises(DatasetNotFoundError, match="no dataset 'cats'"):
        workspace.open("cats")


def test_workspace_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_WORKSPACE", str(tmp_path / "team"))
    assert Workspace().root == (tmp_path / "team").resolve()


@pytest.mark.parametrize(
    "name", ["../x", "a/b", "..", ".hidden", "", "a" * 65, "a\\b", "x..y", "con:"]
)
def test_bad_names_are_refused(workspace: Workspace, name: str) -> None:
    with pytest.raises(InvalidNameError):
        workspace.create(name, _samples(1), has_images=False)


@given(st.text(max_size=80))
def test_valid_names_stay_inside_one_directory(name: str) -> None:
    try:
        validate_name(name)
    except InvalidNameError:
        return
    assert "/" not in name and "\\" not in name and ".." not in name
    assert Path(name).name == name and len(name) <= 64


def test_duplicate_sample_ids_are_refused(workspace: Workspace) -> None:
    samples = _samples(3)
    samples.loc[2, "sample_id"] = "s0"
    with pytest.raises(StoreError, match="duplicate sample_id 's0'"):
        workspace.create("dup", samples, has_images=False)


def test_embeddings_round_trip_memory_mapped(workspace: Workspace) -> None:
    ds = workspace.create("emb", _samples(4), has_images=False)
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    info = ds.publish_embeddings(
        "m", vectors, [f"s{i}" for i in range(4)], model="test", preprocessing={"size": 8}
    )
    loaded = ds.load_embeddings("m")
    assert isinstance(loaded.vectors, VectorFile)  # read in blocks, never resident whole
    np.testing.assert_array_equal(loaded.vectors, vectors)
    np.testing.assert_array_equal(loaded.vectors[1:3], vectors[1:3])
    np.testing.assert_array_equal(loaded.vectors[[3, 0, 3]], vectors[[3, 0, 3]])
    assert list(loaded.ids) == ["s0", "s1", "s2", "s3"]
    assert loaded.info == info and info.dim == 3 and info.preprocessing == {"size": 8}
    assert ds.default_embedding() == "m"


def test_new_version_replaces_old_files(workspace: Workspace) -> None:
    ds = workspace.create("emb", _samples(2), has_images=False)
    ids = ["s0", "s1"]
    ds.publish_embeddings("m", np.zeros((2, 3)), ids, model="t")
    ds.publish_embeddings("m", np.ones((2, 3)), ids, model="t")
    assert len(list((ds.root / "embeddings").glob("m-*.npy"))) == 2  # vectors + ids of one version
    assert np.asarray(ds.load_embeddings("m").vectors).sum() == 6


def test_nonfinite_embeddings_are_refused(workspace: Workspace) -> None:
    ds = workspace.create("emb", _samples(2), has_images=False)
    with pytest.raises(StoreError, match="NaN or inf"):
        ds.publish_embeddings("m", np.array([[1.0, np.nan], [0, 0]]), ["s0", "s1"], model="t")


def test_failed_write_leaves_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash in the middle")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_artefacts_keyed_by_version_and_params(workspace: Workspace) -> None:
    ds = workspace.create("emb", _samples(2), has_images=False)
    info = ds.publish_embeddings("m", np.zeros((2, 3)), ["s0", "s1"], model="t")
    key = artefact_key(info, n_neighbors=15)
    assert key != artefact_key(info, n_neighbors=10)
    assert ds.load_artefact("knn", key) is None
    ds.save_artefact("knn", key, {"indices": np.array([[1], [0]])}, {"n_neighbors": 15})
    arrays, meta = ds.load_artefact("knn", key)
    assert arrays["indices"].tolist() == [[1], [0]] and meta["n_neighbors"] == 15
    newer = ds.publish_embeddings("m", np.ones((2, 3)), ["s0", "s1"], model="t")
    assert artefact_key(newer, n_neighbors=15) != key


WRITER = """
import sys
import numpy as np
from shoal.store import Workspace
ds = Workspace(sys.argv[1]).open("race")
ids = [f"s{i}" for i in range(500)]
for version in range(int(sys.argv[2])):
    ds.publish_embeddings("m", np.full((500, 256), version, dtype=np.float32), ids, model="t")
"""


def test_reader_never_sees_a_torn_embedding_set(workspace: Workspace) -> None:
    ds = workspace.create("race", _samples(500), has_images=False)
    ds.publish_embeddings(
        "m", np.full((500, 256), -1, dtype=np.float32), [f"s{i}" for i in range(500)], model="t"
    )
    # A separate interpreter (not multiprocessing: its spawn re-runs whatever __main__ is).
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(workspace.root), "40"])
    reads = 0
    deadline = time.monotonic() + 60
    while writer.poll() is None and time.monotonic() < deadline:
        loaded = ds.load_embeddings("m")
        values = np.unique(loaded.vectors)
        assert len(values) == 1 and loaded.vectors.shape == (500, 256) and len(loaded.ids) == 500
        reads += 1
    assert writer.wait(timeout=60) == 0 and reads > 0


def test_a_job_that_outlives_a_delete_writes_nothing(workspace: Workspace) -> None:
    """Regression: a job still running when its dataset was deleted recreated an orphan folder,
    and after a re-import under the same name its vectors landed in the new dataset."""
    ds = workspace.create("pets", _samples(4), has_images=False)
    job_handle = workspace.open("pets")  # what a running job holds
    vectors = np.ones((4, 3), dtype=np.float32)
    ids = [f"s{i}" for i in range(4)]

    workspace.delete("pets")
    with pytest.raises(StoreError, match="'pets' was deleted while this was running"):
        job_handle.publish_embeddings("late", vectors, ids, model="m")
    with pytest.raises(StoreError, match="was deleted"):
        job_handle.save_artefact("knn", "k1", {"a": np.zeros(2)}, {})
    assert not ds.root.exists() and workspace.list_datasets() == []

    again = workspace.create("pets", _samples(4), has_images=False)
    with pytest.raises(StoreError, match="was deleted and created again"):
        job_handle.publish_embeddings("late", vectors, ids, model="m")
    assert again.embedding_names() == [] and not list(again.root.rglob("*.npy"))
    again.publish_embeddings("fresh", vectors, ids, model="m")  # the new handle writes
    assert workspace.open("pets").embedding_names() == ["fresh"]


_PUBLISHER = """
import sys
import numpy as np
from shoal.store import Workspace
ds = Workspace(sys.argv[1]).open("race")
ds.publish_embeddings("e", np.ones((3, 4), np.float32), ["s0", "s1", "s2"], model="m")
"""


def test_publishes_of_one_set_take_turns(workspace: Workspace) -> None:
    """Regression: two publishes of one embedding set interleaved; one could remove as stale the
    files the other's pointer was about to name. A publish now waits for the one in progress
    (held here by the test) and then completes."""
    from shoal.store.locks import exclusive

    workspace.create("race", _samples(3), has_images=False)
    ds = workspace.open("race")
    with exclusive(ds._lock_file("publish-e"), what="e"):
        writer = subprocess.Popen([sys.executable, "-c", _PUBLISHER, str(workspace.root)])
        time.sleep(3.0)
        assert writer.poll() is None, "the second publish did not wait for the first"
        assert ds.embedding_names() == []
    assert writer.wait(timeout=120) == 0
    assert workspace.open("race").load_embeddings("e").vectors.shape == (3, 4)


def test_a_second_job_on_one_embedding_set_is_refused(
    workspace: Workspace, sample_images: Path
) -> None:
    """Regression: two embed jobs on one set deleted each other's checkpoints."""
    from shoal.ingest.images import import_source
    from shoal.store import BusyError
    from shoal.workflows.embed import embed_dataset

    folder = next((sample_images / "train").iterdir())
    import_source(workspace, folder, dataset="pets")
    ds = workspace.open("pets")
    with ds.computing("efficientnet_lite0"):
        with pytest.raises(BusyError, match="being written by another job"):
            embed_dataset(ds)
        with pytest.raises(BusyError), workspace.open("pets").computing("efficientnet_lite0"):
            pass
    with ds.computing("efficientnet_lite0"):  # released when the first holder is done
        pass
