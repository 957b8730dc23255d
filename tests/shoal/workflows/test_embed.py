"""`shoal embed` end to end on real images: sensible neighbours, and a killed run resumes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shoal.ingest.images import import_source
from shoal.store import Workspace

pytestmark = pytest.mark.slow


def test_nearest_neighbours_share_the_label(embedded_sample: Workspace) -> None:
    dataset = embedded_sample.open("sample")
    embedded = dataset.load_embeddings()
    labels = dataset.samples().set_index("sample_id").loc[embedded.ids, "label"].to_numpy()
    vectors = np.array(embedded.vectors)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    agreement = (labels[similarity.argmax(axis=1)] == labels).mean()
    chance = float(((np.unique(labels, return_counts=True)[1] / len(labels)) ** 2).sum())
    assert embedded.info.dim == 1280 and embedded.info.model == "efficientnet_lite0"
    assert chance < 0.2 and agreement > 0.7, (agreement, chance)


def _shoal(*args: str) -> list[str]:
    return [sys.executable, "-m", "shoal", *args]


def test_backend_and_precision_are_recorded_with_the_set(
    sample_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shoal.embedding.backends import openvino_available
    from shoal.workflows.embed import embed_dataset

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    upload = tmp_path / "upload"
    for image in sorted(sample_images.glob("train/*/*.jpg"))[::8][:16]:
        (upload / image.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, upload / image.parent.name / image.name)
    workspace = Workspace(tmp_path / "ws")
    import_source(workspace, upload, dataset="small")
    dataset = workspace.open("small")

    forced = embed_dataset(dataset, name="forced", backend="torch", precision="fp32")
    assert (forced.preprocessing["backend"], forced.preprocessing["precision"]) == ("torch", "fp32")
    auto = embed_dataset(dataset, name="auto")
    if openvino_available():
        assert (auto.preprocessing["backend"], auto.preprocessing["precision"]) == (
            "openvino",
            "fp32",
        )
    else:
        assert auto.preprocessing["backend"] == "torch"
    a = np.array(dataset.load_embeddings("forced").vectors)
    b = np.array(dataset.load_embeddings("auto").vectors)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.995


# OpenVINO runs a batch far faster: smaller batches leave time to kill the run part way.
@pytest.mark.parametrize(("backend", "batch_size"), [("torch", 8), ("openvino", 4)])
def test_killed_embed_resumes_where_it_stopped(
    sample_images: Path, tmp_path: Path, backend: str, batch_size: int
) -> None:
    from shoal.embedding.backends import openvino_available

    if backend == "openvino" and not openvino_available():
        pytest.skip("needs OpenVINO on x86-64")
    batches = 80 // batch_size
    upload = tmp_path / "upload"
    for image in sorted(sample_images.glob("train/*/*.jpg"))[:80]:
        (upload / image.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, upload / image.parent.name / image.name)
    workspace = Workspace(tmp_path / "ws")
    import_source(workspace, upload, dataset="resume")
    dataset = workspace.open("resume")
    partial = dataset.partial_dir("efficientnet_lite0")
    options = ["--batch-size", str(batch_size), "--backend", backend]
    args = _shoal("embed", "resume", *options, "--workspace", str(workspace.root))
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # OpenVINO's graph cache

    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env
    )
    deadline = time.monotonic() + 240
    while len(list(partial.glob("batch-*.npy"))) < 3:
        assert process.poll() is None, "embed finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = sorted(p.name for p in partial.glob("batch-*.npy"))
    assert 3 <= len(finished) < batches and dataset.embedding_names() == []

    resumed = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr
    first_progress = next(
        line for line in resumed.stderr.splitlines() if line.startswith("embed resume:")
    )
    assert not first_progress.startswith("embed resume: 0/"), (
        first_progress
    )  # started past the finished batches
    resumed_vectors = np.array(dataset.load_embeddings().vectors)
    assert not partial.exists()

    # The stitched result equals an uninterrupted run.
    fresh = Workspace(tmp_path / "ws2")
    import_source(fresh, upload, dataset="resume")
    assert (
        subprocess.run(
            _shoal("embed", "resume", *options, "--workspace", str(fresh.root)), env=env
        ).returncode
        == 0
    )
    reference = np.array(fresh.open("resume").load_embeddings().vectors)
    cosine = (
        (resumed_vectors * reference).sum(1)
        / np.linalg.norm(resumed_vectors, axis=1)
        / np.linalg.norm(reference, axis=1)
    )
    assert resumed_vectors.shape == (80, 1280) and cosine.min() > 0.9999
    assert fresh.open("resume").load_embeddings().info.preprocessing["backend"] == backend
