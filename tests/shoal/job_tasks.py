"""Job bodies for the job-runner tests, run in real worker processes as ``tests.shoal.job_tasks:NAME``."""

from __future__ import annotations

import time
from typing import Any

from shoal.jobs import JobContext


def count(context: JobContext) -> dict[str, Any]:
    total = int(context.params["total"])
    for done in range(1, total + 1):
        time.sleep(float(context.params.get("delay", 0.05)))
        context.check_cancelled()
        context.report(
            done, total, rate=1 / 0.05, eta_seconds=(total - done) * 0.05, unit="steps", force=True
        )
    return {"counted": total}


def fail(context: JobContext) -> dict[str, Any]:
    raise ValueError("image 'x.jpg' could not be decoded; re-export it as JPEG")
