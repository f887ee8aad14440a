"""Tests of studies: config validation, the grid, recovery of orphaned cells, statistics."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import yaml
from optuna.trial import TrialState

from harness.errors import SimgapError
from studies import grid
from studies.config import load_config, parse_config, validate_components
from studies.report import ci95, needed_percent

TINY = {
    "name": "tiny",
    "data": {"source": "digits", "size": 8, "sim": {"train": 300, "val": 60, "test": 60},
             "real": {"pool": 150, "val": 40, "test": 80}},
    "model": {"channels": 2, "mask_init": "edge"},
    "training": {"epochs": 6, "batch_size": 16, "lr": 0.003},
    "adapt": {"epochs": 2, "batch_size": 16, "lr": 0.003},
    "policies": ["none", "physics"],
    "methods": ["finetune-head", "real-only"],
    "fractions": [0, 0.1, 1.0],
    "seeds": [0, 1],
    "bench": {"seeds": [0], "preset": "typical"},
    "report": {"tsne_points": 40, "feature_points": 40},
}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SIMGAP_CACHE", str(tmp_path_factory.getbasetemp() / "simgap-cache"))
    monkeypatch.setenv("SIMGAP_OFFLINE", "1")


# ---------------------------------------------------------------------------------- config
BAD = [
    ({"training": {"epochs": 0}}, "training.epochs"),
    ({"trainig": {"epochs": 1}}, "trainig: unknown field"),
    ({"fractions": [0, 5]}, "fractions: 5.0 is not in [0, 1]"),
    ({"seeds": []}, "seeds: must not be empty"),
    ({"policies": ["none", "none"]}, "label 'none' appears twice"),
    ({"optics": {"n": 16}}, "optics.n (16) must equal data.size (32)"),
    ({"policies": ["none", {"file": "missing.yaml"}]}, "policies[1].file: "),
    ({"policies": [{"name": "physics", "strengths": {"defocus": "x"}}]},
     "policies[0].strengths.defocus"),
]


@pytest.mark.parametrize(("data", "expected"), BAD)
def test_bad_config_names_file_and_field(tmp_path, data, expected):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SimgapError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message


@pytest.mark.parametrize(
    ("data", "expected"),
    [({"policies": ["none", "physics:focus"]}, "policies[1] (physics:focus)"),
     ({"methods": ["finetune-half"]}, "methods"),
     ({"bench": {"preset": "gentle"}}, "bench.preset"),
     ({"data": {"source": "cifar"}}, "data.source"),
     ({"policies": [{"name": "physics", "strengths": {"defocus": 2.0}}]}, "strengths.defocus")],
)
def test_component_names_are_checked(data, expected):
    try:
        config = parse_config(data, "x.yaml")
    except SimgapError as exc:  # some are caught by the schema already
        assert expected.split("[")[0].split(".")[0] in str(exc)
        return
    with pytest.raises(SimgapError, match=r"^x\.yaml: ") as err:
        validate_components(config, "x.yaml")
    assert expected in str(err.value)


def test_cli_bad_config_exits_2_with_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nadapt: {lr: -1}\n")
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "study", "run", str(path)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "adapt.lr" in lines[0]


def test_presets_are_valid():
    quick, paper = load_config("quick"), load_config("paper")
    for config in (quick, paper):
        validate_components(config)
    assert len(quick.seeds) >= 2
    assert len(paper.seeds) == 5 and len(paper.bench.seeds) == 3
    assert paper.data.source == "fashion-mnist" and paper.data.limit is None
    sizes = [*paper.data.sim.model_dump().values(), *paper.data.real.model_dump().values()]
    assert 60_000 <= sum(sizes) <= 70_000


def test_tuned_policy_file_is_inlined(tmp_path):
    (tmp_path / "tuned.yaml").write_text(yaml.safe_dump(
        {"name": "physics", "label": "physics-tuned", "strengths": {"defocus": 0.25},
         "lr": 0.002, "tuning": {"real_val_acc": 0.5}}))
    config = parse_config({"policies": ["none", {"file": "tuned.yaml"}]}, "s.yaml", tmp_path)
    spec = config.policy("physics-tuned")
    assert (spec.name, spec.strengths, spec.lr, spec.file) == ("physics", {"defocus": 0.25},
                                                               0.002, None)


# ---------------------------------------------------------------------------------- grid
def test_grid_cells():
    config = parse_config({**TINY, "ablations": ["physics:defocus"], "bench": {"seeds": [3, 4]},
                           "methods": ["finetune-head", "siamese", "real-only"]})
    cells = grid.grid_cells(config)
    ids = [c.id for c in cells]
    assert len(ids) == len(set(ids))
    per_seed_bench = 3 + 2 * (2 * 2 + 1)  # 3 zero-shot + 2 fractions x (2 policies x 2 + real-only)
    assert len(cells) == per_seed_bench * 2 * 2
    zero = [c for c in cells if c.fraction == 0]
    assert {c.method for c in zero} == {"none"} and len(zero) == 3 * 2 * 2
    assert {c.policy for c in cells if c.method == "real-only"} == {"none"}
    assert all(c.fraction == 0 for c in cells if c.policy == "physics:defocus")
    assert grid.Cell("physics", "siamese", 0.1, 1, 4).id == "physics/siamese/10%/s1/b4"


def _study(tmp_path, **changes):
    return grid.create_study(parse_config({**TINY, **changes}), tmp_path / "study")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_orphaned_cell_is_requeued_once(tmp_path):
    handle = _study(tmp_path, seeds=[0], methods=["finetune-head"])
    n = len(grid.grid_cells(handle.config))
    assert len(handle.study.get_trials(states=(TrialState.WAITING,))) == n
    orphan, alive = grid._claim(handle, None), grid._claim(handle, None)
    orphan.set_user_attr("worker", {**grid._worker_identity(), "pid": _dead_pid()})
    alive.set_user_attr("worker", grid._worker_identity())
    for trial in (orphan, alive):
        trial.set_user_attr("heartbeat", time.time())

    assert grid.requeue_stale(handle) == [orphan.user_attrs["cell"]]
    assert grid.requeue_stale(handle) == []  # the FAIL transition happens once
    trials = {t.number: t for t in handle.study.get_trials()}
    assert trials[orphan.number].state == TrialState.FAIL
    assert trials[alive.number].state == TrialState.RUNNING
    retry = [t for t in trials.values() if t.user_attrs.get("retry_of") == orphan.number]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING
    assert retry[0].user_attrs["cell"] == orphan.user_attrs["cell"]
    # sync_grid queues nothing more: every cell is complete, waiting or running
    assert grid.sync_grid(handle) == 0
    # a silent worker (stale heartbeat) elsewhere is requeued too
    alive.set_user_attr("worker", {"host": "elsewhere", "pid": 1, "start": "0"})
    alive.set_user_attr("heartbeat", time.time() - 10 * handle.config.grid.stale_after_s)
    assert grid.requeue_stale(handle) == [alive.user_attrs["cell"]]


def test_second_claim_of_a_cell_does_not_run(tmp_path):
    handle = _study(tmp_path, seeds=[0], methods=["finetune-head"])
    cell = grid.grid_cells(handle.config)[0]
    grid._enqueue(handle, [cell], {})  # a duplicate, as a re-queue race could leave it
    first = grid._claim(handle, None)
    assert first.user_attrs["cell"] == cell.id
    second = grid._claim(handle, None)
    while second.user_attrs["cell"] != cell.id:
        second = grid._claim(handle, None)
    calls = []

    def runner(_handle, c, _run):
        calls.append(c.id)
        return {"real_test_acc": 0.5}

    tracker = handle.tracking()
    assert grid._run_trial(handle, second, cell, runner, tracker) is False
    assert grid._run_trial(handle, first, cell, runner, tracker) is True
    assert calls == [cell.id]
    states = {t.number: t.state for t in handle.study.get_trials()}
    assert states[first.number] == TrialState.COMPLETE
    assert states[second.number] == TrialState.PRUNED


def test_failed_cell_is_recorded_and_retried_by_the_next_run(tmp_path):
    handle = _study(tmp_path, seeds=[0], methods=["finetune-head"])
    cells = grid.grid_cells(handle.config)
    broken, runs = cells[2].id, Counter()

    def runner(_handle, cell, _run):
        runs[cell.id] += 1
        if cell.id == broken and runs[cell.id] == 1:
            raise RuntimeError("out of memory\nmore detail")
        return {"real_test_acc": cell.fraction}

    assert grid.work(handle, runner) == len(cells) - 1
    summary = grid.grid_summary(handle)
    assert summary["failed"] == [broken]
    assert summary["errors"] == {broken: "RuntimeError: out of memory"}
    assert grid.sync_grid(handle) == 1  # the next `study run` queues it again ...
    assert grid.work(handle, runner) == 1  # ... and only it runs
    assert grid.grid_summary(handle)["complete"] == len(cells)
    assert runs[broken] == 2 and set(runs.values()) == {1, 2} and sum(runs.values()) == len(cells) + 1


def test_open_study_rejects_a_changed_config(tmp_path):
    _study(tmp_path)
    with pytest.raises(SimgapError, match="different config"):
        _study(tmp_path, seeds=[0, 1, 2])


def test_stop_signal_waits_for_storage_calls_to_finish():
    import os
    import signal

    from studies import stopping

    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        stopping.install()
        os.kill(os.getpid(), signal.SIGTERM)  # outside any block: held, not raised
        with pytest.raises(SystemExit) as stop:
            stopping.check()
        assert stop.value.code == 128 + signal.SIGTERM
        stopping.check()  # raised once only
        steps = []
        with pytest.raises(SystemExit), stopping.interruptible():
            with stopping.protected():  # e.g. an MLflow call during training
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("storage call finished")
            steps.append("not reached")
        assert steps == ["storage call finished"]
        with pytest.raises(KeyboardInterrupt), stopping.interruptible():
            os.kill(os.getpid(), signal.SIGINT)  # computation: interrupted at once
            time.sleep(5)
    finally:
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])


# ---------------------------------------------------------------------------------- statistics
def test_ci95_is_the_t_interval():
    mean, half, n = ci95([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(4.302652729911275 * 1.0 / math.sqrt(3))
    assert math.isnan(ci95([0.7])[1]) and ci95([])[2] == 0


def test_needed_percent_interpolates():
    percent, mean = np.array([0.0, 1.0, 5.0, 100.0]), np.array([0.4, 0.5, 0.6, 0.9])
    assert needed_percent(percent, mean, 0.55) == pytest.approx(3.0)
    assert needed_percent(percent, mean, 0.3) == 0.0
    assert needed_percent(percent, mean, 0.95) is None
    assert needed_percent(percent, mean, 0.4 + 1e-12) == 0.0  # equal up to rounding
