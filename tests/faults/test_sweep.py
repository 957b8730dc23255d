"""What crashed or finished work leaves behind is swept: staging folders of killed imports, old
uploads, interrupted deletes, old query images, old finished job records. A folder that a live
import holds is never swept, however old it looks."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from shoal import jobs
from shoal.jobs import runner
from shoal.store import Workspace
from tests.faults.harness import copy_images, freeze_when, kill, resume, shoal_command

pytestmark = pytest.mark.faults

DAY = 24 * 3600
COUNT = "tests.shoal.jobs.job_tasks:count"


def _backdate(path: Path, seconds: float) -> None:
    """Make ``path`` and everything under it look untouched for ``seconds``."""
    stamp = time.time() - seconds
    for item in [*path.rglob("*"), path] if path.is_dir() else [path]:
        os.utime(item, (stamp, stamp), follow_symlinks=False)


def _leftover(folder: Path, *, age: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "photo.jpg").write_bytes(b"\xff\xd8 left behind")
    _backdate(folder, age)
    return folder


def _frozen_import(workspace: Workspace, source: Path, name: str) -> subprocess.Popen[str]:
    """An import of ``source`` as ``name`` frozen (SIGSTOP) half-way through storing images."""
    process = subprocess.Popen(
        shoal_command("import", str(source), "--dataset", name, "--workspace", str(workspace.root)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    staged = workspace.root / ".staging"
    freeze_when(
        process.pid,
        lambda: len(list(staged.glob(f"{name}-*/images/*/*.jpg"))) >= 5,
        still_running=lambda: process.poll() is None,
    )
    return process


def test_the_sweep_removes_leftovers_and_never_what_a_live_import_holds(
    tmp_path: Path, fresh_workspace: Workspace
) -> None:
    source = copy_images(tmp_path / "upload", 200)
    killed = _frozen_import(fresh_workspace, source, "gone")
    kill(killed.pid)
    killed.wait()
    live = _frozen_import(fresh_workspace, source, "live")
    try:
        root = fresh_workspace.root
        [killed_dir] = (root / ".staging").glob("gone-*")
        [live_dir] = (root / ".staging").glob("live-*")
        for folder in (killed_dir, live_dir):
            _backdate(folder, 2 * DAY)  # as old as can be: being held still protects the live one
        old_unzip = _leftover(root / ".staging" / "unzip-old", age=2 * DAY)
        young_unzip = _leftover(root / ".staging" / "unzip-young", age=60 * 2)
        old_upload = _leftover(root / ".uploads" / "upload-old", age=2 * DAY)
        young_upload = _leftover(root / ".uploads" / "upload-young", age=60 * 2)
        brand_new = _leftover(root / ".uploads" / "upload-new", age=0)  # maybe not held yet
        trash = _leftover(root / ".trash" / "pets-0123abcd", age=0)
        # What a job that outlived a delete could recreate: a dataset folder without dataset.json.
        orphan = _leftover(root / "datasets" / "ghost" / "embeddings", age=2 * DAY).parent
        _backdate(orphan, 2 * DAY)
        queries = root / ".cache" / "queries"
        queries.mkdir(parents=True)
        old_query, new_query = queries / "0123456789abcdef.png", queries / "fedcba9876543210.png"
        for image in (old_query, new_query):
            image.write_bytes(b"\x89PNG")
        _backdate(old_query, 40 * DAY)

        removed = fresh_workspace.sweep()
        leftovers = [killed_dir, old_unzip, old_upload, trash, orphan, old_query]
        assert sorted(removed) == sorted(leftovers), removed
        assert live_dir.is_dir() and young_unzip.is_dir() and young_upload.is_dir()
        assert new_query.exists()
        # A shorter age takes the young leftovers too, never the live import's folder.
        assert sorted(fresh_workspace.sweep(max_age=0)) == [young_unzip, young_upload]
        assert live_dir.is_dir() and brand_new.is_dir()
    finally:
        resume(live.pid)
    _, error = live.communicate(timeout=120)
    assert live.returncode == 0, error
    assert fresh_workspace.list_datasets() == ["live"]
    ds = fresh_workspace.open("live")
    assert len(ds.samples()) == 200
    assert all(ds.image_file(p).is_file() for p in ds.samples()["path"])
    assert not any((fresh_workspace.root / ".staging").iterdir())


def _age_record(workspace: Workspace, job_id: str, days: float) -> None:
    path = workspace.jobs_dir / f"{job_id}.json"
    record = json.loads(path.read_text())
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - days * DAY))
    record["created_at"] = record["finished_at"] = stamp
    path.write_text(json.dumps(record))


def test_the_sweep_removes_old_finished_job_records_and_keeps_active_ones(
    fresh_workspace: Workspace,
) -> None:
    params = {"total": 1, "delay": 0.001}
    old = jobs.run_inline(fresh_workspace, COUNT, params=params).id
    old_failed = jobs.run_inline(fresh_workspace, "tests.shoal.jobs.job_tasks:fail").id
    recent = jobs.run_inline(fresh_workspace, COUNT, params=params).id
    for job_id in (old, old_failed):
        _age_record(fresh_workspace, job_id, 40)
    jobs.log_path(fresh_workspace, old).write_text("the old job's log\n")
    damaged = fresh_workspace.jobs_dir / "20200101000000deadbeef.json"
    damaged.write_bytes(b"\x00 not a record")
    _backdate(damaged, 40 * DAY)
    stray_log = fresh_workspace.jobs_dir / "20200101000000cafecafe.log"
    stray_log.write_text("a log without its record")
    _backdate(stray_log, 40 * DAY)
    active = jobs.submit(fresh_workspace, COUNT, params={"total": 400, "delay": 0.05})
    try:
        assert jobs.wait(fresh_workspace, active, timeout=0).active
        _age_record(fresh_workspace, active, 40)  # created long ago, still running: kept
        removed = runner.sweep(fresh_workspace)
        names = {p.name for p in removed}
        assert names == {
            f"{old}.json",
            f"{old}.log",
            f"{old_failed}.json",
            damaged.name,
            stray_log.name,
        }, names
        assert {r.id for r in jobs.list_jobs(fresh_workspace)} == {recent, active}
    finally:
        jobs.cancel(fresh_workspace, active)


def test_the_end_of_a_job_sweeps_the_workspace_now_and_then(fresh_workspace: Workspace) -> None:
    first = _leftover(fresh_workspace.root / ".uploads" / "upload-1", age=2 * DAY)
    assert (
        jobs.run_inline(fresh_workspace, COUNT, params={"total": 1, "delay": 0.001}).state == "done"
    )
    assert not first.exists()
    second = _leftover(fresh_workspace.root / ".uploads" / "upload-2", age=2 * DAY)
    jobs.run_inline(fresh_workspace, COUNT, params={"total": 1, "delay": 0.001})
    assert second.exists()  # swept less than an hour ago: not yet again
