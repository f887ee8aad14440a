"""The ``simgap`` command line as a whole: fast start-up, help texts with defaults, hidden
internal options, one-line errors."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from harness import cli
from harness.lab.cli import MASK_HELP

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "albumentations", "pandas", "pydantic", "mlflow", "optuna", "numpy")


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _walk(parser: argparse.ArgumentParser, path: str = "simgap"):
    """(command path, parser) of every parser and sub-parser."""
    yield path, parser
    sub = _subparsers(parser)
    for name, child in (sub.choices.items() if sub else ()):
        yield from _walk(child, f"{path} {name}")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, check=False)  # fmt: skip


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_import_no_heavy_library(flag):
    code = (
        "import sys\nfrom harness.cli import main\n"
        f"try:\n    main([{flag!r}])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout  # fmt: skip
    assert out.strip().splitlines()[-1] == "[]", out


def test_version_is_the_distribution_version():
    proc = _run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"simgap {version('simgap')}"


def test_help_lists_every_command_with_its_summary():
    proc = _run("--help")
    assert proc.returncode == 0
    for command in cli.COMMANDS:
        assert f"    {command}" in proc.stdout
    assert "--version" in proc.stdout


def test_the_command_table_is_what_the_modules_register():
    full = _subparsers(cli.build_parser())
    registered = [(a.dest, a.help) for a in full._choices_actions]
    assert registered == [(name, summary) for name, (_, summary) in cli.COMMANDS.items()]
    for name, (module, _) in cli.COMMANDS.items():
        lazy = _subparsers(cli.build_parser((module,)))
        assert lazy.choices[name].format_help() == full.choices[name].format_help()


def test_every_option_has_a_help_text_and_internal_ones_are_hidden():
    missing, hidden = [], []
    for path, parser in _walk(cli.build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = "/".join(action.option_strings) or action.dest
            if action.help == argparse.SUPPRESS:
                hidden.append(f"{path} {name}")
            elif not (action.help or "").strip():
                missing.append(f"{path} {name}")
    assert not missing, "options without help: " + ", ".join(missing)
    assert hidden == ["simgap study worker --parent-pid"]
    worker = _subparsers(_subparsers(cli.build_parser()).choices["study"]).choices["worker"]
    assert "--parent-pid" not in worker.format_help()


def test_help_shows_defaults():
    commands = _subparsers(cli.build_parser()).choices
    capture = " ".join(commands["capture"].format_help().split())
    assert "(default: 256)" in capture and "(default: 0)" in capture  # --batch-size, --mask-seed
    assert "--quiet no progress bar" in capture  # no "(default: False)" noise
    assert "(default: 20)" in " ".join(commands["tune"].format_help().split())


def test_one_style_for_the_mask_option():
    commands = _subparsers(cli.build_parser()).choices
    policies = _subparsers(commands["policies"]).choices
    for parser in (commands["capture"], commands["export-mask"], commands["demo"],
                   policies["preview"]):  # fmt: skip
        mask = next(a for a in parser._actions if a.dest == "mask")
        assert mask.option_strings == ["--mask"] and mask.help == MASK_HELP


@pytest.mark.parametrize(
    "argv, message",
    [
        (["policies", "list", "--size", "2"], "--size"),
        (["policies", "preview", "physics", "--out", "{tmp}/p.png", "--size", "3"], "--size"),
    ],
)
def test_policy_commands_give_one_line_errors(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("simgap: error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "p.png").exists()
