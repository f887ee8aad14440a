"""Packaging: every third-party import is declared, the version has one source, the license and
changelog ship, the classifiers name the Python versions requires-python allows."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

try:
    import tomllib  # Python >= 3.11; simgap itself does not need it
except ModuleNotFoundError:  # Python 3.10: the tests that read pyproject.toml skip
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
OWN = {"harness", "augment", "baselines", "studies", "__future__"}


@pytest.fixture(scope="module")
def project() -> dict:
    if tomllib is None:
        pytest.skip("reading pyproject.toml needs tomllib (Python >= 3.11)")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


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


def test_every_imported_distribution_is_declared(project):
    core = {_name(r) for r in project["dependencies"]}
    extras = {_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    dists = metadata.packages_distributions()
    imports = _imports()
    assert {"torch", "optuna", "mlflow", "scipy", "filelock"} <= set(imports)
    for module, where in imports.items():
        names = {_name(d) for d in dists.get(module, [])}
        assert names, f"{module} (imported by {where}) is not installed"
        assert names & (core | extras), f"{module} (imported by {where}) is not declared"
    # lpips is optional (only harness.metrics' LPIPS, imported when asked for)
    assert "lpips" not in core and "lpips" in {_name(r) for r in
                                               project["optional-dependencies"]["lpips"]}


def test_extras_name_the_drivers_and_tools(project):
    extras = {k: {_name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    assert "psycopg" in extras["postgres"]
    assert "optuna-dashboard" in extras["dashboard"]


def test_version_has_one_source_and_is_printed(project, capsys):
    from harness.cli import main, version

    assert version() == metadata.version("simgap") == project["version"]
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"simgap {project['version']}"


def test_license_and_changelog(project):
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert project["license"]["text"] == "MIT"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{project['version']}]" in changelog


def test_classifiers_match_requires_python(project):
    """requires-python ">=3.m": the classifiers list 3.m and the minors after it without a gap
    (not the interpreter that happens to run the tests), and that interpreter is allowed."""
    match = re.fullmatch(r">=\s*3\.(\d+)", project["requires-python"].strip())
    assert match, f"requires-python {project['requires-python']!r} is not of the form >=3.m"
    low = int(match.group(1))
    minors = sorted(int(m) for c in project["classifiers"]
                    for m in re.findall(r"^Programming Language :: Python :: 3\.(\d+)$", c))
    assert minors and minors[0] == low, f"classifiers {minors} do not start at 3.{low}"
    assert minors == list(range(low, minors[-1] + 1)), f"classifiers 3.x: x in {minors}, a gap"
    assert sys.version_info[:2] >= (3, low)
