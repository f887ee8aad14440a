"""Issue 16, item 7: a study's numbers do not depend on --workers (every cell runs on the same
number of intra-op threads, recorded in its run)."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from harness.runtime import cell_threads
from studies.config import parse_config
from studies.storage import open_study
from studies.worker import run_study
from tests.studies.tiny import TINY

MINI = {
    **{k: v for k, v in TINY.items() if k != "adapt"},
    "data": {"source": "digits", "size": 8, "sim": {"train": 64, "val": 16, "test": 16},
             "real": {"pool": 40, "val": 16, "test": 16}},
    "training": {"epochs": 1, "batch_size": 16, "lr": 0.003},
    "policies": ["none"], "methods": ["finetune-head"], "fractions": [0, 1.0], "seeds": [0],
}


def _results(folder):
    handle = open_study(folder)
    out = {}
    for t in handle.study.get_trials(states=(TrialState.COMPLETE,)):
        metrics = {k: v for k, v in t.user_attrs["metrics"].items() if k != "cell_seconds"}
        run = handle.tracking().get_run(t.user_attrs["mlflow_run_id"])
        out[t.user_attrs["cell"]] = (metrics, t.user_attrs["threads"], run.data.params["threads"])
    return out


@pytest.mark.slow
def test_one_and_two_workers_give_bitwise_equal_numbers(tmp_path):
    config = parse_config(MINI)
    one = run_study(config, tmp_path / "one", workers=1, report=False)
    two = run_study(config, tmp_path / "two", workers=2, report=False)
    assert one["complete"] == two["complete"] == 2
    a, b = _results(tmp_path / "one"), _results(tmp_path / "two")
    assert a == b  # floats compared exactly
    assert {v[1] for v in a.values()} == {cell_threads()}
    assert {v[2] for v in a.values()} == {str(cell_threads())}
