"""Delete a dataset while a job computes on it: the job stops, nothing orphaned is recreated, and
a re-import under the same name does not receive the old job's output."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from shoal import jobs
from shoal.ingest.images import import_source
from shoal.store import Workspace
from tests.faults.harness import batch_files, dead, freeze_job_when, resume, wait_for

pytestmark = pytest.mark.faults

LITE0 = "efficientnet_lite0"


def _embedding(workspace: Workspace, photos: Path) -> tuple[str, int, Path]:
    """An embed job on a fresh dataset 'pets', frozen after two checkpointed batches."""
    import_source(workspace, photos, dataset="pets")
    partial = workspace.open("pets").partial_dir(LITE0)
    job_id = jobs.submit(workspace, "embed", dataset="pets", params={"batch_size": 1})
    pid = freeze_job_when(workspace, job_id, lambda: len(batch_files(partial)) >= 2)
    return job_id, pid, partial


def _nothing_of_the_old_job(workspace: Workspace) -> None:
    ds = workspace.open("pets")
    assert ds.embedding_names() == [] and not ds.partial_dir(LITE0).exists()
    assert not list(ds.root.rglob("*.npy"))


def test_deleting_a_dataset_stops_its_job_and_nothing_comes_back(
    fresh_workspace: Workspace, photos_16: Path
) -> None:
    job_id, pid, partial = _embedding(fresh_workspace, photos_16)
    # The worker goes on only once the delete has asked it to stop (as the app and CLI do).
    threading.Timer(0.5, resume, args=(pid,)).start()
    stopped = jobs.delete_dataset(fresh_workspace, "pets", grace_seconds=60)
    assert [(r.id, r.state) for r in stopped] == [(job_id, "cancelled")]
    wait_for(lambda: dead(pid), timeout=60)
    assert jobs.get(fresh_workspace, job_id).state == "cancelled"
    assert fresh_workspace.list_datasets() == []
    assert not (fresh_workspace.datasets_dir / "pets").exists()  # no orphan folder

    import_source(fresh_workspace, photos_16, dataset="pets")
    _nothing_of_the_old_job(fresh_workspace)


def test_a_job_that_outlives_a_delete_recreates_nothing(
    fresh_workspace: Workspace, photos_16: Path
) -> None:
    """The dataset is deleted behind the job's back (no cancel): its next batch must not bring
    the dataset's folder back as an orphan."""
    job_id, pid, partial = _embedding(fresh_workspace, photos_16)
    fresh_workspace.delete("pets")
    resume(pid)
    record = jobs.wait(fresh_workspace, job_id, timeout=120, poll=0.1)
    assert record.state == "failed" and "'pets' was deleted" in (record.error or "")
    assert not (fresh_workspace.datasets_dir / "pets").exists()
    assert fresh_workspace.list_datasets() == []


def test_a_reimport_under_the_same_name_does_not_receive_the_old_jobs_output(
    fresh_workspace: Workspace, photos_16: Path
) -> None:
    job_id, pid, partial = _embedding(fresh_workspace, photos_16)
    fresh_workspace.delete("pets")
    import_source(fresh_workspace, photos_16, dataset="pets")  # the same images, the same paths
    resume(pid)
    record = jobs.wait(fresh_workspace, job_id, timeout=120, poll=0.1)
    assert record.state == "failed"
    assert "'pets' was deleted and created again" in (record.error or "")
    _nothing_of_the_old_job(fresh_workspace)
