"""The README's "Using simgap from Python" example runs as written."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Using simgap from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # it writes runs/python-example
    script = tmp_path / "readme_example.py"
    script.write_text(_example(), encoding="utf-8")
    namespace = runpy.run_path(str(script))
    printed = capsys.readouterr().out
    assert printed.startswith("sim ") and "bench captures" in printed
    chance = 1 / namespace["data"].num_classes
    assert namespace["ideal"] > 3 * chance  # it learned something in simulation
    assert 0 <= namespace["perturbed"] <= 1 and namespace["captured"] > 2 * chance
    assert (tmp_path / "runs" / "python-example" / "manifest.csv").is_file()
