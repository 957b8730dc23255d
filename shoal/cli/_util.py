"""Shared helpers for CLI commands: workspace, JSON output, progress lines."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from shoal import jobs
from shoal.jobs import JobProgress, format_seconds
from shoal.store import Workspace, json_default


class CliError(Exception):
    """A bad invocation the user can fix; printed as one line."""


def add_command(
    subparsers: Any, common: argparse.ArgumentParser, name: str, help_text: str, func: Any
) -> argparse.ArgumentParser:
    """A sub-command whose help is ``help_text``, taking the common options (``--workspace``)."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text, parents=[common])
    parser.set_defaults(func=func)
    return parser


def print_counts(title: str, counts: dict[str, int] | None) -> None:
    """``  title: a 3, b 5`` for a non-empty count table."""
    if counts:
        print(f"  {title}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))


def print_items(verb: str, items: list[dict[str, Any]] | None, *, noun: str) -> None:
    """Every rejected (or adjusted) file of an import report, with its reason."""
    if items:
        print(f"{verb} {len(items):,} {noun}(s):")
        for item in items:
            print(f"  {item['file']}: {item['reason']}")


def workspace(args: argparse.Namespace) -> Workspace:
    return Workspace(args.workspace)


def print_json(payload: Any) -> None:
    json.dump(payload, sys.stdout, indent=2, default=json_default, allow_nan=False)
    sys.stdout.write("\n")


class ProgressLine:
    """Progress on stderr: one rewritten line on a terminal, a line every few seconds otherwise."""

    def __init__(self, label: str, *, unit: str = "items", every: float = 5.0):
        self.label = label
        self.unit = unit
        self.every = every
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def __call__(
        self, done: int, total: int, rate: float | None = None, eta: float | None = None
    ) -> None:
        now = time.monotonic()
        final = done >= total
        if not final and now - self._last < (0.2 if self._tty else self.every):
            return
        self._last = now
        parts = [f"{self.label}: {done:,}/{total:,} {self.unit}"]
        if total:
            parts.append(f"({100 * done / total:.0f}%)")
        if rate:
            parts.append(f"{rate:,.1f} {self.unit}/s")
        if eta is not None and not final:
            parts.append(f"ETA {format_seconds(eta)}")
        line = " ".join(parts)
        if self._tty:
            sys.stderr.write("\r" + line.ljust(78) + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def observe(self, progress: JobProgress) -> None:
        """A job observer: ``jobs.run_inline(..., observer=line.observe)``."""
        self(progress.done, progress.total, progress.rate, progress.eta_seconds)


def run_job(
    args: argparse.Namespace,
    kind: str,
    params: dict[str, Any],
    *,
    label: str,
    what: str,
    unit: str = "images",
) -> dict[str, Any]:
    """Run a job on the dataset ``args.name`` in this process, with a progress line; its result.

    The job is recorded like any other, so the app's Jobs page shows it too. ``what`` names the
    work in the error when it does not finish ("embedding failed").
    """
    ws = workspace(args)
    ws.open(args.name)
    record = jobs.run_inline(
        ws, kind, dataset=args.name, params=params, observer=ProgressLine(label, unit=unit).observe
    )
    if record.state != "done":
        raise CliError(record.error or f"{what} {record.state}")
    return record.result or {}
