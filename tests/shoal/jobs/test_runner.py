from __future__ import annotations

import os
import signal
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
