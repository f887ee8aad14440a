"""The ``simgap`` command line.

Each package's ``cli`` module exposes ``add_cli(subparsers)`` that registers its commands and
sets ``func`` on its parser; this file only assembles them.  A :class:`SimgapError` is printed
as one line on stderr and the process exits with code 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from harness.errors import SimgapError
from harness.runtime import configure_threads, tune_cpu_allocator

# Modules that contribute sub-commands, in the order they appear in ``simgap --help``.
COMMAND_MODULES = (
    "harness.data.cli",
    "harness.lab.cli",
    "augment.cli",
    "baselines.cli",
    "studies.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simgap",
        description="Sim-to-real studies of hybrid optical/digital neural networks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    tune_cpu_allocator()
    configure_threads(getattr(args, "workers", None) or 1)
    try:
        result = args.func(args)
    except SimgapError as exc:
        print(f"simgap: error: {exc}", file=sys.stderr)
        return SimgapError.exit_code
    except KeyboardInterrupt:
        print("simgap: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        print(f"simgap: error: {exc.filename or 'disk'}: no space left on device", file=sys.stderr)
        return SimgapError.exit_code
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
