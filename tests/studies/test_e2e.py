"""End-to-end tests of studies through real processes: two workers on one storage, a study
killed by a signal and resumed, the report rebuilt from the stores, tuning without real test."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import optuna
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from baselines import hparams
from harness.data.splits import nested_fractions
from harness.datasets import RealSplits
from harness.lab.benches import Emulated
from studies import captures as study_captures
from studies import cells as study_cells
from studies import grid, queue, storage, tune
from studies.config import parse_config
from studies.report import build_report
from studies.tune import run_tuning
from studies.urls import from_folder
from tests.studies.tiny import TINY

pytestmark = pytest.mark.slow
METRICS = ["real_test_acc", "n_real_labels", "adapt_steps", "n_real_train", "sim_real_test_acc",
           "gap"]
#: cells.csv columns that change from run to run by nature (timing, MLflow run, Optuna trial)
PER_RUN = ["cell_seconds", "run_id", "trial"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "simgap-cache"
    return {**os.environ, "SIMGAP_CACHE": str(cache), "SIMGAP_OFFLINE": "1",
            "SIMGAP_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def _simgap(args, env, **kwargs):
    return [sys.executable, "-m", "harness.cli", *map(str, args)], {"env": env, **kwargs}


def _run(args, env, timeout=300):
    cmd, kw = _simgap(args, env)
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout,
                          **kw)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _trials(study_dir):
    """The study's trials ([] until ``study run`` has written the study folder)."""
    if not (study_dir / storage.STUDY_JSON).exists():
        return []
    return storage.open_study(study_dir).study.get_trials()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, config_path, env):
    """An uninterrupted study run by two worker processes on one SQLite storage."""
    out = tmp_path_factory.mktemp("ref") / "study"
    _run(["study", "run", config_path, "--out", out, "--workers", 2], env)
    return out


def test_two_workers_run_each_cell_once(reference):
    handle = storage.open_study(reference)
    trials = handle.study.get_trials()
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    done = Counter(t.user_attrs["cell"] for t in trials)
    assert set(done) == {c.id for c in grid.grid_cells(handle.config)}
    assert set(done.values()) == {1}
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    assert len(pids) == 2 and os.getpid() not in pids  # both worker processes ran cells
    runs = handle.tracking().find_run("simgap.kind", "cell", parent=handle.parent_run_id)
    per_cell = Counter(r.data.tags["simgap.cell"] for r in runs if r.info.status == "FINISHED")
    assert per_cell == done
    assert (reference / "report" / "report.md").is_file()


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, config_path, env):
    """The same study, killed with SIGKILL while a cell runs, then resumed by the same command."""
    out = tmp_path_factory.mktemp("killed") / "study"
    cmd, kw = _simgap(["study", "run", config_path, "--out", out], env)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    deadline, killed_state = time.time() + 240, None
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.3)
            trials = _trials(out)
            complete = [t for t in trials if t.state == TrialState.COMPLETE]
            running = [t for t in trials if t.state == TrialState.RUNNING
                       and "worker" in t.user_attrs]
            if len(complete) >= 4 and running:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                killed_state = ({t.number for t in complete}, running[0].number)
                break
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed_state is not None, "the study finished or stalled before it could be killed"
    _run(["study", "run", config_path, "--out", out], env)
    return out, killed_state


def test_killed_study_resumes_to_the_uninterrupted_result(resumed, reference):
    out, (complete_at_kill, orphan) = resumed
    trials = {t.number: t for t in _trials(out)}
    n = len(grid.grid_cells(parse_config(TINY)))
    assert len(complete_at_kill) < n
    assert trials[orphan].state == TrialState.FAIL  # the cell running at the kill ...
    retry = [t for t in trials.values() if t.user_attrs.get("retry_of") == orphan]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE  # ... ran again, once
    done = Counter(t.user_attrs["cell"] for t in trials.values() if t.state == TrialState.COMPLETE)
    assert len(done) == n and set(done.values()) == {1}
    # cells finished before the kill were not redone: they have no other trial
    before = {trials[i].user_attrs["cell"] for i in complete_at_kill}
    assert all(trials[i].state == TrialState.COMPLETE for i in complete_at_kill)
    assert sum(t.user_attrs["cell"] in before for t in trials.values()) == len(before)

    # every recorded number bitwise equal; only what differs per run by nature is left out
    per_run = [c for c in PER_RUN if c in pd.read_csv(reference / "report" / "cells.csv")]
    got, ref = (pd.read_csv(d / "report" / "cells.csv").drop(columns=per_run)
                .set_index("cell").sort_index() for d in (out, reference))
    assert set(METRICS) <= set(ref)
    pd.testing.assert_frame_equal(got, ref, check_exact=True)
    assert ref["real_test_acc"].nunique() > 3  # not a degenerate table
    tables = sorted(p.name for p in (reference / "report" / "tables").glob("*.csv"))
    assert "fraction_curves.csv" in tables
    assert sorted(p.name for p in (out / "report" / "tables").glob("*.csv")) == tables
    for name in tables:
        assert (out / "report" / "tables" / name).read_bytes() == (
            reference / "report" / "tables" / name).read_bytes(), name


def test_killed_coordinator_stops_its_workers(tmp_path, config_path, env):
    """SIGKILL to `study run --workers 2`: its workers notice, hand their cells back, exit."""
    out = tmp_path / "study"
    cmd, kw = _simgap(["study", "run", config_path, "--out", out, "--workers", 2], env)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    deadline, workers = time.time() + 240, set()
    try:
        while time.time() < deadline and proc.poll() is None and not workers:
            time.sleep(0.3)
            trials = _trials(out)
            running = [t for t in trials if t.state == TrialState.RUNNING
                       and "worker" in t.user_attrs]
            if sum(t.state == TrialState.COMPLETE for t in trials) >= 2 and running:
                workers = {t.user_attrs["worker"]["pid"] for t in running}
                os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert workers, "the study finished or stalled before it could be killed"
    deadline = time.time() + 60
    while time.time() < deadline and any(queue.process_start(p) for p in workers):
        time.sleep(0.2)
    assert not any(queue.process_start(p) for p in workers)
    trials = _trials(out)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all(any(r.user_attrs.get("retry_of") == f.number and
                              r.state == TrialState.WAITING for r in trials) for f in failed)


def test_report_is_built_from_the_stores(resumed, env):
    out, _ = resumed
    before = pd.read_csv(out / "report" / "cells.csv")
    shutil.rmtree(out / "report")
    _run(["study", "report", out], env)  # a fresh process: only the stores remain
    rebuilt = pd.read_csv(out / "report" / "cells.csv")
    pd.testing.assert_frame_equal(rebuilt[["cell", *METRICS]], before[["cell", *METRICS]])
    for name in ("fraction_curves", "policies_zero_shot", "sim_real_gap", "tsne_none"):
        assert (out / "report" / "figures" / f"{name}.png").is_file()
        assert (out / "report" / "figures" / f"{name}.pdf").is_file()
    for name in ("fraction_curves", "zero_shot", "headline_policies", "headline_curves"):
        for suffix in ("csv", "md", "tex"):
            assert (out / "report" / "tables" / f"{name}.{suffix}").is_file()

    # tamper with one stored metric: the report follows the store, not the Optuna value
    handle = storage.open_study(out)
    row = rebuilt[rebuilt["cell"] == "physics/finetune-head/10%/s1/b0"].iloc[0]
    handle.tracking().client.log_metric(row["run_id"], "real_test_acc", 0.0123)
    text = build_report(out).read_text()
    tampered = pd.read_csv(out / "report" / "cells.csv").set_index("cell")
    assert tampered.loc[row["cell"], "real_test_acc"] == pytest.approx(0.0123)
    curves = pd.read_csv(out / "report" / "tables" / "fraction_curves.csv", index_col=0)
    mates = tampered[(tampered["variant"] == "physics/finetune-head")
                     & (tampered["percent"] == 10)]["real_test_acc"]
    assert curves.loc["physics/finetune-head", "10 %"].startswith(f"{mates.mean():.3f}")
    assert f"{mates.mean():.3f}" in text


def test_tuning_never_reads_real_test(tmp_path, monkeypatch, env):
    """A study that declares real val as an extra label cost tunes on it, never on test."""
    monkeypatch.setenv("SIMGAP_CACHE", env["SIMGAP_CACHE"])
    config = parse_config({**TINY, "seeds": [0], "selection": {"adapt": "real-val"}})
    clean = study_cells.study_data(config)
    images = clean.images.images.clone()
    images[clean.splits["test"]] = float("nan")  # poisoned: any use of real test shows
    poisoned = study_cells.StudyData(
        type(clean.images)(images, clean.images.labels, clean.images.classes,
                           clean.images.source, clean.images.origin), clean.splits)
    monkeypatch.setattr(study_cells, "study_data", lambda _config: poisoned)
    seen = []
    real_read, real_record = tune.read_capture_set, study_captures.record
    real_emulated, split_of = Emulated.capture, {int(i): s for s, ids in clean.splits.items()
                                                  if s in ("pool", "val", "test") for i in ids}

    def capture(self, masks, images, ids, capture_index=None):  # every frame the bench makes
        seen.append({split_of[int(i)] for i in ids})
        return real_emulated(self, masks, images, ids, capture_index)

    monkeypatch.setattr(Emulated, "capture", capture)
    monkeypatch.setattr(study_captures, "record", lambda bench, request, *a, **k: seen.append(
        set(request.plan["split"])) or real_record(bench, request, *a, **k))
    for module in (tune, study_cells):  # where the study code looks the functions up
        monkeypatch.setattr(module, "read_capture_set",
                            lambda root, splits=None: seen.append(set(splits or ["all"]))
                            or real_read(root, splits))
    monkeypatch.setattr(RealSplits, "for_final_evaluation",
                        lambda self: pytest.fail("tuning asked for real test"))
    result = run_tuning(config, tmp_path / "tune", trials=3, storage=None)
    assert seen and all(s == {"val"} for s in seen)
    assert 0.0 < result["value"] <= 1.0 and torch.isfinite(torch.tensor(result["value"]))
    tuned = yaml.safe_load(result["path"].read_text())
    assert tuned["tuning"]["storage"] == "sqlite:///optuna.db"  # relative: a movable folder
    study = optuna.load_study(study_name=tuned["tuning"]["study"],
                              storage=from_folder(tuned["tuning"]["storage"], tmp_path / "tune"))
    assert len(study.trials) == 3 and tuned["tuning"]["value"] == study.best_value
    assert study.metric_names == ["real_val_acc"]  # named in optuna-dashboard
    assert tuned["tuning"]["protocol"] == "real-val" and tuned["tuning"]["real_labels"] == 40
    spec = parse_config({**TINY, "policies": ["none", {"file": result["path"].name}]},
                        "s.yaml", result["path"].parent).policy("physics-tuned")
    assert spec.strengths == tuned["strengths"] and spec.lr == tuned["lr"]


def test_default_tuning_spends_no_real_label(tmp_path, monkeypatch, env):
    """The default protocol: a policy is tuned without one real label, a method within its
    fraction; the registry's search space drives the suggestions; real test is never read."""
    monkeypatch.setenv("SIMGAP_CACHE", env["SIMGAP_CACHE"])
    config = parse_config({**TINY, "seeds": [0], "methods": ["finetune-full", "siamese"]})
    seen = []
    real_capture = Emulated.capture

    def capture(self, masks, images, ids, capture_index=None):  # every frame the bench makes
        seen.append(ids)
        return real_capture(self, masks, images, ids, capture_index)

    monkeypatch.setattr(Emulated, "capture", capture)
    monkeypatch.setattr(RealSplits, "for_final_evaluation",
                        lambda self: pytest.fail("tuning asked for real test"))
    result = run_tuning(config, tmp_path / "policy", trials=2)
    assert seen == [] and result["real_labels"] == 0 and result["protocol"] == "sim-val"
    result = run_tuning(config, tmp_path / "method", trials=2, method="siamese", fraction=0.1)
    doc = yaml.safe_load(result["path"].read_text())
    assert set(doc["hparams"]["siamese"]) == set(hparams.METHOD_HPARAMS["siamese"])
    study = optuna.load_study(study_name=doc["tuning"]["study"],
                              storage=from_folder(doc["tuning"]["storage"], tmp_path / "method"))
    assert study.metric_names == ["budget_val_acc"]  # the objective, named in the dashboard
    client = MlflowClient(f"sqlite:///{tmp_path / 'method' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and {r.data.tags["mlflow.source.name"] for r in runs} == {"simgap tune"}
    assert doc["tuning"]["protocol"] == "real-val-from-budget"
    pool_labels = study_cells.study_data(config).images.labels[
        study_cells.study_data(config).splits["pool"]]
    fraction = nested_fractions(torch.arange(len(pool_labels)), pool_labels, [0.1], 0)[0.1]
    assert doc["tuning"]["real_labels"] == len(fraction) < 30  # the 10 % fraction, no more
    assert parse_config({**TINY, "hparams": doc["hparams"]}).hparams == doc["hparams"]
