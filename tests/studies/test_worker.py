"""The work loop: duplicate claims, failing cells, retries by the next run."""

from __future__ import annotations

from collections import Counter

from optuna.trial import TrialState

from studies import grid, queue, worker
from tests.studies.tiny import study_of


def test_second_claim_of_a_cell_does_not_run(tmp_path):
    handle = study_of(tmp_path, seeds=[0], methods=["finetune-head"])
    cell = grid.grid_cells(handle.config)[0]
    queue.enqueue(handle, [cell], {})  # a duplicate, as a re-queue race could leave it
    first = queue.claim(handle, None)
    assert first.user_attrs["cell"] == cell.id
    second = queue.claim(handle, None)
    while second.user_attrs["cell"] != cell.id:
        second = queue.claim(handle, None)
    calls = []

    def runner(_handle, c, _run):
        calls.append(c.id)
        return {"real_test_acc": 0.5}

    tracker = handle.tracking()
    assert worker.run_trial(handle, second, cell, runner, tracker) is False
    assert worker.run_trial(handle, first, cell, runner, tracker) is True
    assert calls == [cell.id]
    states = {t.number: t.state for t in handle.study.get_trials()}
    assert states[first.number] == TrialState.COMPLETE
    assert states[second.number] == TrialState.PRUNED


def test_failed_cell_is_recorded_and_retried_by_the_next_run(tmp_path):
    handle = study_of(tmp_path, seeds=[0], methods=["finetune-head"])
    cells = grid.grid_cells(handle.config)
    broken, runs = cells[2].id, Counter()

    def runner(_handle, cell, _run):
        runs[cell.id] += 1
        if cell.id == broken and runs[cell.id] == 1:
            raise RuntimeError("out of memory\nmore detail")
        return {"real_test_acc": cell.fraction}

    assert worker.work(handle, runner) == len(cells) - 1
    summary = queue.grid_summary(handle)
    assert summary["failed"] == [broken]
    assert summary["errors"] == {broken: "RuntimeError: out of memory"}
    assert queue.sync_grid(handle) == 1  # the next `study run` queues it again ...
    assert worker.work(handle, runner) == 1  # ... and only it runs
    assert queue.grid_summary(handle)["complete"] == len(cells)
    assert runs[broken] == 2 and set(runs.values()) == {1, 2}
    assert sum(runs.values()) == len(cells) + 1


def test_labels_spent_by_tuning_are_charged_to_every_cell(tmp_path):
    """A real-val-tuned policy read real labels: its cells count them, the 0 % cell included."""
    import yaml

    (tmp_path / "tuned.yaml").write_text(yaml.safe_dump(
        {"name": "physics", "label": "physics-tuned", "strengths": {},
         "tuning": {"protocol": "real-val", "real_labels": 40, "trials": 2}}))
    from studies.config import parse_config
    from tests.studies.tiny import TINY

    data = {**TINY, "seeds": [0], "methods": ["finetune-head"], "fractions": [0, 0.1],
            "policies": [{"file": "tuned.yaml"}], "training": {"epochs": 1, "batch_size": 16},
            "report": {**TINY["report"], "baseline": "physics-tuned"}}
    handle = worker.prepare_study(parse_config(data, "s.yaml", tmp_path), tmp_path / "study")
    assert worker.work(handle) == 2
    metrics = {t.user_attrs["cell"]: t.user_attrs["metrics"]
               for t in handle.study.get_trials(states=(TrialState.COMPLETE,))}
    assert all(m["n_real_labels_tuning"] == 40 for m in metrics.values())
    for m in metrics.values():
        assert m["n_real_labels"] == 40 + m["n_real_train"] + m["n_real_val"] + m[
            "n_real_labels_extra"]
    assert max(m["n_real_labels"] for m in metrics.values()) > 40  # the 10 % cell's own labels
