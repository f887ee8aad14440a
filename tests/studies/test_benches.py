"""Studies on the three bench kinds: an exchange bench answered by a separate lab process, a
driver bench, and the config's ``bench:`` block."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from harness import cli
from harness.errors import SimgapError
from harness.lab.benches import Emulated
from harness.lab.exchange import answer_request
from harness.optics import OpticsConfig
from studies import captures, cells
from studies.benches import BenchConfig
from studies.cache import ArtifactCache
from studies.config import parse_config
from studies.worker import run_study
from tests.studies.tiny import TINY

SMALL = {**TINY, "seeds": [0], "fractions": [0, 1.0], "methods": ["finetune-head"],
         "training": {**TINY["training"], "epochs": 2}}
COMPARED = ["real_test_acc", "sim_real_test_acc", "gap", "n_real_labels", "feature_mmd2"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path_factory, monkeypatch):
    """One intra-op thread in this process (the studies) and in the lab process."""
    monkeypatch.setenv("SIMGAP_THREADS", "1")
    cache = tmp_path_factory.getbasetemp() / "simgap-cache"
    return {**os.environ, "SIMGAP_CACHE": str(cache), "SIMGAP_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _simgap(capsys, args, code=0) -> str:
    """``simgap ARGS`` in this process; its stdout."""
    assert cli.main([str(a) for a in args]) == code, capsys.readouterr()
    return capsys.readouterr().out


def _config(tmp_path, name, bench):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "name": name, "bench": bench}))
    return path


def _status(capsys, out) -> tuple[dict, str]:
    text = _simgap(capsys, ["study", "status", out])
    line = next(x for x in text.splitlines() if x.startswith("cells: "))
    return {k: int(v) for k, v in (p.rsplit(" ", 1) for p in line[7:].split(", "))}, text


@pytest.mark.slow
def test_exchange_study_waits_for_the_lab_then_equals_the_emulated_study(tmp_path, env, capsys):
    out = tmp_path / "lab-study"
    cfg = _config(tmp_path, "lab", {"kind": "exchange", "seeds": [0]})
    text = _simgap(capsys, ["study", "run", cfg, "--out", out], code=3)
    assert "4 cell(s) wait for captures (2 capture request(s))" in text
    counts, text = _status(capsys, out)
    assert counts == {"complete": 0, "running": 0, "waiting-for-captures": 4, "queued": 0,
                      "failed": 0}  # fmt: skip
    requests = sorted((out / "exchange" / "requests").iterdir())
    assert len(requests) == 2 and str(requests[0]) in text

    # a corrupt answer (one 8-bit frame) is rejected, naming the file; nothing runs
    bad = answer_request(requests[0], Emulated(OpticsConfig(n=8), 1234))
    frame = min((bad / "frames" / "test").iterdir())
    Image.fromarray((np.asarray(Image.open(frame)) // 16).astype(np.uint8)).save(frame)
    text = _simgap(capsys, ["study", "run", cfg, "--out", out], code=3)
    assert f"last answer rejected: {frame}: 8-bit image" in text
    assert _status(capsys, out)[0]["waiting-for-captures"] == 4
    shutil.rmtree(bad)

    # the lab: another process, a bench seed the study does not know
    lab = subprocess.run([sys.executable, "-m", "tests.studies.lab_script", out / "exchange",
                          "1234", "--expect", "2", "--timeout", "60"], check=False, env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert lab.returncode == 0, lab.stderr[-2000:]
    _simgap(capsys, ["study", "run", cfg, "--out", out])
    assert _status(capsys, out)[0]["complete"] == 4

    ref = tmp_path / "emulated-study"
    _simgap(capsys, ["study", "run", _config(tmp_path, "lab", {"seeds": [1234]}), "--out", ref])
    got, want = (pd.read_csv(d / "report" / "cells.csv").sort_values(["policy", "method",
                 "fraction"]).reset_index(drop=True) for d in (out, ref))  # fmt: skip
    assert got["bench"].tolist() == [0] * 4 and want["bench"].tolist() == [1234] * 4
    pd.testing.assert_frame_equal(got[COMPARED], want[COMPARED])
    curves = [pd.read_csv(d / "report" / "tables" / "fraction_curves.csv") for d in (out, ref)]
    pd.testing.assert_frame_equal(*curves)


class LabDriver:
    """A driver bench for the test: frames of an emulated bench (seed 50 + bench id), dark
    frames, no flat field; every capture call saved to ``log``."""

    def __init__(self, optics, bench, log):
        self.bench, self.log = Emulated(optics, 50 + bench, "mild"), Path(log)

    def capture(self, masks, images, ids):
        calls = len(list(self.log.glob("*.pt")))
        torch.save({"masks": masks, "images": images, "ids": ids}, self.log / f"{calls}.pt")
        return self.bench.capture(masks, images, ids)

    def dark(self):
        return self.bench.dark()


@pytest.mark.slow
def test_driver_bench_receives_exactly_the_masks_and_inputs_of_the_request(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("SIMGAP_THREADS", "1")
    (tmp_path / "log").mkdir()
    bench = {"kind": "driver", "driver": f"{__name__}:LabDriver", "seeds": [2],
             "options": {"log": str(tmp_path / "log")}}  # fmt: skip
    config = parse_config({**SMALL, "bench": bench})
    summary = run_study(config, tmp_path / "study", report=False)
    assert summary["complete"] == summary["cells"] == 4
    calls = [torch.load(p, weights_only=True) for p in sorted((tmp_path / "log").iterdir())]
    assert len(calls) == 2  # one capture set per sim model, captured once
    cache = ArtifactCache(tmp_path / "study" / "cache")
    for policy in ("none", "physics"):
        model, _, _ = cells.sim_model(config, cache, policy, 0)  # cached: not trained again
        asked = captures.capture_request(config, cells.study_data(config), model.encoder.phase,
                                         {})  # fmt: skip
        call = next(c for c in calls if torch.equal(c["masks"], asked.masks))
        assert torch.equal(call["ids"], asked.ids) and torch.equal(call["images"], asked.images)
        folder = cells.capture_set(config, cache, policy, 0, 2)
        info = json.loads((folder / "bench.json").read_text())
        assert list(info["capture"]["calibration"]) == ["dark"]
        assert cells.real_splits(config, folder).calibration["dark"].shape == (8, 8, 8)


def test_bench_block_defaults_keep_old_configs_and_hashes():
    assert BenchConfig().model_dump() == {"seeds": [0], "preset": "typical"}
    plain = parse_config({**TINY, "bench": {"seeds": [0], "preset": "typical"}})
    spelled = parse_config({**TINY, "bench": {"kind": "emulated", "seeds": [0],
                                              "calibration": {"dark": 8, "flat": 8}}})
    assert plain.hash() == spelled.hash() and plain.bench.label == "emulated:typical"


@pytest.mark.parametrize("bench, message", [
    ({"kind": "driver"}, "bench: driver: name the bench class"),
    ({"kind": "exchange", "driver": "x:y"}, "only for kind driver"),
    ({"folder": "lab"}, "only for kind exchange"),
    ({"kind": "lab"}, "bench.kind"),
    ({"calibration": {"dark": -1}}, "bench.calibration"),
])  # fmt: skip
def test_a_bad_bench_block_is_one_line(bench, message):
    with pytest.raises(SimgapError, match=message):
        parse_config({**TINY, "bench": bench}, "cfg.yaml")


def test_a_driver_that_does_not_load_is_refused_before_anything_runs():
    from studies.config import validate_components

    config = parse_config({**TINY, "bench": {"kind": "driver", "driver": "nope_mod_q:Cam"}})
    with pytest.raises(SimgapError, match="cfg.yaml: bench.driver: 'nope_mod_q:Cam' is neither"):
        validate_components(config, "cfg.yaml")


def test_exchange_folder_is_relative_to_the_study(tmp_path):
    config = parse_config({**TINY, "bench": {"kind": "exchange", "folder": "lab"}})
    assert captures.exchange_folder(config, tmp_path) == tmp_path / "lab"
    with pytest.raises(SimgapError, match="bench.folder: a worker joining by storage URL"):
        captures.exchange_folder(config, None)


@pytest.mark.slow
def test_a_study_on_two_bench_kinds_reports_each(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMGAP_THREADS", "1")
    bench = {"seeds": [0], "preset": "typical", "also": [{"preset": "unmodelled", "seeds": [1]}]}
    config = parse_config({**SMALL, "policies": ["none"], "bench": bench})
    summary = run_study(config, tmp_path / "study")
    assert summary["complete"] == summary["cells"] == 4  # 2 cells x 2 benches
    report = tmp_path / "study" / "report"
    df = pd.read_csv(report / "cells.csv")
    assert dict(zip(df["bench"], df["bench_label"])) == {0: "emulated:typical",
                                                         1: "emulated:unmodelled"}
    text = (report / "report.md").read_text()
    assert "### bench `emulated:typical`" in text and "### bench `emulated:unmodelled`" in text
    assert (report / "tables" / "zero_shot@emulated_unmodelled.csv").is_file()
    folder = cells.capture_set(config, ArtifactCache(tmp_path / "study" / "cache"), "none", 0, 1)
    assert json.loads((folder / "bench.json").read_text())["preset"] == "unmodelled"


@pytest.mark.parametrize("bench, message", [
    ({"seeds": [0], "also": [{"seeds": [0], "preset": "harsh"}]}, "its own seeds"),
    ({"also": [{"seeds": [1], "also": [{"seeds": [2]}]}]}, "no 'also' of its own"),
    ({"also": [{"seeds": [1], "preset": "gentle"}]}, "bench.preset: 'gentle'"),
])  # fmt: skip
def test_bad_extra_benches_are_refused(bench, message):
    from studies.config import validate_components

    with pytest.raises(SimgapError, match=message):
        validate_components(parse_config({**TINY, "bench": bench}, "cfg.yaml"), "cfg.yaml")


@pytest.mark.slow
def test_a_polling_study_runs_the_cells_as_the_answers_arrive(tmp_path, env):
    """``bench.poll_s``: the running study waits for the lab (started first, in its own process)
    instead of stopping; cells that need no captures run meanwhile."""
    bench = {"seeds": [0], "preset": "typical",
             "also": [{"kind": "exchange", "seeds": [1], "poll_s": 0.2}]}  # fmt: skip
    config = parse_config({**SMALL, "policies": ["none"], "bench": bench})
    lab = subprocess.Popen([sys.executable, "-m", "tests.studies.lab_script",
                            tmp_path / "study" / "exchange", "77", "--expect", "1",
                            "--timeout", "120"], env=env, cwd=ROOT)  # fmt: skip
    try:
        summary = run_study(config, tmp_path / "study", report=False)
    finally:
        assert lab.wait(timeout=120) == 0
    assert summary["complete"] == summary["cells"] == 4 and "waiting" not in summary
    answered = json.loads((tmp_path / "study" / "exchange" / "answers" /
                           next((tmp_path / "study" / "exchange" / "answers").iterdir()).name /
                           "bench.json").read_text())  # fmt: skip
    assert answered["seed"] == 77 and answered["request"].startswith("none-s0-b1-")


@pytest.mark.slow
def test_cells_on_other_benches_run_while_exchange_cells_wait(tmp_path, env):
    bench = {"seeds": [0], "preset": "typical", "also": [{"kind": "exchange", "seeds": [1]}]}
    summary = run_study(parse_config({**SMALL, "policies": ["none"], "bench": bench}),
                        tmp_path / "study", report=False)  # fmt: skip
    assert summary["states"] == {"complete": 2, "running": 0, "waiting-for-captures": 2,
                                 "queued": 0, "failed": 0}  # fmt: skip
    assert [w["id"].startswith("none-s0-b1-") for w in summary["waiting"]] == [True]
    assert summary["failed"] == [] and summary["errors"] == {}


def test_two_workers_write_one_capture_request(tmp_path):
    """Two workers reach the same missing request at once: one writes it, both then wait for
    the answer (the second used to fail the cell replacing the folder)."""
    import threading
    import time

    from harness.data import load_source
    from harness.lab.benches import CaptureRequest
    from harness.lab.exchange import CapturesPending
    from harness.lab.plans import capture_plan

    config = parse_config({**TINY, "bench": {"kind": "exchange", "seeds": [0]}})
    digits = load_source("digits", size=8)
    plan = capture_plan(digits, {"pool": torch.arange(4), "val": torch.arange(4, 6),
                                 "test": torch.arange(6, 8)})
    ids = torch.as_tensor(plan["input_id"].to_numpy(copy=True))
    made = []

    def request():
        made.append(1)
        time.sleep(0.3)  # both workers are past the "no request yet" check meanwhile
        return CaptureRequest(torch.zeros(2, 8, 8), config.optics, digits.images[ids], plan,
                              list(digits.classes), {})

    key = {"kind": "captures", "bench": 0, "sim": "x"}
    outcomes = []

    def worker():
        try:
            captures._answered(config, ArtifactCache(tmp_path / "cache"), key, "r-s0-b0-1",
                               request, tmp_path)
        except Exception as exc:  # noqa: BLE001 - recorded, checked below
            outcomes.append(type(exc))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == [CapturesPending, CapturesPending] and made == [1]
    assert (tmp_path / "exchange" / "requests" / "r-s0-b0-1" / "request.json").is_file()
