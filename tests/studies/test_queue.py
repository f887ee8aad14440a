"""The queue on a real Optuna storage: recovery of orphaned cells, and the contract of the Optuna
internals studies/queue.py relies on (claim, requeue, GridSampler's fixed params), checked
against the installed Optuna on SQLite and journal storages."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from packaging.requirements import Requirement

from studies import grid, queue, storage
from studies.config import parse_config
from tests.studies.tiny import TINY, study_of

ROOT = Path(__file__).resolve().parents[2]
STORAGES = [None, "journal:optuna.log"]  # SQLite in the study folder, a journal file


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_orphaned_cell_is_requeued_once(tmp_path):
    handle = study_of(tmp_path, seeds=[0], methods=["finetune-head"])
    n = len(grid.grid_cells(handle.config))
    assert len(handle.study.get_trials(states=(TrialState.WAITING,))) == n
    orphan, alive = queue.claim(handle, None), queue.claim(handle, None)
    orphan.set_user_attr("worker", {**queue.worker_identity(), "pid": _dead_pid()})
    alive.set_user_attr("worker", queue.worker_identity())
    for trial in (orphan, alive):
        trial.set_user_attr("heartbeat", time.time())

    assert queue.requeue_stale(handle) == [orphan.user_attrs["cell"]]
    assert queue.requeue_stale(handle) == []  # the FAIL transition happens once
    trials = {t.number: t for t in handle.study.get_trials()}
    assert trials[orphan.number].state == TrialState.FAIL
    assert trials[alive.number].state == TrialState.RUNNING
    retry = [t for t in trials.values() if t.user_attrs.get("retry_of") == orphan.number]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING
    assert retry[0].user_attrs["cell"] == orphan.user_attrs["cell"]
    # sync_grid queues nothing more: every cell is complete, waiting or running
    assert queue.sync_grid(handle) == 0
    # a silent worker (stale heartbeat) elsewhere is requeued too
    alive.set_user_attr("worker", {"host": "elsewhere", "pid": 1, "start": "0"})
    alive.set_user_attr("heartbeat", time.time() - 10 * handle.config.grid.stale_after_s)
    assert queue.requeue_stale(handle) == [alive.user_attrs["cell"]]


# ---------------------------------------------------------------------------------- contract
def _queued(tmp_path, n: int, storage_spec: str | None = None):
    """A study with the first ``n`` grid cells queued; a second, separate handle on it."""
    config = parse_config({**TINY, "seeds": [0, 1], "methods": ["finetune-head"]})
    folder = tmp_path / "study"
    with storage.study_lock(folder):
        handle = storage.create_study(config, folder, storage_spec)
    cells = grid.grid_cells(config)[:n]
    assert len(cells) == n
    queue.enqueue(handle, cells, {})
    return handle, storage.open_study(folder), cells


@pytest.mark.parametrize("storage_spec", STORAGES)
def test_two_handles_claim_each_cell_once(tmp_path, storage_spec):
    first, second, cells = _queued(tmp_path, 3, storage_spec)
    assert second is not first and second.study is not first.study
    claimed = [t for h in (first, second, first, second) if (t := queue.claim(h, None))]
    assert len(claimed) == 3
    assert sorted(t.user_attrs["cell"] for t in claimed) == sorted(c.id for c in cells)
    assert queue.claim(first, None) is None and queue.claim(second, None) is None
    assert [t.state for t in second.study.get_trials()] == [TrialState.RUNNING] * 3
    # the grid point comes back through GridSampler's fixed params, as the worker reads it
    space = grid.search_space(first.config)
    for trial in claimed:
        params = {axis: trial.suggest_categorical(axis, values) for axis, values in space.items()}
        assert grid.Cell(**params).id == trial.user_attrs["cell"]


CLAIM_ALL = """
import sys
from studies import queue, storage

handle = storage.open_study(sys.argv[1])
while (trial := queue.claim(handle, None)) is not None:
    print(trial.user_attrs["cell"], flush=True)
"""


@pytest.mark.parametrize("storage_spec", STORAGES)
def test_two_processes_claim_disjoint_cells(tmp_path, storage_spec):
    _, _, cells = _queued(tmp_path, 8, storage_spec)
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM_ALL, str(tmp_path / "study")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    claimed = [cell for out, _ in outs for cell in out.split()]
    assert sorted(claimed) == sorted(c.id for c in cells)  # every cell once, none twice


@pytest.mark.parametrize("storage_spec", STORAGES)
def test_stale_running_trial_is_requeued_once(tmp_path, storage_spec):
    first, second, cells = _queued(tmp_path, 3, storage_spec)
    trial = queue.claim(first, None)
    cell = trial.user_attrs["cell"]
    trial.set_user_attr("worker", {"host": "elsewhere", "pid": 1, "start": "0"})
    trial.set_user_attr("heartbeat", time.time() - 10 * first.config.grid.stale_after_s)
    # both handles saw it RUNNING; only one FAIL transition succeeds
    seen = [h.study.get_trials(states=(TrialState.RUNNING,)) for h in (first, second)]
    assert [[t.number for t in s] for s in seen] == [[trial.number]] * 2
    assert queue.requeue_stale(first) + queue.requeue_stale(second) == [cell]
    assert queue.fail(second.storage, seen[1][0]._trial_id) is False
    trials = second.study.get_trials()
    assert trials[trial.number].state == TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get("retry_of") == trial.number]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING
    assert retry[0].user_attrs["cell"] == cell
    assert retry[0].system_attrs["fixed_params"] == next(c for c in cells if c.id == cell).params


@pytest.mark.parametrize("storage_spec", STORAGES)
def test_claim_and_fail_are_atomic_transitions(tmp_path, storage_spec):
    handle, _, _ = _queued(tmp_path, 2, storage_spec)
    trial = queue.claim(handle, None)
    store = handle.storage
    assert store.set_trial_state_values(trial._trial_id, TrialState.RUNNING) is False
    assert queue.fail(store, trial._trial_id) is True
    assert queue.fail(store, trial._trial_id) is False  # finished: nobody fails it twice
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        store.set_trial_state_values(trial._trial_id, TrialState.RUNNING)


def test_enqueued_cells_count_in_the_grid_sampler(tmp_path):
    handle, _, cells = _queued(tmp_path, 2)
    space = grid.search_space(handle.config)
    assert len(optuna.samplers.GridSampler(space, seed=0)._all_grids) > len(cells)
    for trial, cell in zip(handle.study.get_trials(), cells):
        attrs = trial.system_attrs
        assert attrs["fixed_params"] == cell.params and attrs["search_space"] == space
        assert isinstance(attrs["grid_id"], int)


def test_optuna_is_within_the_tested_range():
    """The version bound in pyproject.toml admits the Optuna these tests ran against."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    spec = next(Requirement(r) for r in project["dependencies"] if r.startswith("optuna"))
    assert any(s.operator == "<" for s in spec.specifier), "pin an upper bound on optuna"
    assert spec.specifier.contains(optuna.__version__)


def _claim_number(handle, number: int) -> optuna.Trial:
    """Claim the WAITING trial ``number`` (the atomic transition claim() uses)."""
    frozen = next(t for t in handle.study.get_trials() if t.number == number)
    assert handle.storage.set_trial_state_values(frozen._trial_id, TrialState.RUNNING)
    return optuna.Trial(handle.study, frozen._trial_id)


def test_two_waiting_trials_of_a_cell_run_it_once(tmp_path):
    """A re-queue read by sync_grid between fail() and enqueue() left two WAITING trials of one
    cell; the higher one is claimed first and runs while the lower one is claimed: the cell
    completes exactly once."""
    from studies import worker

    handle = study_of(tmp_path, seeds=[0], methods=["finetune-head"])
    cell = grid.grid_cells(handle.config)[0]
    first = next(t.number for t in handle.study.get_trials() if t.user_attrs["cell"] == cell.id)
    queue.enqueue(handle, [cell], {"retry_of": first})
    second = max(t.number for t in handle.study.get_trials())
    runs = []

    def runner(h, c, run):
        runs.append(c.id)
        if len(runs) == 1:  # while the higher trial runs, another worker claims the lower one
            time.sleep(0.01)
            lower = _claim_number(handle, first)
            assert not worker.run_trial(handle, lower, cell, runner, handle.tracking())
        return {"real_test_acc": 0.5}

    higher = _claim_number(handle, second)
    time.sleep(0.01)
    assert worker.run_trial(handle, higher, cell, runner, handle.tracking())
    done = [t for t in handle.study.get_trials(states=(TrialState.COMPLETE,))
            if t.user_attrs["cell"] == cell.id]
    assert runs == [cell.id] and len(done) == 1


def test_requeue_skips_a_cell_queued_meanwhile(tmp_path):
    """A re-queue finds the cell already queued (sync_grid ran first): no second trial."""
    handle = study_of(tmp_path, seeds=[0], methods=["finetune-head"])
    trial = queue.claim(handle, None)
    cell = trial.user_attrs["cell"]
    assert queue.fail(handle.storage, trial._trial_id)
    assert queue.sync_grid(handle) == 1  # what a sync_grid between fail() and enqueue() does
    queue._requeue(handle, handle.storage.get_trial(trial._trial_id), "worker gone")
    waiting = [t for t in handle.study.get_trials(states=(TrialState.WAITING,))
               if t.user_attrs["cell"] == cell]
    assert len(waiting) == 1
