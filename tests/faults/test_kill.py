"""SIGKILL at a point seen on disk, in each long task: import, embed, object embed, own-model
extraction and analysis. A rerun succeeds, checkpointed work is kept (and not computed again),
no half-written dataset or embedding set is ever visible, and the job record says what happened."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from shoal import jobs
from shoal.ingest.images import import_source
from shoal.store import Workspace
from tests.faults.harness import (
    batch_files,
    copy_images,
    dead,
    freeze_job_when,
    freeze_when,
    job_progress_started,
    kill,
    shoal_command,
    wait_for,
)

pytestmark = pytest.mark.faults

LITE0 = "efficientnet_lite0"


def _killed_job_record(workspace: Workspace, job_id: str, pid: int) -> jobs.JobRecord:
    kill(pid)
    wait_for(lambda: dead(pid))
    record = jobs.get(workspace, job_id)
    assert record.state == "failed", record
    assert "stopped unexpectedly" in (record.error or "") and "again" in (record.error or "")
    return record


def test_killed_import_shows_no_dataset_and_the_rerun_imports_everything(
    tmp_path: Path, fresh_workspace: Workspace
) -> None:
    source = copy_images(tmp_path / "upload", 150)
    command = shoal_command(
        "import", str(source), "--dataset", "pets", "--workspace", str(fresh_workspace.root)
    )
    staged = fresh_workspace.root / ".staging"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    freeze_when(
        process.pid,
        lambda: len(list(staged.glob("*/images/*/*.jpg"))) >= 20,
        still_running=lambda: process.poll() is None,
    )
    # Frozen half-way through storing images: nothing of it is a dataset yet.
    assert fresh_workspace.list_datasets() == []
    assert not (fresh_workspace.datasets_dir / "pets").exists()
    kill(process.pid)
    process.wait()
    assert fresh_workspace.list_datasets() == []

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    ds = fresh_workspace.open("pets")
    samples = ds.samples()
    assert len(samples) == 150 and samples["sample_id"].is_unique
    assert all(ds.image_file(path).is_file() for path in samples["path"])


def test_killed_embed_job_resumes_from_its_checkpoints_and_the_old_set_stays_readable(
    fresh_workspace: Workspace, photos_16: Path
) -> None:
    import_source(fresh_workspace, photos_16, dataset="pets")
    ds = fresh_workspace.open("pets")
    ids = ds.samples()["sample_id"].to_numpy()
    old = ds.publish_embeddings(LITE0, np.zeros((16, 8), np.float32), ids, model="an older run")
    partial = ds.partial_dir(LITE0)
    params = {"batch_size": 2}

    job_id = jobs.submit(fresh_workspace, "embed", dataset="pets", params=params)
    pid = freeze_job_when(fresh_workspace, job_id, lambda: len(batch_files(partial)) >= 3)
    # Mid-computation, readers see the old set, whole.
    assert ds.embedding_names() == [LITE0]
    loaded = ds.load_embeddings(LITE0)
    assert loaded.info == old and not np.asarray(loaded.vectors).any()
    record = _killed_job_record(fresh_workspace, job_id, pid)
    assert record.progress.total == 16

    finished = {path.name: np.load(path) for path in batch_files(partial)}
    assert 3 <= len(finished) < 8
    assert ds.load_embeddings(LITE0).info == old  # still the old set after the kill

    seen: list[jobs.JobProgress] = []
    rerun = jobs.run_inline(
        fresh_workspace, "embed", dataset="pets", params=params, observer=seen.append
    )
    assert rerun.state == "done", rerun.error
    # It started past the checkpointed batches: they were kept, not computed again ...
    assert seen[0].done == 2 * len(finished) and seen[0].total == 16
    published = ds.load_embeddings(LITE0)
    assert published.info.model == LITE0 and published.vectors.shape == (16, 1280)
    # ... and they are in the published set, row for row.
    for name, vectors in finished.items():
        start, end = (int(part) for part in name.removesuffix(".npy").split("-")[1:])
        np.testing.assert_array_equal(published.vectors[start:end], vectors)
    assert not partial.exists()
    assert sorted(p.name for p in (ds.root / "embeddings").glob("*.npy")) == sorted(
        [f"{LITE0}-{published.info.version}.npy", f"{LITE0}-{published.info.version}.ids.npy"]
    )


def test_killed_object_embedding_publishes_nothing_and_the_rerun_succeeds(
    fresh_workspace: Workspace,
) -> None:
    from tests.shoal.ingest.detection_fixture import import_street

    import_street(fresh_workspace)
    ds = fresh_workspace.open("street")
    params = {"batch_size": 1}
    job_id = jobs.submit(fresh_workspace, "embed-objects", dataset="street", params=params)
    pid = freeze_job_when(fresh_workspace, job_id, job_progress_started(fresh_workspace, job_id))
    assert ds.embedding_names() == []
    _killed_job_record(fresh_workspace, job_id, pid)
    assert ds.embedding_names() == []

    rerun = jobs.run_inline(fresh_workspace, "embed-objects", dataset="street", params=params)
    assert rerun.state == "done", rerun.error
    objects = ds.load_embeddings(level="object")
    assert objects.vectors.shape == (len(ds.objects()), 1280)
    assert ds.load_embeddings().vectors.shape == (len(ds.samples()), 1280)


SLOW_MODEL = """
import time
import torch
from torch import nn


class Slow(nn.Module):
    '''A small random-weight classifier that takes a tenth of a second per batch.'''

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        time.sleep(0.1)
        return self.fc(torch.flatten(self.features(x), 1))


def build_model():
    torch.manual_seed(0)
    return Slow()


PREPROCESSING = {"size": 64, "resize": "stretch"}
"""


def test_killed_extraction_publishes_nothing_and_the_rerun_succeeds(
    tmp_path: Path, fresh_workspace: Workspace, photos_16: Path
) -> None:
    import_source(fresh_workspace, photos_16, dataset="pets")
    ds = fresh_workspace.open("pets")
    (tmp_path / "slow_model.py").write_text(SLOW_MODEL)
    params = {"model": f"{tmp_path / 'slow_model.py'}:build_model", "batch_size": 1}
    job_id = jobs.submit(fresh_workspace, "extract", dataset="pets", params=params)
    pid = freeze_job_when(fresh_workspace, job_id, job_progress_started(fresh_workspace, job_id))
    assert ds.embedding_names() == []
    _killed_job_record(fresh_workspace, job_id, pid)
    assert ds.embedding_names() == []

    rerun = jobs.run_inline(fresh_workspace, "extract", dataset="pets", params=params)
    assert rerun.state == "done", rerun.error
    assert ds.load_embeddings("slow_model").vectors.shape == (16, 8)


def test_killed_analysis_keeps_the_finished_graph_and_the_rerun_completes(
    fresh_workspace: Workspace,
) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    count = 300
    labels = np.repeat(["a", "b", "c"], count // 3)
    centres = rng.normal(size=(3, 16)) * 4
    vectors = (centres[np.repeat(np.arange(3), count // 3)] + rng.normal(size=(count, 16))).astype(
        np.float32
    )
    samples = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(count)],
            "source": [f"s{i}" for i in range(count)],
            "path": [None] * count,
            "split": ["train"] * count,
            "label": labels,
        }
    )
    ds = fresh_workspace.create("points", samples, has_images=False)
    ds.publish_embeddings("vectors", vectors, samples["sample_id"], model="synthetic")

    job_id = jobs.submit(fresh_workspace, "analyse", dataset="points")
    pid = freeze_job_when(
        fresh_workspace,
        job_id,
        lambda: "project" in jobs.get(fresh_workspace, job_id).progress.message,
    )
    graphs = sorted((ds.root / "artefacts" / "knn").glob("*.npz"))
    assert len(graphs) == 1 and not (ds.root / "artefacts" / "projection").exists()
    graph_inode = graphs[0].stat().st_ino
    _killed_job_record(fresh_workspace, job_id, pid)

    rerun = jobs.run_inline(fresh_workspace, "analyse", dataset="points")
    assert rerun.state == "done", rerun.error
    assert graphs[0].stat().st_ino == graph_inode  # the finished graph was reused, not rebuilt
    for kind in ("projection", "outliers", "duplicates", "mislabels"):
        assert len(list((ds.root / "artefacts" / kind).glob("*.json"))) == 1, kind
