"""Start `shoal serve` (or another Streamlit server) for a test or a benchmark: on 127.0.0.1, its
own process group, stopped afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(
    url: str,
    process: subprocess.Popen,
    timeout: float = 60.0,
    *,
    health: str = "/_stcore/health",
    log_path: Path | None = None,
) -> None:
    """Until ``url + health`` answers 200; the server's exit (with its log's tail) or the
    timeout raise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "" if log_path is None else ":\n" + log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the server at {url} exited with {process.returncode}{tail}")
        try:
            with urllib.request.urlopen(f"{url}{health}", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not become healthy in {timeout:.0f}s")


@contextlib.contextmanager
def shoal_server(
    workspace: Path,
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
    host: str = "127.0.0.1",
    port: int | None = None,
) -> Iterator[str]:
    """`shoal serve` on ``port`` (a free one by default) of ``host``; yields its URL, stops it
    on exit."""
    port = port or free_port()
    command = [sys.executable, "-m", "shoal", "serve", "--workspace", str(workspace)]
    command += ["--address", host, "--port", str(port), *args]
    with serving(command, f"http://{host}:{port}", log_path, env=env) as url:
        yield url


@contextlib.contextmanager
def server_process(
    command: list[str],
    url: str,
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO,
    health: str = "/_stcore/health",
    timeout: float = 60.0,
    stop_timeout: float = 15.0,
) -> Iterator[subprocess.Popen]:
    """Runs ``command`` (a server that will answer at ``url``) in its own process group, its
    output in ``log_path``; yields the process once ``url + health`` answers, stops the whole
    group on exit (SIGTERM, then SIGKILL after ``stop_timeout``)."""
    base_env = {**os.environ, "SHOAL_ACCESS_TOKEN": "", "SHOAL_PUBLIC_URL": ""}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: the CLI and the server it starts
            env={**base_env, **(env or {})},
        )
        try:
            wait_healthy(url, process, timeout, health=health, log_path=log_path)
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextlib.contextmanager
def serving(
    command: list[str], url: str, log_path: Path, *, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """:func:`server_process` of a Streamlit server; yields its URL."""
    with server_process(command, url, log_path, env=env):
        yield url
