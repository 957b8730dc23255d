"""shoal.jobs.tasks: the built-in job kinds run in real worker processes, with typed parameters."""

from __future__ import annotations

import json
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


def test_parameters_are_typed_and_their_defaults_come_from_the_library() -> None:
    from shoal.embedding.defaults import (
        DEFAULT_BACKEND,
        DEFAULT_BATCH_SIZE,
        DEFAULT_MODEL,
        DEFAULT_PRECISION,
    )

    embed = jobs.JOB_KINDS["embed"]
    spelt_out = {
        "model": DEFAULT_MODEL,
        "name": None,
        "batch_size": DEFAULT_BATCH_SIZE,
        "backend": DEFAULT_BACKEND,
        "precision": DEFAULT_PRECISION,
        "engine": "auto",
        "address": None,
    }
    assert embed.complete_params({}) == embed.complete_params(spelt_out) == spelt_out
    # None means "the default", as the CLI passes an option the user did not give.
    assert embed.complete_params({"batch_size": None})["batch_size"] == DEFAULT_BATCH_SIZE
    assert jobs.JOB_KINDS["embed-objects"].complete_params({})["batch_size"] == 8


def test_an_unknown_parameter_is_refused_before_a_worker_starts(tmp_path: Path) -> None:
    from shoal.store import StoreError

    workspace = Workspace(tmp_path / "ws")
    with pytest.raises(StoreError, match=r"unexpected keyword argument 'modle'.*accepted: model"):
        jobs.submit(workspace, "embed", dataset="pets", params={"modle": "resnet50"})
    assert jobs.list_jobs(workspace) == []


def test_a_request_with_the_defaults_spelt_out_reuses_the_active_job(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    workspace.jobs_dir.mkdir(parents=True)
    first = jobs.JobRecord(
        id="1", kind="embed", dataset="pets", params=jobs.JOB_KINDS["embed"].complete_params({})
    )
    (workspace.jobs_dir / "1.json").write_text(json.dumps(first.to_dict()))
    for asked in ({}, {"batch_size": 32}, {"model": "efficientnet_lite0", "name": None}):
        again = jobs.find_active(workspace, "embed", dataset="pets", params=asked)
        assert again is not None and again.id == "1", asked
    assert jobs.find_active(workspace, "embed", dataset="pets", params={"batch_size": 8}) is None


def test_the_embed_engine_follows_the_named_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.jobs.tasks import resolve_engine
    from shoal.workflows.ray_engine import RAY_ADDRESS_ENV

    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    assert resolve_engine("auto") == "local"
    assert resolve_engine("auto", "127.0.0.1:6379") == "ray"
    monkeypatch.setenv(RAY_ADDRESS_ENV, "10.0.0.1:6379")
    assert resolve_engine("auto") == "ray"
    assert resolve_engine("local") == "local"
    with pytest.raises(ValueError, match="engine must be one of"):
        resolve_engine("spark")
