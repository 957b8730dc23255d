"""Two writers on one dataset: two embed jobs on one set, two imports under one name, publishes
of one set from two processes. One is refused with a clear message, or they take turns; no
result is ever torn."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shoal import jobs
from shoal.ingest.images import import_source
from shoal.store import Workspace
from tests.faults.harness import (
    batch_files,
    copy_images,
    freeze_job_when,
    freeze_when,
    resume,
    shoal_command,
)

pytestmark = pytest.mark.faults

LITE0 = "efficientnet_lite0"


def test_a_second_embed_job_on_a_set_being_computed_is_refused(
    fresh_workspace: Workspace, photos_16: Path
) -> None:
    import_source(fresh_workspace, photos_16, dataset="pets")
    ds = fresh_workspace.open("pets")
    partial = ds.partial_dir(LITE0)
    first = jobs.submit(fresh_workspace, "embed", dataset="pets", params={"batch_size": 2})
    pid = freeze_job_when(fresh_workspace, first, lambda: len(batch_files(partial)) >= 2)
    try:
        # `shoal embed pets` meanwhile (another batch size: not the same job, so not reused).
        refused = jobs.run_inline(
            fresh_workspace, "embed", dataset="pets", params={"batch_size": 4}
        )
        assert refused.id != first and refused.state == "failed"
        assert f"embedding set '{LITE0}' of dataset 'pets' is being written by another job" in (
            refused.error or ""
        )
        # The refused job touched nothing of the first one's.
        assert all(p.name.startswith("batch-") for p in batch_files(partial))
        assert ds.embedding_names() == []
    finally:
        resume(pid)
    done = jobs.wait(fresh_workspace, first, timeout=180, poll=0.1)
    assert done.state == "done", done.error
    published = ds.load_embeddings(LITE0)
    assert published.vectors.shape == (16, 1280) and np.isfinite(published.vectors).all()
    assert list(published.ids) == list(ds.samples()["sample_id"]) and not partial.exists()


def test_two_imports_under_one_name_one_wins_whole_and_the_other_is_refused(
    tmp_path: Path, fresh_workspace: Workspace
) -> None:
    mammals = copy_images(tmp_path / "mammals", 60, classes=("mammals",))
    food = copy_images(tmp_path / "food", 12, classes=("food",))
    root = str(fresh_workspace.root)
    staged = fresh_workspace.root / ".staging"
    slow = subprocess.Popen(
        shoal_command("import", str(mammals), "--dataset", "pets", "--workspace", root),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Frozen after its name check, half-way through storing its images ...
    freeze_when(
        slow.pid,
        lambda: len(list(staged.glob("*/images/*/*.jpg"))) >= 5,
        still_running=lambda: slow.poll() is None,
    )
    try:
        # ... while a second import under the same name runs to the end.
        fast = subprocess.run(
            shoal_command("import", str(food), "--dataset", "pets", "--workspace", root),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert fast.returncode == 0, fast.stderr
    finally:
        resume(slow.pid)
    _, error = slow.communicate(timeout=120)
    assert slow.returncode == 2
    assert "dataset 'pets' already exists" in error and "Traceback" not in error

    ds = fresh_workspace.open("pets")
    samples = ds.samples()
    assert len(samples) == 12 and set(samples["label"]) == {"food"}  # the winner, whole
    assert all(ds.image_file(path).is_file() for path in samples["path"])
    assert len(list((ds.root / "images").glob("*/*"))) == 12  # none of the loser's images
    assert not any(staged.iterdir())  # the loser removed its staging folder


PUBLISHER = """
import sys
import numpy as np
from shoal.store import Workspace
ds = Workspace(sys.argv[1]).open("race")
sign = float(sys.argv[2])
ids = [f"s{i}" for i in range(400)]
for version in range(1, 31):
    ds.publish_embeddings("e", np.full((400, 128), sign * version, np.float32), ids, model="m")
"""


def test_publishes_of_one_set_from_two_processes_are_never_torn(
    fresh_workspace: Workspace,
) -> None:
    count = 400
    samples = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(count)],
            "source": ["x"] * count,
            "path": [None] * count,
            "split": [None] * count,
            "label": [None] * count,
        }
    )
    ds = fresh_workspace.create("race", samples, has_images=False)
    ids = samples["sample_id"].to_numpy()
    ds.publish_embeddings("e", np.zeros((count, 128), np.float32), ids, model="m")
    writers = [
        subprocess.Popen([sys.executable, "-c", PUBLISHER, str(fresh_workspace.root), sign])
        for sign in ("1", "-1")
    ]
    reads, values = 0, set()
    deadline = time.monotonic() + 120
    while any(w.poll() is None for w in writers) and time.monotonic() < deadline:
        loaded = ds.load_embeddings("e")
        seen = np.unique(loaded.vectors)
        assert len(seen) == 1 and loaded.vectors.shape == (count, 128)
        assert list(loaded.ids) == list(ids)
        values.add(float(seen[0]))
        reads += 1
    assert [w.wait(timeout=60) for w in writers] == [0, 0] and reads > 0
    final = ds.load_embeddings("e")
    assert abs(float(np.unique(final.vectors)[0])) == 30
    on_disk = sorted(p.name for p in (ds.root / "embeddings").glob("*.npy"))
    assert on_disk == [f"e-{final.info.version}.ids.npy", f"e-{final.info.version}.npy"]
