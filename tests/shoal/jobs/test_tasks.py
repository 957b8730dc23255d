"""shoal.jobs.tasks: the built-in job kinds run in real worker processes, with typed parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal import jobs
from shoal.store import Workspace


@pytest.mark.parametrize(
    ("kind", "params"),
    [("analyse", {}), ("compare", {"reference": "split=train"}), ("embed", {})],
)
def test_registered_kinds_reach_their_body_in_a_worker(
    tmp_path: Path, kind: str, params: dict
) -> None:
    """A worker runs as `python -m shoal.jobs`; registered kinds must be known there too
    (regression: every registered kind failed there with "unknown job kind")."""
    workspace = Workspace(tmp_path / "ws")
    job_id = jobs.submit(workspace, kind, dataset="missing", params=params)
    record = jobs.wait(workspace, job_id, timeout=120)
    assert record.state == "failed"
    assert "no dataset 'missing'" in (record.error or ""), record.error
