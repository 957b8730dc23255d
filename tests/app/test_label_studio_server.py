"""Shoal's Label Studio tasks go into a real Label Studio server and come back out.

The server runs from its own venv (``make label-studio``: its pinned Django stack conflicts with
Shoal's), on 127.0.0.1 with SQLite and its data in the test's tmp_path, serving the dataset's
images as local files. Through the API the test creates a project with Shoal's labelling config,
imports Shoal's tasks, checks the pre-annotations are there and an image is served, accepts each
task's "shoal labels" pre-annotation as the labeller would, exports the project as JSON and
imports that back with Shoal: the same images, boxes and labels.

Without the venv the test is skipped, unless SHOAL_REQUIRE_LABEL_STUDIO=1 (CI) makes it fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.servers import REPO, free_port, server_process
from shoal.ingest.label_studio import LABELS_VERSION, PREDICTIONS_VERSION, import_label_studio
from shoal.store import Workspace
from shoal.workflows.exports import export_label_studio
from tests.shoal.ingest.detection_fixture import import_street

LABEL_STUDIO = REPO / ".venv-labelstudio" / "bin" / "label-studio"
#: A database migrated by `make label-studio`: a fresh one takes ~80 s of migrations, a copy ~8 s.
MIGRATED = REPO / ".venv-labelstudio" / "migrated" / "label_studio.sqlite3"

STARTUP_TIMEOUT_S = 240.0


class LabelStudio:
    """A tiny client of Label Studio's REST API (token auth, JSON in and out)."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def call(self, method: str, path: str, payload: Any = None) -> Any:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if payload is None else json.dumps(payload).encode(),
            headers={"Authorization": f"Token {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{method} {path}: {error.code} {error.read()[:500]!r}") from error

    def fetch(self, path: str) -> tuple[int, str, bytes]:
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()


def _label_studio_or_skip() -> None:
    if LABEL_STUDIO.exists():
        return
    message = f"{LABEL_STUDIO} is missing: run `make label-studio` to install Label Studio"
    if os.environ.get("SHOAL_REQUIRE_LABEL_STUDIO") == "1":
        pytest.fail(message + " (SHOAL_REQUIRE_LABEL_STUDIO=1: the test must run here)")
    pytest.skip(message)


@contextlib.contextmanager
def label_studio(data_dir: Path, document_root: Path) -> Iterator[LabelStudio]:
    """A Label Studio server on a free port of 127.0.0.1; stopped (its whole process group)
    on exit. Its update check, analytics and error reporting are off: no traffic leaves."""
    data_dir.mkdir(parents=True)
    if MIGRATED.exists():
        shutil.copyfile(MIGRATED, data_dir / "label_studio.sqlite3")
    port, token = free_port(), secrets.token_hex(20)
    env = {
        "HOME": str(data_dir),  # nothing written to the user's ~/.local/share/label-studio
        "DJANGO_DB": "sqlite",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
    }
    command = [str(LABEL_STUDIO), "start", "--no-browser", "--internal-host", "127.0.0.1"]
    command += ["--port", str(port), "--data-dir", str(data_dir), "--log-level", "WARNING"]
    command += ["--username", "shoal@example.com", "--password", secrets.token_hex(8)]
    command += ["--user-token", token]
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with server_process(
        command,
        url,
        data_dir / "server.log",
        env=env,
        cwd=data_dir,
        health="/health",
        timeout=STARTUP_TIMEOUT_S,
        stop_timeout=20,
    ):
        print(f"Label Studio answered after {time.monotonic() - started:.1f} s")
        yield LabelStudio(url, token)


def import_tasks(
    server: LabelStudio, title: str, config: str, images: Path, tasks: list[Any]
) -> tuple[int, Any]:
    """A new project with ``config``, a Local Files storage over ``images`` (Label Studio serves
    a local file only to a project with one over it) and ``tasks`` imported: (project id, the
    import's answer)."""
    project_id = server.call("POST", "/api/projects", {"title": title, "label_config": config})[
        "id"
    ]
    server.call(
        "POST",
        "/api/storages/localfiles",
        {"project": project_id, "path": str(images), "use_blob_urls": True},
    )
    return project_id, server.call("POST", f"/api/projects/{project_id}/import", tasks)


def accept_and_export(server: LabelStudio, project_id: int, predictions: list[Any]) -> Any:
    """The labeller accepts each task's "shoal labels" pre-annotation as it is; then the
    project's JSON export."""
    for prediction in predictions:
        if prediction["model_version"] == LABELS_VERSION:
            server.call(
                "POST",
                f"/api/tasks/{prediction['task']}/annotations",
                {"result": prediction["result"], "was_cancelled": False},
            )
    return server.call(
        "GET", f"/api/projects/{project_id}/export?exportType=JSON&download_all_tasks=true"
    )


def test_a_missing_label_studio_fails_where_it_is_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(globals(), "LABEL_STUDIO", tmp_path / "no-label-studio")
    monkeypatch.delenv("SHOAL_REQUIRE_LABEL_STUDIO", raising=False)
    with pytest.raises(pytest.skip.Exception, match="run `make label-studio`"):
        _label_studio_or_skip()
    monkeypatch.setenv("SHOAL_REQUIRE_LABEL_STUDIO", "1")
    with pytest.raises(pytest.fail.Exception, match="SHOAL_REQUIRE_LABEL_STUDIO=1"):
        _label_studio_or_skip()


@pytest.mark.slow
def test_shoal_tasks_import_into_label_studio_and_its_export_imports_back(tmp_path: Path) -> None:
    _label_studio_or_skip()
    ws = Workspace(tmp_path / "ws")
    import_street(ws)
    ds = ws.open("street")
    samples = ds.samples()
    written = export_label_studio(ds, samples["sample_id"], tmp_path / "tasks.json")
    tasks = json.loads(written["tasks"].read_text())
    objects = ds.objects()
    expected_predictions = objects.groupby(["sample_id", "kind"]).size()

    with label_studio(tmp_path / "label-studio", document_root=ds.root) as server:
        project_id, imported = import_tasks(
            server, "shoal street", written["config"].read_text(), ds.root / "images", tasks
        )
        assert imported["task_count"] == len(samples)
        assert imported["prediction_count"] == len(expected_predictions)

        listed = server.call("GET", f"/api/tasks?project={project_id}&page_size=100&fields=all")
        by_sample = {t["data"]["sample_id"]: t for t in listed["tasks"]}
        assert sorted(by_sample) == sorted(samples["sample_id"].astype(str))
        predictions = server.call("GET", f"/api/predictions?project={project_id}")
        for prediction in predictions:
            task = next(t for t in listed["tasks"] if t["id"] == prediction["task"])
            kind = {LABELS_VERSION: "label", PREDICTIONS_VERSION: "inference"}[
                prediction["model_version"]
            ]
            assert (
                len(prediction["result"]) == expected_predictions[task["data"]["sample_id"]][kind]
            )

        status, content_type, body = server.fetch(tasks[0]["data"]["image"])
        first = samples.set_index("sample_id").loc[tasks[0]["data"]["sample_id"], "path"]
        assert (status, content_type) == (200, "image/jpeg")
        assert body == ds.image_file(first).read_bytes()

        export = accept_and_export(server, project_id, predictions)
    (tmp_path / "project.json").write_text(json.dumps(export))

    report = import_label_studio(ws, tmp_path / "project.json", images=ds.root, dataset="back")
    assert report.rejected == [] and report.imported == len(samples)
    back = ws.open("back")
    before, after = samples.set_index("sample_id"), back.samples().set_index("sample_id")
    assert sorted(after.index) == sorted(before.index)
    assert after.loc[before.index, "path"].tolist() == before["path"].tolist()
    assert after.loc[before.index, "label"].tolist() == before["label"].tolist()
    columns = ["sample_id", "category", "x0", "y0", "x1", "y1"]
    labels = objects[objects["kind"] == "label"][columns].sort_values(columns[:4])
    returned = back.objects()
    returned = returned[returned["kind"] == "label"][columns].sort_values(columns[:4])
    assert returned["category"].tolist() == labels["category"].tolist()
    assert returned["sample_id"].tolist() == labels["sample_id"].tolist()
    np.testing.assert_allclose(
        returned[columns[2:]].to_numpy(float), labels[columns[2:]].to_numpy(float), atol=1e-6
    )
