"""Job bodies for the runner and app tests, run in real worker processes as
``tests.shoal.jobs.job_tasks:NAME``."""

from __future__ import annotations

import time
from typing import Any

from shoal.jobs import JobContext


def count(context: JobContext) -> dict[str, Any]:
    """Counts to params['total'], one step per params['delay'] seconds, honouring cancellation."""
    total, delay = int(context.params["total"]), float(context.params.get("delay", 0.05))
    for done in range(1, total + 1):
        time.sleep(delay)
        context.check_cancelled()
        context.report(
            done,
            total,
            rate=1 / delay,
            eta_seconds=(total - done) * delay,
            unit="steps",
            force=True,
        )
    return {"counted": total}


def fail(context: JobContext) -> dict[str, Any]:
    raise ValueError("image 'x.jpg' could not be decoded; re-export it as JPEG")
