"""``simgap policies list / preview`` (augment.cli)."""

from __future__ import annotations

import argparse

import pytest
from PIL import Image

from augment.cli import add_cli
from augment.policy import available_policies
from harness.errors import SimgapError

NAMES = available_policies()


def run_cli(argv):
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_list_prints_every_policy_and_the_range_table(capsys):
    assert run_cli(["policies", "list", "--size", "16"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in NAMES)
    assert "camera_shift_px" in out and "sigma_px" in out


def test_cli_preview_writes_a_grid_of_ideal_and_drawn_frames(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMGAP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "grid.png"
    argv = ["policies", "preview", "physics", "--out", str(out), "--size", "16", "--inputs", "2",
            "--draws", "3", "--channels", "2", "--strength", "1"]
    assert run_cli(argv) == 0
    width, height = Image.open(out).size
    assert width > height > 0  # 5 columns (input, ideal, 3 draws) x 4 rows
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(SimgapError, match="^--out"):
        run_cli(["policies", "preview", "physics", "--out", str(tmp_path / "no" / "g.png")])
    with pytest.raises(SimgapError, match="^strengths.defocus"):
        run_cli(["policies", "preview", "physics", "--out", str(out), "--strength", "2"])
