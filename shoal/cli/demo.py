"""The bundled sample dataset: imported and embedded on first use, so the app opens ready."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal import jobs
from shoal.store import StoreError, Workspace

SAMPLE_DATASET = "sample"
#: Shipped inside the package (shoal/sample_data links to the top-level folder in a checkout).
SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data" / "tuxpaint"


def ensure_sample_dataset(
    workspace: Workspace,
    *,
    progress: Callable[[Any], None] | None = None,
    source: Path = SAMPLE_DIR,
) -> str:
    """Import ``sample_data/tuxpaint`` as ``sample`` and embed it, unless that is already done."""
    from shoal.ingest.images import import_source

    if not workspace.exists(SAMPLE_DATASET):
        if not source.exists():
            raise StoreError(f"sample data not found at {source}; reinstall shoal")
        import_source(workspace, source, dataset=SAMPLE_DATASET)
    dataset = workspace.open(SAMPLE_DATASET)
    if dataset.default_embedding() is None:
        record = jobs.run_inline(
            workspace, "embed", dataset=SAMPLE_DATASET, params={}, observer=progress
        )
        if record.state != "done":
            raise StoreError(f"embedding the sample dataset failed: {record.error}")
    return SAMPLE_DATASET
