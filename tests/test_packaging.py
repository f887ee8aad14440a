"""Packaging: every third-party import is declared, the version has one source, the license and
changelog ship, the classifiers name the Python the tests run on."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[1]
OWN = {"harness", "augment", "baselines", "studies", "__future__"}
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports() -> dict[str, str]:
    """Top-level third-party module -> a file importing it (also imports inside functions)."""
    found = {}
    for package in sorted(OWN - {"__future__"}):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for top in (n.split(".")[0] for n in names):
                    if top not in sys.stdlib_module_names and top not in OWN:
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_imported_distribution_is_declared():
    core = {_name(r) for r in PROJECT["dependencies"]}
    extras = {_name(r) for reqs in PROJECT["optional-dependencies"].values() for r in reqs}
    dists = metadata.packages_distributions()
    imports = _imports()
    assert {"torch", "optuna", "mlflow", "scipy", "filelock"} <= set(imports)
    for module, where in imports.items():
        names = {_name(d) for d in dists.get(module, [])}
        assert names, f"{module} (imported by {where}) is not installed"
        assert names & (core | extras), f"{module} (imported by {where}) is not declared"
    # lpips is optional (only harness.metrics' LPIPS, imported when asked for)
    assert "lpips" not in core and "lpips" in {_name(r) for r in
                                               PROJECT["optional-dependencies"]["lpips"]}


def test_extras_name_the_drivers_and_tools():
    extras = {k: {_name(r) for r in v} for k, v in PROJECT["optional-dependencies"].items()}
    assert "psycopg" in extras["postgres"]
    assert "optuna-dashboard" in extras["dashboard"]


def test_version_has_one_source_and_is_printed(capsys):
    from harness.cli import main, version

    assert version() == metadata.version("simgap") == PROJECT["version"]
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"simgap {PROJECT['version']}"


def test_license_changelog_and_classifiers():
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert PROJECT["license"]["text"] == "MIT"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{PROJECT['version']}]" in changelog
    here = f"Programming Language :: Python :: {sys.version_info.major}.{sys.version_info.minor}"
    assert here in PROJECT["classifiers"]
    low = tuple(int(x) for x in PROJECT["requires-python"].removeprefix(">=").split("."))
    assert sys.version_info[:2] >= low
