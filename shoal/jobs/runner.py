"""One runner for every long task: a detached worker process per job, state in the workspace.

A job record (``jobs/<id>.json``) holds state, progress, error and result. The worker rewrites it
atomically as it goes, so a page refresh, a second tab, a teammate or the CLI all read the same
truth. A job is cancelled by a flag file the task polls between batches; a worker that died is
noticed from its pid and reported as failed (resumable tasks continue when run again). A job
whose record cannot be saved at the end (a full disk) still ends with its error in the record,
written in place. Now and then the end of a job sweeps the workspace (:func:`sweep`): what
crashed imports left behind, old query images and old finished job records.

Example:
    >>> job_id = submit(Workspace(), "embed", dataset="pets", params={})     # doctest: +SKIP
    >>> get(Workspace(), job_id).state                                      # doctest: +SKIP
    'running'
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from shoal.registry import Registry
from shoal.store import (
    Dataset,
    DiskFullError,
    StoreError,
    Workspace,
    fsync_directory,
    json_default,
    read_json,
    utc_now,
    write_json,
)

ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("done", "failed", "cancelled")
#: Finished job records (with their logs) older than this are removed by :func:`sweep`.
JOB_RECORD_MAX_AGE = 30 * 24 * 3600.0
#: The end of a job sweeps the workspace at most this often (:func:`sweep_if_due`).
SWEEP_INTERVAL = 3600.0
#: Below this much free space a worker that stopped without a word is said to have hit a full disk.
LOW_DISK_BYTES = 1 << 20


class JobCancelled(Exception):
    """Raised inside a task when the user asked to stop it."""


@dataclass(frozen=True)
class JobProgress:
    done: int = 0
    total: int = 0
    rate: float | None = None  # items per second
    eta_seconds: float | None = None
    unit: str = "items"
    message: str = ""

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def caption(self) -> str:
        """'120 / 355 images · 41.3 images/s · ETA 6s', as the app and the CLI show progress."""
        unit = self.unit
        parts = [
            f"{self.done:,} / {self.total:,} {unit}" if self.total else f"{self.done:,} {unit}"
        ]
        if self.rate:
            parts.append(f"{self.rate:,.1f} {unit}/s")
        if self.total and self.done < self.total:
            parts.append(f"ETA {format_seconds(self.eta_seconds)}")
        return " · ".join(parts)


def format_seconds(seconds: float | None) -> str:
    """'45s', '5m 03s', '1h 02m'; '—' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


@dataclass(frozen=True)
class JobRecord:
    id: str
    kind: str
    dataset: str | None
    params: dict[str, Any]
    state: str = "queued"
    progress: JobProgress = field(default_factory=JobProgress)
    error: str | None = None
    result: dict[str, Any] | None = None
    created_at: str = field(default_factory=utc_now)
    started_at: str | None = None
    finished_at: str | None = None
    pid: int | None = None
    #: The worker's start time as the kernel counts it: with the pid it names one process, so a
    #: pid the system has since given to another process is not mistaken for the worker.
    pid_started: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> JobRecord:
        payload = dict(payload)
        payload["progress"] = JobProgress(**payload.get("progress") or {})
        return cls(**payload)


class JobContext:
    """What a task sees: its parameters, a progress reporter and a cancellation check."""

    def __init__(
        self,
        workspace: Workspace,
        record: JobRecord,
        *,
        min_interval: float = 0.5,
        observer: Callable[[JobProgress], None] | None = None,
    ):
        self.workspace = workspace
        self.record = record
        self.observer = observer
        self._min_interval = min_interval
        self._last_write = 0.0
        self.opened: list[Dataset] = []

    @property
    def params(self) -> dict[str, Any]:
        return self.record.params

    def cancelled(self) -> bool:
        return _cancel_flag(self.workspace, self.record.id).exists()

    def dataset(self) -> Dataset:
        dataset = self.workspace.open(str(self.record.dataset))
        self.opened.append(dataset)
        return dataset

    def report_images(self, update: Any) -> None:
        """Report an ``shoal.embedding.Progress`` (done, total, images_per_second, eta_seconds); stop if cancelled."""
        self.report(
            update.done,
            update.total,
            rate=update.images_per_second,
            eta_seconds=update.eta_seconds,
            unit="images",
        )
        self.check_cancelled()

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise JobCancelled()

    def report(
        self,
        done: int,
        total: int,
        *,
        rate: float | None = None,
        eta_seconds: float | None = None,
        unit: str = "items",
        message: str = "",
        force: bool = False,
    ) -> None:
        progress = JobProgress(done, total, rate, eta_seconds, unit, message)
        if self.observer is not None:
            self.observer(progress)
        now = time.monotonic()
        if not force and done < total and now - self._last_write < self._min_interval:
            return
        self._last_write = now
        self.record = replace(self.record, progress=progress)
        with contextlib.suppress(DiskFullError):  # progress can wait; the work's own writes say
            _save(self.workspace, self.record)


TaskFunction = Callable[[JobContext], dict[str, Any] | None]


@dataclass(frozen=True)
class JobKind:
    """A registered job kind: its body, and the dataclass of its parameters (None: any dict)."""

    function: TaskFunction
    params: type[Any] | None = None

    def complete_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The job's parameters with every default filled in (None means the default), so equal
        requests compare equal."""
        if self.params is None:
            return params
        try:
            return asdict(self.params(**{k: v for k, v in params.items() if v is not None}))
        except TypeError as error:
            names = ", ".join(f.name for f in fields(self.params))
            raise StoreError(f"bad job parameters {params}: {error} (accepted: {names})") from None


JOB_KINDS = Registry[JobKind]("job kind")


def task(kind: str, *, params: type[Any] | None = None) -> Callable[[TaskFunction], TaskFunction]:
    """Register a function as the body of jobs of this kind, with its parameters' dataclass."""

    def register(function: TaskFunction) -> TaskFunction:
        JOB_KINDS.register(kind, JobKind(function, params))
        return function

    return register


def job_kind(kind: str) -> JobKind:
    """A registered kind, or ``package.module:function`` for tasks that live outside Shoal."""
    if kind in JOB_KINDS:
        return JOB_KINDS[kind]
    if ":" in kind:
        module_name, _, attribute = kind.partition(":")
        try:
            return JobKind(getattr(importlib.import_module(module_name), attribute))
        except (ImportError, AttributeError) as error:
            raise StoreError(f"cannot load job task {kind!r}: {error}") from error
    raise StoreError(f"unknown job kind {kind!r}; known: {', '.join(JOB_KINDS.names())}")


# --------------------------------------------------------------------------- records


def _record_path(workspace: Workspace, job_id: str) -> Path:
    if not job_id.isalnum():
        raise StoreError(f"invalid job id {job_id!r}")
    return workspace.jobs_dir / f"{job_id}.json"


def _cancel_flag(workspace: Workspace, job_id: str) -> Path:
    return workspace.jobs_dir / f"{job_id}.cancel"


def log_path(workspace: Workspace, job_id: str) -> Path:
    return workspace.jobs_dir / f"{job_id}.log"


def _save(workspace: Workspace, record: JobRecord) -> None:
    write_json(_record_path(workspace, record.id), record.to_dict())


def _read_record(path: Path) -> JobRecord:
    try:
        return JobRecord.from_dict(read_json(path))
    except (StoreError, TypeError, ValueError, AttributeError) as error:
        raise StoreError(
            f"job record {path} is damaged ({error}); delete it (it only describes a past job)"
        ) from error


def get(workspace: Workspace, job_id: str) -> JobRecord:
    path = _record_path(workspace, job_id)
    if not path.exists():
        raise StoreError(f"no job {job_id!r} in workspace {workspace.root}")
    record = _read_record(path)
    if record.active and record.pid and not _alive(record.pid, record.pid_started):
        # Re-read: the worker may have finished between our read and the liveness check.
        record = _read_record(path)
        if record.active:
            started = record.state == "running"
            record = replace(
                record,
                state="failed",
                finished_at=utc_now(),
                error=(
                    "the worker process stopped unexpectedly (killed or out of memory)"
                    + _disk_hint(workspace)
                    + "; start the job again — finished work it saved (embedding batches, "
                    "analysis steps) is reused"
                    if started
                    else "the worker process stopped before the job started"
                    + _disk_hint(workspace)
                    + "; start it again"
                ),
            )
            with contextlib.suppress(StoreError, OSError):  # a reader on a full disk still reads
                _save(workspace, record)
    return record


def _disk_hint(workspace: Workspace) -> str:
    """', and the workspace's disk is full (… free)' when it nearly is, else ''."""
    try:
        free = shutil.disk_usage(workspace.root).free
    except OSError:
        return ""
    return (
        f", and the workspace's disk is full ({free:,} bytes free)" if free < LOW_DISK_BYTES else ""
    )


def list_jobs(
    workspace: Workspace, *, dataset: str | None = None, kind: str | None = None
) -> list[JobRecord]:
    if not workspace.jobs_dir.exists():
        return []
    records = []
    for path in workspace.jobs_dir.glob("*.json"):
        try:
            record = get(workspace, path.stem)
        except (StoreError, json.JSONDecodeError, TypeError):
            continue
        if (dataset is None or record.dataset == dataset) and (kind is None or record.kind == kind):
            records.append(record)
    return sorted(records, key=lambda r: r.created_at, reverse=True)


def find_active(
    workspace: Workspace, kind: str, *, dataset: str | None, params: dict[str, Any]
) -> JobRecord | None:
    """The queued or running job of ``kind`` on ``dataset`` with these parameters (defaults
    filled in, so ``{}`` finds a job submitted with every default spelt out), or None."""
    params = job_kind(kind).complete_params(json.loads(json.dumps(params)))
    for record in list_jobs(workspace, dataset=dataset, kind=kind):
        if record.active and record.params == params:
            return record
    return None


# --------------------------------------------------------------------------- running


def submit(
    workspace: Workspace,
    kind: str,
    *,
    dataset: str | None = None,
    params: dict[str, Any] | None = None,
) -> str:
    """Start a job in a detached worker process and return its id; an identical active job is reused."""
    record = _new_record(kind, dataset, params)
    existing = find_active(workspace, kind, dataset=dataset, params=record.params)
    if existing is not None:
        return existing.id
    job_id = record.id
    _save(workspace, record)
    with open(log_path(workspace, job_id), "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "shoal.jobs", str(workspace.root), job_id],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the Streamlit session that started it
            close_fds=True,
        )
    # Reap the worker when it exits, so a long-lived server does not collect zombies.
    threading.Thread(target=process.wait, daemon=True).start()
    _save(workspace, replace(record, pid=process.pid, pid_started=_process_start(process.pid)))
    return job_id


def run(
    workspace: Workspace,
    job_id: str,
    *,
    observer: Callable[[JobProgress], None] | None = None,
    log_traceback: bool = True,
) -> JobRecord:
    """Run a job in this process (the worker's entry point; also usable inline from the CLI)."""
    record = replace(
        get(workspace, job_id),
        state="running",
        started_at=utc_now(),
        pid=os.getpid(),
        pid_started=_process_start(os.getpid()),
    )
    _save(workspace, record)
    context = JobContext(workspace, record, observer=observer)
    try:
        if context.cancelled():
            raise JobCancelled()
        result = job_kind(record.kind).function(context)
        final = replace(context.record, state="done", result=result or {}, finished_at=utc_now())
    except JobCancelled:
        final = replace(context.record, state="cancelled", finished_at=utc_now())
    except Exception as error:  # noqa: BLE001 - every failure is recorded for the user
        if log_traceback and not isinstance(error, StoreError):
            traceback.print_exc()  # into the job's log file, for whoever debugs the worker
        message = _dataset_gone(context) or str(error) or type(error).__name__
        final = replace(context.record, state="failed", error=message, finished_at=utc_now())
    _save_final(workspace, final)
    sweep_if_due(workspace)
    return final


def _dataset_gone(context: JobContext) -> str | None:
    """Why the job failed when its dataset was deleted under it (a missing image, a store
    refusal...): the deletion, said plainly; None when its datasets are all still there."""
    for dataset in context.opened:
        try:
            dataset.check_current()
        except StoreError as gone:
            return str(gone)
    return None


def _save_final(workspace: Workspace, record: JobRecord) -> None:
    """Save a job's final record. On a full disk there may be no room for the temporary copy
    of an atomic write: then the record is overwritten in place (the job's error in it), since
    a record left 'running' would be reported as a crash."""
    try:
        _save(workspace, record)
    except (DiskFullError, OSError) as error:
        path = _record_path(workspace, record.id)
        payload = json.dumps(record.to_dict(), default=json_default).encode()
        try:
            with open(path, "r+b") as handle:
                handle.write(payload)
                handle.truncate()
                handle.flush()
                os.fsync(handle.fileno())
        except OSError:
            print(f"cannot save the record of job {record.id}: {error}", file=sys.stderr)
            raise error from None


def run_inline(
    workspace: Workspace,
    kind: str,
    *,
    dataset: str | None = None,
    params: dict[str, Any] | None = None,
    observer: Callable[[JobProgress], None] | None = None,
) -> JobRecord:
    """Run a job in this process, recorded like any other so the app shows it too (the CLI's path)."""
    record = replace(
        _new_record(kind, dataset, params),
        pid=os.getpid(),
        pid_started=_process_start(os.getpid()),
    )
    _save(workspace, record)
    return run(workspace, record.id, observer=observer, log_traceback=False)


def _new_record(kind: str, dataset: str | None, params: dict[str, Any] | None) -> JobRecord:
    """A queued record with a fresh id and the kind's complete parameters (JSON-safe)."""
    params = job_kind(kind).complete_params(json.loads(json.dumps(params or {})))
    job_id = time.strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:8]
    return JobRecord(id=job_id, kind=kind, dataset=dataset, params=params)


def cancel(workspace: Workspace, job_id: str, *, grace_seconds: float = 10.0) -> JobRecord:
    """Ask a job to stop; it stops at its next checkpoint (its finished work is kept)."""
    record = get(workspace, job_id)
    if not record.active:
        return record
    _cancel_flag(workspace, job_id).touch()
    if record.state == "queued" and record.pid is None:
        record = replace(record, state="cancelled", finished_at=utc_now())
        _save(workspace, record)
        return record
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        record = get(workspace, job_id)
        if not record.active:
            return record
        time.sleep(0.2)
    if record.pid and _alive(record.pid, record.pid_started):
        with contextlib.suppress(ProcessLookupError):  # it may exit between the check and the kill
            os.killpg(record.pid, signal.SIGTERM)
    record = replace(get(workspace, job_id), state="cancelled", finished_at=utc_now())
    _save(workspace, record)
    return record


def delete_dataset(
    workspace: Workspace, name: str, *, grace_seconds: float = 10.0
) -> list[JobRecord]:
    """Stop the dataset's queued and running jobs (as ``cancel``), then delete it; the stopped
    jobs' records. A job that still writes afterwards is refused by the store (see
    ``Dataset.check_current``)."""
    workspace.open(name)  # a clear error for an unknown name before anything is stopped
    stopped = [
        cancel(workspace, record.id, grace_seconds=grace_seconds)
        for record in list_jobs(workspace, dataset=name)
        if record.active
    ]
    workspace.delete(name)
    return stopped


def sweep(
    workspace: Workspace, *, job_max_age: float = JOB_RECORD_MAX_AGE, **workspace_ages: float
) -> list[Path]:
    """Remove finished job records (and their logs and flags) older than ``job_max_age``
    seconds, damaged ones as old, then sweep the workspace (``Workspace.sweep``, which takes
    ``max_age`` and ``query_max_age``); returns what was removed. Active jobs are never touched.

    >>> sweep(Workspace(), job_max_age=7 * 24 * 3600)                            # doctest: +SKIP
    """
    removed = workspace.sweep(**workspace_ages)
    if not workspace.jobs_dir.exists():
        return removed
    cutoff = time.time() - job_max_age
    for path in sorted(workspace.jobs_dir.iterdir()):
        if not path.exists():  # went with its record, earlier in this loop
            continue
        if path.suffix == ".json":
            try:
                record = get(workspace, path.stem)
            except StoreError:  # damaged: judged by the file's age
                record = None
            if record is not None and record.active:
                continue
            if _finished_at(record, path) >= cutoff:
                continue
        elif path.suffix not in (".log", ".cancel") or path.with_suffix(".json").exists():
            continue  # a record's log or flag goes with its record
        elif path.stat().st_mtime >= cutoff:
            continue
        for file in (path, path.with_suffix(".log"), path.with_suffix(".cancel")):
            if file.exists():
                file.unlink(missing_ok=True)
                removed.append(file)
    return removed


def _finished_at(record: JobRecord | None, path: Path) -> float:
    """When the job ended (or was created), in seconds since the epoch."""
    stamp = None if record is None else record.finished_at or record.created_at
    try:
        return datetime.fromisoformat(str(stamp)).timestamp()
    except ValueError:
        return path.stat().st_mtime


def sweep_if_due(workspace: Workspace) -> None:
    """Sweep the workspace when the last sweep is more than SWEEP_INTERVAL ago; never raises
    (it runs at the end of every job, which it must not fail)."""
    marker = workspace.root / ".cache" / "last-sweep"
    try:
        if marker.exists() and time.time() - marker.stat().st_mtime < SWEEP_INTERVAL:
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        fsync_directory(marker.parent)
        sweep(workspace)
    except (OSError, StoreError) as error:
        print(f"sweeping {workspace.root} failed: {error}", file=sys.stderr)


def wait(
    workspace: Workspace, job_id: str, *, timeout: float = 3600.0, poll: float = 0.5
) -> JobRecord:
    deadline = time.monotonic() + timeout
    while True:
        record = get(workspace, job_id)
        if not record.active or time.monotonic() > deadline:
            return record
        time.sleep(poll)


def _alive(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` runs, and is the one that started at ``started`` (if known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat is None:  # no /proc (not Linux): the pid is all we know
        return True
    # A zombie (finished child not yet reaped) is not alive for our purposes.
    return stat[0] != "Z" and (started is None or stat[19] == started)


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (/proc), None if unknown."""
    stat = _proc_stat(pid)
    return None if stat is None else stat[19]


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) > 19 else None
