from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from shoal import jobs
from shoal.store import Workspace

COUNT = "tests.shoal.jobs.job_tasks:count"


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_job_runs_in_a_worker_and_reports_progress(workspace: Workspace) -> None:
    job_id = jobs.submit(workspace, COUNT, dataset="d", params={"total": 5})
    assert jobs.get(workspace, job_id).pid != os.getpid()
    record = jobs.wait(workspace, job_id, timeout=60)
    assert record.state == "done" and record.result == {"counted": 5}
    assert record.progress.done == 5 and record.progress.unit == "steps"
    assert [r.id for r in jobs.list_jobs(workspace, dataset="d")] == [job_id]


def test_identical_active_job_is_reused(workspace: Workspace) -> None:
    first = jobs.submit(workspace, COUNT, dataset="d", params={"total": 40})
    assert jobs.submit(workspace, COUNT, dataset="d", params={"total": 40}) == first
    assert jobs.cancel(workspace, first).state == "cancelled"


def test_cancel_stops_the_worker(workspace: Workspace) -> None:
    job_id = jobs.submit(workspace, COUNT, dataset="d", params={"total": 400})
    _wait_for(lambda: jobs.get(workspace, job_id).progress.done >= 2)
    record = jobs.cancel(workspace, job_id)
    assert record.state == "cancelled" and record.progress.done < 400


def test_failure_is_recorded_with_its_message(workspace: Workspace) -> None:
    job_id = jobs.submit(workspace, "tests.shoal.jobs.job_tasks:fail", dataset="d")
    record = jobs.wait(workspace, job_id, timeout=60)
    assert record.state == "failed" and "could not be decoded" in (record.error or "")


def test_killed_worker_is_reported_as_failed(workspace: Workspace) -> None:
    job_id = jobs.submit(workspace, COUNT, dataset="d", params={"total": 400})
    _wait_for(lambda: jobs.get(workspace, job_id).progress.done >= 1)
    os.kill(jobs.get(workspace, job_id).pid, signal.SIGKILL)
    _wait_for(lambda: jobs.get(workspace, job_id).state != "running")
    record = jobs.get(workspace, job_id)
    assert record.state == "failed" and "stopped unexpectedly" in (record.error or "")


def test_unknown_kind_is_a_clear_error(workspace: Workspace) -> None:
    import pytest

    from shoal.store import StoreError

    with pytest.raises(StoreError, match="unknown job kind 'nope'"):
        jobs.submit(workspace, "nope")


def _write_record(workspace: Workspace, record: jobs.JobRecord) -> None:
    workspace.jobs_dir.mkdir(parents=True, exist_ok=True)
    (workspace.jobs_dir / f"{record.id}.json").write_text(json.dumps(record.to_dict()))


def test_a_reused_pid_is_not_taken_for_the_worker(workspace: Workspace) -> None:
    """Regression: jobs were known by a bare pid, so after the worker died and the system gave
    its pid to another process, the job looked alive and `cancel` could kill that process's
    group. Here the pid is this test's own process, started at another time than recorded."""
    record = jobs.JobRecord(
        id="1",
        kind=COUNT,
        dataset="d",
        params={},
        state="running",
        pid=os.getpid(),
        pid_started="1",
    )
    _write_record(workspace, record)
    seen = jobs.get(workspace, "1")
    assert seen.state == "failed" and "stopped unexpectedly" in (seen.error or "")
    assert jobs.cancel(workspace, "1", grace_seconds=0.1).state == "failed"  # and we are alive


def test_a_worker_that_died_before_starting_does_not_block_a_new_job(workspace: Workspace) -> None:
    """Regression: a worker that died before marking its job "running" left a "queued" record
    forever, and every resubmit of the same job was answered with that dead job's id."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    params = {"total": 1, "delay": 0.01}
    record = jobs.JobRecord(id="2", kind=COUNT, dataset="d", params=params, pid=dead.pid)
    _write_record(workspace, record)
    assert jobs.get(workspace, "2").state == "failed"
    job_id = jobs.submit(workspace, COUNT, dataset="d", params=params)
    assert job_id != "2" and jobs.wait(workspace, job_id, timeout=120).state == "done"


def test_deleting_a_dataset_stops_its_jobs(workspace: Workspace) -> None:
    """Regression: deleting a dataset left its jobs running (writing into a dataset that was
    gone); they are now stopped first, and only that dataset's jobs."""
    import pandas as pd

    samples = pd.DataFrame(
        {"sample_id": ["s0"], "source": ["x"], "path": [None], "split": [None], "label": [None]}
    )
    workspace.create("d", samples, has_images=False)
    slow = {"total": 400, "delay": 0.05}
    doomed = jobs.submit(workspace, COUNT, dataset="d", params=slow)
    other = jobs.submit(workspace, COUNT, dataset="other", params=slow)
    _wait_for(lambda: jobs.get(workspace, doomed).state == "running", timeout=60)
    stopped = jobs.delete_dataset(workspace, "d", grace_seconds=20)
    assert [r.id for r in stopped] == [doomed] and stopped[0].state == "cancelled"
    assert not workspace.exists("d") and jobs.get(workspace, other).active
    jobs.cancel(workspace, other)
