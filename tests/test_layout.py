"""The layout the architecture promises (docs/ARCHITECTURE.md), checked from the source.

- No import cycles between project modules, counting imports inside functions too (a
  function-local import is how a cycle hides).
- Layers: data flows harness -> augment -> baselines -> studies; a module never imports a higher
  layer, and command-line modules (``*.cli``) sit on top of everything.
- Project modules import each other at module level (no hidden function-local imports).
- Every module imports in a fresh interpreter, in dependency order.
- No module over 400 lines, no function over 60 lines without a stated reason.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "augment", "baselines", "studies")
LAYER = {"harness": 0, "augment": 1, "baselines": 2, "studies": 3}
CLI_LAYER = 4
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
#: Functions allowed past MAX_FUNCTION_LINES, with the reason.
LONG_FUNCTIONS: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            out[_module_name(path)] = path
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    if module == "harness.cli" or module.endswith(".cli"):
        return CLI_LAYER
    return LAYER[module.split(".")[0]]


def _resolve(name: str) -> str | None:
    """The project module an import names (a module itself, or the package holding a name)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported project module, line, at module level) for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] or [base]
        for name in names:
            target = _resolve(name)
            if target and target != module:
                found.append((target, node.lineno, id(node) in top or _type_only(tree, node)))
    return found


def _type_only(tree: ast.Module, node: ast.AST) -> bool:
    """Imports under ``if TYPE_CHECKING:`` at module level count as module-level."""
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test) and any(
            child is node for child in ast.walk(stmt)
        ):
            return True
    return False


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in edges} for m, edges in GRAPH.items()}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_layers_point_one_way():
    wrong = [
        f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)}) at line {line}"
        for m, edges in GRAPH.items()
        for t, line, _ in edges
        if _layer(t) > _layer(m)
    ]
    assert not wrong, "\n".join(wrong)


def test_project_imports_are_module_level():
    hidden = [
        f"{MODULES[m].relative_to(ROOT)}:{line} imports {t} inside a function"
        for m, edges in GRAPH.items()
        for t, line, top in edges
        if not top
    ]
    assert not hidden, "\n".join(hidden)


def test_every_module_imports_in_dependency_order():
    graph = {m: {t for t, _, _ in edges} for m, edges in GRAPH.items()}
    order = list(TopologicalSorter(graph).static_order())
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run(
        [sys.executable, "-c", code, *order], capture_output=True, text=True, cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_modules_and_functions_stay_small():
    too_long = []
    for module, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                name = f"{module}.{node.name}"
                if length > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}: {length}")
    assert not too_long, "\n".join(too_long)
