"""`shoal embed --engine ray` on a real two-node Ray cluster on this machine (issue 12).

The cluster is ``ray.cluster_utils.Cluster`` with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which
binds every node to 127.0.0.1 (plain ``ray start`` binds the machine's network address): a head
and one worker node of one CPU each. It is stopped at the end of the module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal.store import Workspace
from shoal.workflows.embed import embed_dataset

pytestmark = pytest.mark.slow

# Read when Ray is first imported (ray._private.ray_constants), and inherited by the nodes' and
# the CLI drivers' processes: every address is 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip(
    "ray", reason="the Ray engine is an optional extra: pip install shoal[ray]"
)
from ray.cluster_utils import Cluster  # noqa: E402

from shoal.workflows.ray_engine import RayRunReport, embed_dataset_on_ray  # noqa: E402

IMAGES = Path(__file__).resolve().parents[3] / "sample_data" / "tuxpaint" / "train"
#: Small batches, so that the 241 images make 31 batches and 8 tasks for the two actors.
BATCH = 8


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        assert cluster.address.startswith("127.0.0.1:")
        assert worker.node_ip_address == "127.0.0.1"
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The sample's 241 real training images, embedded once on the local path (fp32)."""
    from shoal.ingest.images import import_source

    ws = Workspace(tmp_path_factory.mktemp("ray-ws"))
    import_source(ws, IMAGES, dataset="tux")
    embed_dataset(ws.open("tux"), name="local", batch_size=BATCH, precision="fp32")
    return ws


def vectors(ws: Workspace, name: str) -> np.ndarray:
    return np.asarray(ws.open("tux").load_embeddings(name, mmap=False).vectors)


def assert_equal_to_local(ws: Workspace, name: str) -> None:
    local, remote = vectors(ws, "local"), vectors(ws, name)
    cosine = (
        (local * remote).sum(1) / np.linalg.norm(local, axis=1) / np.linalg.norm(remote, axis=1)
    )
    assert cosine.min() >= 0.9999, cosine.min()


def test_shoal_embed_runs_on_both_nodes_and_equals_the_local_path(
    cluster: Any, workspace: Workspace
) -> None:
    command = [
        *(sys.executable, "-m", "shoal", "--workspace", str(workspace.root)),
        *("embed", "tux", "--engine", "ray", "--address", cluster.address),
        *("--embedding", "on-ray", "--batch-size", str(BATCH), "--precision", "fp32", "--json"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["count"] == 241 and result["engine"] == "ray"
    per_node = result["ray"]["rows_per_node"]
    assert len(per_node) == 2 and min(per_node.values()) > 0, per_node
    assert sum(per_node.values()) == 241
    assert_equal_to_local(workspace, "on-ray")


def test_a_worker_node_removed_mid_job_still_gives_the_complete_set(
    cluster: Any, workspace: Workspace
) -> None:
    worker = cluster.worker_nodes and next(iter(cluster.worker_nodes))
    assert worker, "the module's cluster has a worker node"
    removed: list[int] = []

    def remove_worker_once(progress: Any) -> None:
        if progress.done >= 3 * BATCH and not removed:
            removed.append(progress.done)
            cluster.remove_node(worker)

    reports: list[RayRunReport] = []
    info = embed_dataset_on_ray(
        workspace.open("tux"),
        address=cluster.address,
        name="survivor",
        batch_size=BATCH,
        precision="fp32",
        progress=remove_worker_once,
        report=reports.append,
    )
    assert removed and removed[0] < 241, "the node was removed while images were left"
    assert info.count == 241 and sum(reports[0].rows_per_node.values()) == 241
    assert_equal_to_local(workspace, "survivor")
    # Put the worker back for any later test of the module.
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()


def test_after_the_driver_is_killed_a_rerun_sends_only_the_unfinished_batches(
    cluster: Any, workspace: Workspace
) -> None:
    partial = workspace.open("tux").partial_dir("resumed")
    command = [
        *(sys.executable, "-m", "shoal", "--workspace", str(workspace.root)),
        *("embed", "tux", "--engine", "ray", "--address", cluster.address),
        *("--embedding", "resumed", "--batch-size", str(BATCH), "--precision", "fp32", "--json"),
    ]
    driver = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        while len(list(partial.glob("batch-*.npy"))) < 10:
            assert driver.poll() is None, "the driver ended before it could be killed"
            assert time.monotonic() < deadline, "no 10 batches checkpointed within 5 minutes"
            time.sleep(0.05)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finished = len(list(partial.glob("batch-*.npy")))
    assert finished < 31, "the driver finished before it was killed"

    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout)["ray"]
    assert run["resumed_rows"] >= finished * BATCH - BATCH  # the last batch may hold 1 image
    assert sum(run["rows_per_node"].values()) == 241 - run["resumed_rows"]
    assert_equal_to_local(workspace, "resumed")
    assert not partial.exists(), "checkpoints are removed once the set is published"


# --------------------------------------------------------------------------- boxes and own models

CLASSIFIER = """
import torch, torchvision

def build_model():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10)

PREPROCESSING = {"size": 112, "resize": "stretch"}
"""

DETECTOR = """
import torch, torchvision

def build_model():
    torch.manual_seed(0)
    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=5,
        rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=100,
    ).eval()
"""


@pytest.fixture(scope="module")
def boxes(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """24 real images of the sample (3 groups of 8 for the pool), each with 1 to 3 boxes (a
    COCO file written here)."""
    from PIL import Image

    from shoal.ingest.coco import import_coco

    folder = tmp_path_factory.mktemp("boxes")
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id, path in enumerate(sorted(IMAGES.glob("*/*.jpg"))[::10][:24], start=1):
        width, height = Image.open(path).size
        images.append({"id": image_id, "file_name": path.relative_to(IMAGES).as_posix(),
                       "width": width, "height": height})  # fmt: skip
        for _ in range(int(rng.integers(1, 4))):
            w, h = rng.uniform(0.2, 0.6) * width, rng.uniform(0.2, 0.6) * height
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": 1, "bbox": [x, y, w, h]})  # fmt: skip
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "thing"}]}  # fmt: skip
    (folder / "boxes.json").write_text(json.dumps(coco))
    ws = Workspace(folder / "ws")
    import_coco(ws, folder / "boxes.json", images=IMAGES, dataset="boxes")
    assert len(ws.open("boxes").samples()) == 24
    return ws


def test_object_embeddings_on_ray_equal_the_local_path(cluster: Any, boxes: Workspace) -> None:
    from shoal.workflows.objects import embed_dataset_objects
    from shoal.workflows.ray_engine import embed_objects_on_ray

    ds = boxes.open("boxes")
    local = embed_dataset_objects(ds, name="local-objects", precision="fp32")
    reports: list[RayRunReport] = []
    remote = embed_objects_on_ray(
        ds,
        address=cluster.address,
        name="ray-objects",
        precision="fp32",
        report=reports.append,
    )
    assert remote.count == local.count == len(ds.objects()) and remote.level == "object"
    assert remote.preprocessing["objects"]["engine"] == "ray"
    assert sum(reports[0].rows_per_node.values()) == 24
    a = np.asarray(ds.load_embeddings("local-objects", mmap=False).vectors)
    b = np.asarray(ds.load_embeddings("ray-objects", mmap=False).vectors)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.9999, cosine.min()
    ids = ds.load_embeddings("ray-objects").ids.astype(str)
    assert ids.tolist() == ds.objects()["object_id"].astype(str).tolist()


def test_shoal_extract_on_ray_equals_the_local_path(
    cluster: Any, boxes: Workspace, tmp_path: Path
) -> None:
    from shoal.workflows.extract import extract_dataset

    factory = tmp_path / "my_model.py"
    factory.write_text(CLASSIFIER)
    spec = f"{factory}:build_model"
    ds = boxes.open("boxes")
    (local,) = extract_dataset(ds, spec, name="local-resnet")
    command = [
        *(sys.executable, "-m", "shoal", "--workspace", str(boxes.root)),
        *("extract", "boxes", "--model", spec, "--engine", "ray", "--address", cluster.address),
        *("--embedding", "ray-resnet", "--json"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (written,) = json.loads(done.stdout)
    assert written["count"] == 24 and written["dim"] == local.dim == 512
    assert written["preprocessing"]["layer"] == local.preprocessing["layer"] == "fc:input"
    assert written["preprocessing"]["engine"] == "ray"
    a = np.asarray(ds.load_embeddings("local-resnet", mmap=False).vectors)
    b = np.asarray(ds.load_embeddings("ray-resnet", mmap=False).vectors)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.9999, cosine.min()


def test_a_detector_on_ray_gives_the_local_image_and_box_sets(cluster: Any, tmp_path: Path) -> None:
    from shoal.workflows.extract import extract_dataset
    from shoal.workflows.ray_engine import extract_on_ray
    from tests.shoal.ingest.detection_fixture import import_street

    ws = import_street(Workspace(tmp_path / "ws"))
    ds = ws.open("street")
    factory = tmp_path / "detector.py"
    factory.write_text(DETECTOR)
    spec = f"{factory}:build_model"
    local = extract_dataset(ds, spec, task="detection", name="local-det")
    remote = extract_on_ray(ds, spec, task="detection", name="ray-det", address=cluster.address)
    assert [i.level for i in remote] == [i.level for i in local] == ["sample", "object"]
    assert remote[1].count == len(ds.objects())
    for mine, theirs in zip(local, remote, strict=True):
        assert theirs.preprocessing["box_layer"] == mine.preprocessing["box_layer"]
        a = np.asarray(ds.load_embeddings(mine.name, mmap=False).vectors)
        b = np.asarray(ds.load_embeddings(theirs.name, mmap=False).vectors)
        assert np.abs(a).max() > 0
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
