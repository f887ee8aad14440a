"""A finished study folder as users handle it: copied elsewhere (the original deleted) and
reported there, looked at with `study status` (which writes nothing), and opened in MLflow and
optuna-dashboard (curves on the study run as cells finish, standard tags, inputs, models, a
named objective that is not a test score)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from harness.cli import main
from harness.models import load_model
from studies import storage, worker
from studies.report import build_report
from tests.studies.tiny import study_of

pytestmark = pytest.mark.slow
POOL = 40
SMALL = {"seeds": [0], "methods": ["finetune-head"], "fractions": [0, 1.0],
         "data": {"source": "digits", "size": 8, "sim": {"train": 96, "val": 24, "test": 24},
                  "real": {"pool": POOL, "val": 16, "test": 24}},
         "training": {"epochs": 2, "batch_size": 16, "lr": 0.003}}
CURVE = "curve/physics/finetune-head/real_test_acc"


@pytest.fixture(scope="module")
def relocated(tmp_path_factory):
    """A tiny study run and reported in ``ran``, copied to ``copy``; ``ran`` then deleted and
    made again as an empty folder, so anything written to the old place shows."""
    base = tmp_path_factory.mktemp("relocate")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIMGAP_CACHE", str(tmp_path_factory.getbasetemp() / "simgap-cache"))
        mp.setenv("SIMGAP_OFFLINE", "1")
        handle = study_of(base, **SMALL)
        assert worker.work(handle) == 4
        tracker = handle.tracking()
        before_report = tracker.client.get_metric_history(handle.parent_run_id, CURVE)
        build_report(base / "study")
        ran, copy = base / "study", base / "elsewhere" / "copy"
        cells = pd.read_csv(ran / "report" / "cells.csv")
        shutil.copytree(ran, copy)
        shutil.rmtree(ran)
        ran.mkdir()
        shutil.rmtree(copy / "report")
        yield {"ran": ran, "copy": copy, "cells": cells, "handle": handle,
               "before_report": before_report}


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_status_is_read_only(relocated, capsys):
    copy = relocated["copy"]
    before = _files(copy)
    dirs = sorted(str(p) for p in copy.rglob("*") if p.is_dir())
    assert main(["study", "status", str(copy)]) == 0
    assert "4/4 cells complete" in capsys.readouterr().out
    assert _files(copy) == before  # same bytes, same mtimes, no new file
    assert sorted(str(p) for p in copy.rglob("*") if p.is_dir()) == dirs
    assert list(relocated["ran"].iterdir()) == []


def test_copied_study_reports_from_its_own_stores(relocated, tmp_path):
    ran, copy = relocated["ran"], relocated["copy"]
    assert main(["study", "report", str(copy)]) == 0
    assert list(ran.iterdir()) == []  # nothing read from or written to the old place
    rebuilt = pd.read_csv(copy / "report" / "cells.csv")
    cols = ["cell", "real_test_acc", "n_real_labels", "gap"]
    pd.testing.assert_frame_equal(rebuilt[cols], relocated["cells"][cols])
    assert (copy / "report" / "figures" / "tsne_none.png").is_file()  # features.npz, from copy
    stored = (copy / storage.STUDY_JSON).read_text()
    handle = storage.open_study(copy)
    attrs = json.dumps(handle.study.user_attrs)
    for text in (stored, attrs):
        assert str(ran) not in text and str(ran.resolve()) not in text
    assert json.loads(stored)["storage"] == "sqlite:///optuna.db"
    # MLflow: the experiment, every run and the report artifact live under the copy
    mlruns = (copy.resolve() / "mlruns").as_uri()
    with sqlite3.connect(copy / "mlflow.db") as db:
        roots = [r[0] for r in db.execute("SELECT artifact_location FROM experiments "
                                          "WHERE name = 'simgap/tiny'")]
        uris = [r[0] for r in db.execute("SELECT artifact_uri FROM runs")]
    assert roots == [mlruns] and len(uris) == 5
    assert all(uri.startswith(mlruns + "/") for uri in uris)
    report = handle.tracking().download(handle.parent_run_id, "report/report.md", tmp_path)
    assert report is not None and report.read_text().startswith("# simgap study report")


def test_cells_log_inputs_and_their_final_model(relocated, tmp_path):
    copy = relocated["copy"]
    handle = storage.open_study(copy)
    tracker = handle.tracking()
    runs = tracker.find_run("simgap.kind", "cell", parent=handle.parent_run_id)
    run = tracker.get_run(next(r.info.run_id for r in runs if r.data.tags["simgap.cell"]
                               == "physics/finetune-head/100%/s0/b0"))
    inputs = {{t.key: t.value for t in i.tags}["mlflow.data.context"]: i.dataset
              for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"splits", "captures"}
    assert json.loads(inputs["captures"].source)["uri"].startswith("cache/")  # in the folder
    assert (copy / json.loads(inputs["captures"].source)["uri"]).is_dir()
    assert json.loads(inputs["splits"].profile)["pool"] == POOL
    path = tracker.download(run.info.run_id, "model/model.pt", tmp_path)
    model = load_model(path)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_runs_carry_the_standard_tags(relocated):
    handle = storage.open_study(relocated["copy"])
    tracker = handle.tracking()
    parent = tracker.get_run(handle.parent_run_id)
    for run in [parent, *tracker.find_run("simgap.kind", "cell", parent=handle.parent_run_id)]:
        tags = run.data.tags
        assert tags["mlflow.source.name"] == "simgap study" and tags["mlflow.user"]
        assert run.info.user_id == tags["mlflow.user"]
        if (Path(storage.__file__).resolve().parents[1] / ".git").exists():
            assert len(tags["mlflow.source.git.commit"]) == 40


def test_curves_reach_the_study_run_as_cells_finish(relocated):
    """Before any report: one point per fraction, at step = the real images it holds."""
    before = relocated["before_report"]
    cells = relocated["cells"].set_index("cell")
    assert sorted(m.step for m in before) == [0, POOL]  # 0 % and the whole pool
    by_step = {m.step: m.value for m in before}
    assert by_step[0] == pytest.approx(cells.loc["physics/none/0%/s0/b0", "real_test_acc"])
    assert by_step[POOL] == pytest.approx(
        cells.loc["physics/finetune-head/100%/s0/b0", "real_test_acc"])
    handle = storage.open_study(relocated["copy"])
    after = handle.tracking().client.get_metric_history(handle.parent_run_id, CURVE)
    assert sorted(m.step for m in after) == [0, POOL]  # the report added no duplicate


def test_grid_objective_is_no_test_score(relocated):
    study = storage.open_study(relocated["copy"]).study
    assert study.metric_names == [storage.GRID_OBJECTIVE]
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        metrics = trial.user_attrs["metrics"]
        assert trial.value == metrics["cell_seconds"] != metrics["real_test_acc"]
        assert trial.user_attrs["real_test_acc"] == metrics["real_test_acc"]
    assert os.path.isdir(relocated["ran"])
