"""The fault-injection harness (helpers, not tests): real photos in class folders, a disk small
enough to fill, and freezing (SIGSTOP) or killing real processes at a point seen on disk."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from shoal import jobs
from shoal.store import Workspace

REPO = Path(__file__).resolve().parents[2]
SAMPLE_IMAGES = REPO / "sample_data" / "tuxpaint"


def copy_images(target: Path, count: int, *, classes: tuple[str, ...] = ()) -> Path:
    """``count`` real sample photos under ``target/<class>/``, in a fixed order."""
    photos = sorted(SAMPLE_IMAGES.glob("*/*/*.jpg"))
    if classes:
        photos = [p for p in photos if p.parent.name in classes]
    assert len(photos) >= count, f"the sample data has only {len(photos)} photos"
    for photo in photos[:count]:
        folder = target / photo.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, folder / f"{photo.parent.parent.name}-{photo.name}")
    return target


def shoal_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "shoal", *args]


class SmallDisk:
    """A filesystem of its own, small enough to fill: a tmpfs mount when this process may mount
    one (root in a container). Where it may not, writers started with :meth:`run` get a file
    size limit instead (RLIMIT_FSIZE), so a write still fails part-way, with EFBIG."""

    def __init__(self, root: Path, *, mounted: bool) -> None:
        self.root = root
        self.mounted = mounted
        self.limit: int | None = None
        self._filler = root / "filler.bin"

    @contextlib.contextmanager
    def full(self, *, leave: int = 0, limit: int = 4096) -> Iterator[None]:
        """The disk filled up but for about ``leave`` bytes (whole 4 KiB pages) in the block;
        the space comes back after it. Without a tmpfs, commands run by :meth:`run` in the
        block may write files of at most ``limit`` bytes instead."""
        if self.mounted:
            with open(self._filler, "ab", buffering=0) as handle:
                for block in (1 << 20, 4096):  # MiBs, then the last partial MiB page by page
                    with contextlib.suppress(OSError):
                        while True:
                            handle.write(b"\0" * block)
            os.truncate(self._filler, max(0, self._filler.stat().st_size - leave))
        else:
            self.limit = limit
        try:
            yield
        finally:
            self._filler.unlink(missing_ok=True)
            self.limit = None

    def run(self, command: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
        """Run ``command`` to the end, under the file size limit when there is no tmpfs."""
        limit = self.limit

        def limited() -> None:
            if limit is not None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        return subprocess.run(
            command, capture_output=True, text=True, timeout=300, preexec_fn=limited, **options
        )


def mount_tmpfs(path: Path, size: str) -> bool:
    """Mount a tmpfs of ``size`` at ``path``; False where this process may not mount one."""
    path.mkdir(parents=True, exist_ok=True)
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    result = subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size={size}",
            f"shoal-faults-{uuid.uuid4().hex[:6]}",
            path,
        ],
        capture_output=True,
    )
    return result.returncode == 0


def wait_for(predicate: Callable[[], bool], *, timeout: float = 120.0, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the process"
        time.sleep(poll)


def freeze_when(
    pid: int,
    predicate: Callable[[], bool],
    *,
    still_running: Callable[[], bool],
    timeout: float = 180.0,
    step: float = 0.01,
) -> None:
    """Leave ``pid`` frozen (SIGSTOP) at the first point where ``predicate()`` holds, for the
    test to look at the disk, then kill or continue it.

    The process runs in steps of ``step`` seconds and ``predicate`` is checked while it stands
    still, so it is caught within one step of that point however fast the machine is (a batch
    of images takes longer than a step), never after it has finished.
    """
    deadline = time.monotonic() + timeout
    _stop(pid)
    while not predicate():
        assert still_running(), "the process ended before the point it was to be stopped at"
        assert time.monotonic() < deadline, "timed out waiting for the process"
        os.kill(pid, signal.SIGCONT)
        time.sleep(step)
        _stop(pid)


def _stop(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until it stands still (or has exited)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)
    while True:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                state = handle.read().rsplit(") ", 1)[1][0]
        except FileNotFoundError:
            return
        if state in "TtZX":
            return
        time.sleep(0.0005)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)  # also ends a stopped process


def resume(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


def dead(pid: int) -> bool:
    """Whether ``pid`` has exited with all its threads, so the kernel has closed its files and
    released its locks (a zombie leader may still wait for its other threads to finish)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            zombie = handle.read().rsplit(") ", 1)[1].startswith("Z")
        return zombie and len(os.listdir(f"/proc/{pid}/task")) <= 1
    except FileNotFoundError:
        return True


def worker_pid(workspace: Workspace, job_id: str) -> int:
    """The pid of the worker running ``job_id`` (set once the worker marks it running)."""
    wait_for(lambda: jobs.get(workspace, job_id).state == "running", timeout=120)
    pid = jobs.get(workspace, job_id).pid
    assert pid is not None
    return pid


def freeze_job_when(
    workspace: Workspace, job_id: str, predicate: Callable[[], bool], *, timeout: float = 180.0
) -> int:
    """Freeze the worker of ``job_id`` when ``predicate()`` holds; its pid."""
    pid = worker_pid(workspace, job_id)
    freeze_when(
        pid,
        predicate,
        still_running=lambda: jobs.get(workspace, job_id).state == "running" and not dead(pid),
        timeout=timeout,
    )
    return pid


def batch_files(partial: Path) -> list[Path]:
    return sorted(partial.glob("batch-*.npy"))


def job_progress_started(workspace: Workspace, job_id: str) -> Callable[[], bool]:
    """True once the job has reported progress with a total (its model is loaded, work begun)."""
    return lambda: jobs.get(workspace, job_id).progress.total > 0
