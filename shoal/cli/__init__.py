"""The ``shoal`` command line. Each module in COMMAND_MODULES adds its sub-commands.

A module exposes ``register(subparsers, common)``; ``common`` is a parent parser carrying
``--workspace`` so every command accepts it. A command function returns an exit status; errors a
user can act on are raised as ``StoreError``/``CliError`` and printed as one line.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence

from shoal.cli._util import CliError
from shoal.store import StoreError

COMMAND_MODULES = (
    "shoal.cli.core",
    "shoal.cli.analysis_cmds",
    "shoal.cli.objects_cmds",
    "shoal.cli.collections_cmds",
)


WORKSPACE_HELP = "workspace directory (default: $SHOAL_WORKSPACE or ./shoal-workspace)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal",
        description="Understand and improve image datasets through embeddings.",
    )
    parser.add_argument("--workspace", metavar="DIR", default=None, help=WORKSPACE_HELP)
    # After the command too (`shoal import --workspace DIR ...`). Its default is SUPPRESS: a
    # sub-command's default would overwrite a --workspace given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--workspace", metavar="DIR", default=argparse.SUPPRESS, help=WORKSPACE_HELP
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(subparsers, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (StoreError, CliError) as error:
        print(f"shoal: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`shoal ... --json | head`): stop quietly, as other tools do.
        # Point stdout at /dev/null so the interpreter's final flush cannot raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a pipe closed early
    except KeyboardInterrupt:
        print(
            "shoal: interrupted; finished work is kept (embedding resumes where it stopped)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
