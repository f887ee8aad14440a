"""``simgap capture`` honours an exported inputs.csv; ``--data-root`` must exist."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harness import cli
from harness.lab.validate import read_capture_set

SIZES = ["--source", "digits", "--size", "16", "--sim-train", "200", "--sim-val", "50",
         "--sim-test", "50", "--pool", "20", "--val", "10", "--test", "10"]  # fmt: skip


def run(monkeypatch, argv) -> int:
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("harness.data.cli", "harness.lab.cli"))
    return cli.main([str(a) for a in argv])


@pytest.fixture
def export(tmp_path, monkeypatch):
    folder = tmp_path / "export"
    argv = ["export-mask", "--mask", "edge", "--channels", "1", "--out", folder, *SIZES]
    assert run(monkeypatch, argv) == 0
    return folder


def test_capture_shows_exactly_what_inputs_csv_lists(tmp_path, monkeypatch, export):
    listed = pd.read_csv(export / "inputs.csv")
    kept = listed.drop(index=[0, 3, 7]).sample(frac=1.0, random_state=1)  # edited by the lab
    kept["capture_index"] = np.arange(100, 100 + len(kept))[::-1]
    kept.to_csv(export / "inputs.csv", index=False)
    out = tmp_path / "caps"
    # another --split-seed: the split options would pick other inputs; the file wins
    argv = ["capture", "--mask", export, "--out", out, "--quiet", *SIZES, "--split-seed", "5"]
    assert run(monkeypatch, argv) == 0
    got = read_capture_set(out)
    by_id = dict(zip(got.input_ids.tolist(), got.splits.tolist()))
    assert by_id == dict(zip(kept["input_id"], kept["split"]))
    manifest = pd.read_csv(out / "manifest.csv")
    want = dict(zip(kept["input_id"], kept["capture_index"]))
    assert all(want[i] == c for i, c in zip(manifest["input_id"], manifest["capture_id"]))


def test_an_inputs_csv_of_another_source_is_one_line(tmp_path, monkeypatch, capsys, export):
    listed = pd.read_csv(export / "inputs.csv")
    listed.loc[0, "label"] = (listed.loc[0, "label"] + 1) % 10
    listed.to_csv(export / "inputs.csv", index=False)
    argv = ["capture", "--mask", export, "--out", tmp_path / "caps", "--quiet", *SIZES]
    assert run(monkeypatch, argv) == 2
    err = capsys.readouterr().err.strip()
    assert "inputs.csv: its labels are not those of digits" in err and "\n" not in err
    assert not (tmp_path / "caps").exists()


def test_a_data_root_that_is_not_there_is_an_error(tmp_path, monkeypatch, capsys):
    argv = ["capture", "--mask", "edge", "--out", tmp_path / "caps", "--source", "fashion-mnist",
            "--data-root", tmp_path / "nowhere", "--quiet"]  # fmt: skip
    assert run(monkeypatch, argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"data root {tmp_path / 'nowhere'} is not a folder" in err and "\n" not in err
