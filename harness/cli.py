"""The ``simgap`` command line.

Each package's ``cli`` module exposes ``add_cli(subparsers)`` that registers its commands and
sets ``func`` on its parser; this file only assembles them.  A :class:`SimgapError` is printed
as one line on stderr and the process exits with code 2.

Start-up stays fast: only the module of the command being run is imported (``simgap --help``
and ``simgap --version`` import none of them, so neither torch nor pandas loads); the other
commands appear as stubs carrying the one-line summary of :data:`COMMANDS`.
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

#: command -> (its module, the summary ``simgap --help`` shows); in registration order and equal
#: to what the modules register (tests/test_cli.py checks it).
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("harness.data.cli", "image sources: list them, prepare caches"),
    "captures": ("harness.lab.cli", "capture sets (real or emulated frames)"),
    "capture": ("harness.lab.cli", "capture pool/val/test inputs through the emulated bench"),
    "export-mask": (
        "harness.lab.cli", "write what a lab loads onto its SLM and the inputs to show"
    ),
    "policies": ("augment.cli", "augmentation policies: list, preview"),
    "demo": ("baselines.cli", "train none vs physics, capture on the default bench, fine-tune"),
    "study": ("studies.cli", "run, resume, join and report studies"),
    "tune": ("studies.cli", "tune a policy or method (TPE)"),
}


class HelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to an option's help unless the help states it already or the
    default is None / False (nothing to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is False
            or default == argparse.SUPPRESS
            or (not action.option_strings and action.nargs not in ("?", "*"))
        ):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """Every simgap parser: sub-parsers inherit the class and so the :class:`HelpFormatter`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def version() -> str:
    """The installed distribution's version (pyproject.toml's ``version``)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("simgap")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser(modules: tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    """The parser with the commands of ``modules`` (default: every module) in full and the
    other commands of :data:`COMMAND_MODULES` as stubs (name and summary only)."""
    parser = Parser(
        prog="simgap",
        description="Sim-to-real studies of hybrid optical/digital neural networks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        if modules is None or name in modules:
            importlib.import_module(name).add_cli(sub)
            continue
        for command, (module, summary) in COMMANDS.items():
            if module == name:
                sub.add_parser(command, help=summary)
    return parser


def _modules_for(argv: list[str]) -> tuple[str, ...] | None:
    """The modules ``argv`` needs: none for ``simgap [--help | --version]``, the command's own
    module for a known command, every module otherwise (an unknown or a newly added command)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is None:
        return ()
    return (COMMANDS[command][0],) if command in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = build_parser(_modules_for(argv))
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
