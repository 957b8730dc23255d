"""Long work: one runner (:mod:`shoal.jobs.runner`) and the built-in job kinds (:mod:`shoal.jobs.tasks`).

Importing this package registers the built-in kinds; the runner itself imports no task.

Example:
    >>> from shoal import jobs                                                    # doctest: +SKIP
    >>> job_id = jobs.submit(Workspace(), "embed", dataset="pets")                # doctest: +SKIP
    >>> jobs.wait(Workspace(), job_id).state                                      # doctest: +SKIP
    'done'
"""

from shoal.jobs import tasks
from shoal.jobs.runner import (
    ACTIVE_STATES,
    FINAL_STATES,
    JOB_KINDS,
    JobCancelled,
    JobContext,
    JobKind,
    JobProgress,
    JobRecord,
    cancel,
    delete_dataset,
    find_active,
    format_seconds,
    get,
    job_kind,
    list_jobs,
    log_path,
    run,
    run_inline,
    submit,
    task,
    wait,
)

__all__ = [
    "ACTIVE_STATES",
    "FINAL_STATES",
    "JOB_KINDS",
    "JobCancelled",
    "JobContext",
    "JobKind",
    "JobProgress",
    "JobRecord",
    "cancel",
    "delete_dataset",
    "find_active",
    "format_seconds",
    "get",
    "job_kind",
    "list_jobs",
    "log_path",
    "run",
    "run_inline",
    "submit",
    "task",
    "tasks",
    "wait",
]
