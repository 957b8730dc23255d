"""Corrupted files on disk: truncated vectors, garbage JSON in a dataset's metadata or an
embedding pointer, a broken samples table, broken cached results and checkpoints, a broken job
record. Reading gives a StoreError that names the file and what to do, cached results are
recomputed, and listing the workspace's datasets never fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shoal import jobs
from shoal.store import StoreError, Workspace
from shoal.workflows import analyse

pytestmark = pytest.mark.faults


def _points(workspace: Workspace, name: str = "points", count: int = 60) -> np.ndarray:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(count, 8)).astype(np.float32)
    samples = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(count)],
            "source": [f"s{i}" for i in range(count)],
            "path": [None] * count,
            "split": ["train"] * count,
            "label": np.repeat(["a", "b"], count // 2),
        }
    )
    ds = workspace.create(name, samples, has_images=False)
    ds.publish_embeddings("vectors", vectors, samples["sample_id"], model="synthetic")
    return vectors


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _garbage(path: Path) -> None:
    path.write_bytes(b'{"name": "points", "created_at": \x00\xff garbage')


def _listing(workspace: Workspace) -> dict[str, dict]:
    """What the Datasets page shows for every dataset: open it, describe it."""
    return {name: workspace.open(name).describe() for name in workspace.list_datasets()}


def _vectors_file(workspace: Workspace, suffix: str = ".npy") -> Path:
    ds = workspace.open("points")
    info = ds.embedding_info("vectors")
    return ds.root / "embeddings" / f"vectors-{info.version}{suffix}"


@pytest.mark.parametrize("suffix", [".npy", ".ids.npy"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_matrix_is_a_store_error_naming_the_file(
    fresh_workspace: Workspace, suffix: str, damage: str
) -> None:
    _points(fresh_workspace)
    _points(fresh_workspace, "other")
    path = _vectors_file(fresh_workspace, suffix)
    if damage == "truncated":
        _truncate(path, path.stat().st_size // 2)
    elif damage == "garbage":
        path.write_bytes(b"not a numpy file at all" * 10)
    else:
        path.write_bytes(b"")
    ds = fresh_workspace.open("points")
    for mmap in (True, False):
        with pytest.raises(StoreError) as caught:
            ds.load_embeddings("vectors", mmap=mmap)
        message = str(caught.value)
        assert path.name in message and "shoal embed" in message, message
    assert set(_listing(fresh_workspace)) == {"points", "other"}
    assert fresh_workspace.open("other").load_embeddings().vectors.shape == (60, 8)


def test_a_garbage_embedding_pointer_is_a_store_error_and_the_rest_still_works(
    fresh_workspace: Workspace,
) -> None:
    vectors = _points(fresh_workspace)
    ds = fresh_workspace.open("points")
    ds.publish_embeddings("second", vectors, ds.samples()["sample_id"], model="synthetic")
    pointer = ds.root / "embeddings" / "vectors.json"
    _garbage(pointer)
    with pytest.raises(StoreError, match=r"vectors\.json") as caught:
        ds.load_embeddings("vectors")
    assert "shoal embed" in str(caught.value) or "delete" in str(caught.value)
    assert ds.embedding_names() == ["second", "vectors"]
    assert ds.default_embedding() == "second"  # the readable set, not a crash
    np.testing.assert_array_equal(ds.load_embeddings("second").vectors, vectors)
    listed = _listing(fresh_workspace)["points"]
    assert [e["name"] for e in listed["embeddings"]] == ["second"]
    assert "vectors.json" in " ".join(listed["problems"])


def test_garbage_dataset_metadata_does_not_break_the_listing(fresh_workspace: Workspace) -> None:
    _points(fresh_workspace)
    _points(fresh_workspace, "other")
    meta = fresh_workspace.open("points").root / "dataset.json"
    _garbage(meta)
    listed = _listing(fresh_workspace)
    assert set(listed) == {"points", "other"} and listed["other"]["samples"] == 60
    assert listed["points"]["samples"] == 60
    assert "dataset.json" in " ".join(listed["points"]["problems"])
    ds = fresh_workspace.open("points")
    with pytest.raises(StoreError, match=r"dataset\.json") as caught:
        ds.meta  # noqa: B018
    assert "shoal delete points" in str(caught.value)
    fresh_workspace.delete("points")  # a broken dataset can still be deleted
    assert fresh_workspace.list_datasets() == ["other"]


def test_a_broken_samples_table_is_a_store_error(fresh_workspace: Workspace) -> None:
    _points(fresh_workspace)
    table = fresh_workspace.open("points").root / "samples.parquet"
    _truncate(table, table.stat().st_size // 2)
    with pytest.raises(StoreError, match=r"samples\.parquet"):
        fresh_workspace.open("points").samples()
    listed = _listing(fresh_workspace)["points"]
    assert listed["samples"] == 0 and "samples.parquet" in " ".join(listed["problems"])


@pytest.mark.parametrize(
    "damage", ["truncated arrays", "garbage arrays", "garbage metadata", "empty arrays"]
)
def test_broken_cached_results_are_recomputed(fresh_workspace: Workspace, damage: str) -> None:
    _points(fresh_workspace)
    ds = fresh_workspace.open("points")
    first = analyse.outliers(ds)
    graph_key = analyse.knn_graph(ds).key
    for kind, key in (("outliers", first.key), ("knn", graph_key)):
        base = ds.root / "artefacts" / kind / key
        arrays, meta = base.with_suffix(".npz"), base.with_suffix(".json")
        if damage == "truncated arrays":
            _truncate(arrays, arrays.stat().st_size // 2)
        elif damage == "garbage arrays":
            arrays.write_bytes(b"PK\x03\x04 this is not a zip")
        elif damage == "empty arrays":
            arrays.write_bytes(b"")
        else:
            _garbage(meta)
    again = analyse.outliers(ds)
    assert not again.cached
    np.testing.assert_allclose(again.result.scores, first.result.scores)
    assert analyse.outliers(ds).cached  # stored again, whole


def test_a_garbage_job_record_is_skipped_in_the_list_and_a_store_error_on_its_own(
    fresh_workspace: Workspace,
) -> None:
    good = jobs.run_inline(
        fresh_workspace, "tests.shoal.jobs.job_tasks:count", params={"total": 1, "delay": 0}
    )
    broken = fresh_workspace.jobs_dir / "20250101000000deadbeef.json"
    _garbage(broken)
    assert [r.id for r in jobs.list_jobs(fresh_workspace)] == [good.id]
    with pytest.raises(StoreError, match="20250101000000deadbeef"):
        jobs.get(fresh_workspace, "20250101000000deadbeef")


def _stopped_after_8_of_16(workspace: Workspace, photos: Path) -> None:
    """A dataset 'pets' of 16 photos whose embedding stopped after 8 (batches of 2)."""
    from shoal.embedding import EmbeddingCancelled
    from shoal.ingest.images import import_source
    from shoal.workflows.embed import embed_dataset

    import_source(workspace, photos, dataset="pets")
    seen: list = []
    with pytest.raises(EmbeddingCancelled):
        embed_dataset(
            workspace.open("pets"),
            batch_size=2,
            progress=seen.append,
            should_stop=lambda: bool(seen) and seen[-1].done >= 8,
        )


@pytest.mark.parametrize("damage", ["batch", "manifest"])
def test_a_broken_checkpoint_is_recomputed(
    fresh_workspace: Workspace, photos_16: Path, damage: str
) -> None:
    from shoal.workflows.embed import embed_dataset

    _stopped_after_8_of_16(fresh_workspace, photos_16)
    ds = fresh_workspace.open("pets")
    partial = ds.partial_dir("efficientnet_lite0")
    batches = sorted(partial.glob("batch-*.npy"))
    # 4 batches, or 5: the batch already submitted when the stop came is finished and kept.
    assert 4 <= len(batches) <= 5
    if damage == "batch":
        _truncate(batches[1], 100)
    else:
        _garbage(partial / "manifest.json")
    seen: list = []
    info = embed_dataset(ds, batch_size=2, progress=seen.append)
    # The damaged batch (or, with a damaged manifest, every batch) was computed again.
    assert seen[0].done == (2 * (len(batches) - 1) if damage == "batch" else 0)
    assert info.count == 16 and not partial.exists()
    assert np.isfinite(ds.load_embeddings().vectors).all()


def test_the_datasets_page_lists_a_workspace_with_damaged_datasets(
    fresh_workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's listing (the Datasets page under Streamlit's AppTest) with a dataset of each
    kind of damage beside a sound one."""
    from streamlit.testing.v1 import AppTest

    for name in ("meta", "pointer", "matrix", "table", "sound"):
        _points(fresh_workspace, name)
    datasets = fresh_workspace.datasets_dir
    _garbage(datasets / "meta" / "dataset.json")
    _garbage(datasets / "pointer" / "embeddings" / "vectors.json")
    matrix = fresh_workspace.open("matrix")
    _truncate(
        matrix.root / "embeddings" / f"vectors-{matrix.embedding_info('vectors').version}.npy", 10
    )
    _truncate(datasets / "table" / "samples.parquet", 100)

    monkeypatch.setenv("SHOAL_WORKSPACE", str(fresh_workspace.root))
    monkeypatch.delenv("SHOAL_ACCESS_TOKEN", raising=False)
    app = AppTest.from_file(
        str(Path(__file__).resolve().parents[2] / "app.py"), default_timeout=120
    )
    app.query_params["ds"] = "sound"
    app.switch_page("pages/datasets.py")
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    listed = app.dataframe[0].value
    assert sorted(listed["dataset"]) == ["matrix", "meta", "pointer", "sound", "table"]


def test_a_page_on_a_damaged_set_says_so_and_keeps_the_app(
    fresh_workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: selecting a dataset whose matrix is damaged showed Streamlit's exception box."""
    from streamlit.testing.v1 import AppTest

    _points(fresh_workspace, "matrix")
    matrix = fresh_workspace.open("matrix")
    _truncate(
        matrix.root / "embeddings" / f"vectors-{matrix.embedding_info('vectors').version}.npy", 10
    )
    monkeypatch.setenv("SHOAL_WORKSPACE", str(fresh_workspace.root))
    monkeypatch.delenv("SHOAL_ACCESS_TOKEN", raising=False)
    app = AppTest.from_file(
        str(Path(__file__).resolve().parents[2] / "app.py"), default_timeout=120
    )
    app.query_params["ds"] = "matrix"
    app.switch_page("pages/map.py")
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert app.error and "shoal embed" in app.error[0].value
    assert str(fresh_workspace.root) not in app.error[0].value  # no server path for visitors


def test_a_damaged_table_is_reported_by_info_and_on_the_datasets_page(
    fresh_workspace: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamlit.testing.v1 import AppTest

    from shoal.cli import main

    _points(fresh_workspace, "table")
    _truncate(fresh_workspace.datasets_dir / "table" / "samples.parquet", 100)
    assert main(["info", "table", "--workspace", str(fresh_workspace.root)]) == 0
    assert "  damaged: " in capsys.readouterr().out
    monkeypatch.setenv("SHOAL_WORKSPACE", str(fresh_workspace.root))
    monkeypatch.delenv("SHOAL_ACCESS_TOKEN", raising=False)
    app = AppTest.from_file(
        str(Path(__file__).resolve().parents[2] / "app.py"), default_timeout=120
    )
    app.query_params["ds"] = "table"
    app.switch_page("pages/datasets.py")
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    warnings = [w.value for w in app.warning]
    assert any("samples" in w for w in warnings)
    assert not any(str(fresh_workspace.root) in w for w in warnings)


def test_shoal_sweep_removes_an_abandoned_upload(
    fresh_workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import time

    from shoal.cli import main

    abandoned = fresh_workspace.root / ".uploads" / "upload-old"
    abandoned.mkdir(parents=True)
    (abandoned / "photo.jpg").write_bytes(b"x")
    old = time.time() - 3 * 24 * 3600
    for path in (abandoned / "photo.jpg", abandoned):
        os.utime(path, (old, old))
    live = fresh_workspace.scratch_dir(".uploads", "upload-")  # held by this process
    os.utime(live, (old, old))
    assert main(["sweep", "--older-than", "1", "--workspace", str(fresh_workspace.root)]) == 0
    assert "removed 1 leftover(s)" in capsys.readouterr().out
    assert not abandoned.exists() and live.exists()
