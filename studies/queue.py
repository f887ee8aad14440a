"""The queue of cells on an Optuna storage: every use of Optuna internals lives here.

Every cell is *enqueued* once as a WAITING trial carrying its grid point (GridSampler's own
``fixed_params`` / ``grid_id`` system attributes); a worker claims one by the storage's atomic
WAITING -> RUNNING transition (as ``study.ask()``): each cell runs once for any number of
workers on any machines, on SQLite, journal files or PostgreSQL.

Recovery:
- A cell is done when it has a COMPLETE trial; finished cells are never redone.
- A running trial records its worker (host, pid, process start) and refreshes a heartbeat.  A
  RUNNING trial whose local worker process is gone, or whose heartbeat is older than
  ``grid.stale_after_s``, is marked FAIL and its cell queued again (the FAIL transition is
  atomic, so only one worker re-queues it).
- :func:`sync_grid` queues every cell without a COMPLETE, WAITING or RUNNING trial.
- A cell whose capture request has no answer yet (an ``exchange`` bench) is queued again with
  the request id (:func:`await_captures`, user attribute ``needs_captures``) and claimed only
  once an answer is there; its failed try never counts as a failure.
- A re-queue (FAIL, then enqueue) holds the study-folder lock, as :func:`sync_grid` does; two
  claims of one cell are settled at start (:func:`duplicate_of`): the earlier claim runs.

The internals relied on (checked by tests/studies/test_queue.py against the installed Optuna):
``storage.set_trial_state_values`` returning False / raising ``UpdateFinishedTrialError`` when
a trial left the state it was read in, ``optuna.Trial(study, trial_id)``, ``FrozenTrial._trial_id``,
GridSampler's ``_all_grids`` and its ``fixed_params`` / ``search_space`` / ``grid_id`` system
attributes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import optuna
from optuna.trial import TrialState

from studies.grid import Cell, grid_cells, search_space
from studies.storage import StudyHandle, first_line, study_lock

log = logging.getLogger("simgap.studies")

LIVE = (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
NEEDS = "needs_captures"  # user attribute of a queued cell waiting for a capture request's answer
CELL_STATES = ("complete", "running", "waiting-for-captures", "queued", "failed")  # study status


def cell_of(trial: optuna.trial.FrozenTrial) -> str | None:
    return trial.user_attrs.get("cell")  # the id of the cell a trial runs


# ---------------------------------------------------------------------------------- enqueue
def sync_grid(handle: StudyHandle) -> int:
    """Queue every cell without a COMPLETE, WAITING or RUNNING trial; returns how many.  Call it
    under :func:`studies.storage.study_lock`: two callers could queue the same missing cell."""
    study = handle.study
    with folder_lock(handle, held=True):
        requeue_stale(handle)
        trials = study.get_trials(deepcopy=False)
        covered = {cell_of(t) for t in trials if t.state in LIVE}
        missing = [c for c in grid_cells(handle.config) if c.id not in covered]
        enqueue(handle, missing, {})
    return len(missing)


def enqueue(handle: StudyHandle, cells: list[Cell], extra_attrs: dict) -> None:
    """Add one WAITING trial per cell (user attributes: ``cell`` and ``extra_attrs``)."""
    if not cells:
        return
    space = search_space(handle.config)
    sampler = optuna.samplers.GridSampler(space, seed=0)
    # the grid id of each point, so GridSampler's own bookkeeping counts these trials
    grid_ids = {g: i for i, g in enumerate(getattr(sampler, "_all_grids", []))}
    trials = []
    for cell in cells:
        params = cell.params
        system = {"fixed_params": params}
        point = tuple(params[a] for a in sorted(space))
        if point in grid_ids:
            system.update(search_space=space, grid_id=grid_ids[point])
        trials.append(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                system_attrs=system,
                user_attrs={"cell": cell.id, **extra_attrs},
            )
        )
    handle.study.add_trials(trials)


# ---------------------------------------------------------------------------------- claim
def claim(handle: StudyHandle, last_group: tuple | None, ready=None) -> optuna.Trial | None:
    """Claim a WAITING trial (atomic).  Prefer the sim model this worker used last, then cells
    whose sim model no running cell is building, so workers spread over models.  A cell waiting
    for captures is claimed only when ``ready(request id)`` says its answer is there."""
    study, storage = handle.study, handle.storage
    trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
    busy = {group(t.system_attrs["fixed_params"]) for t in trials
            if t.state == TrialState.RUNNING and "fixed_params" in t.system_attrs}
    waiting = [t for t in trials if t.state == TrialState.WAITING and claimable(t, ready)]

    def rank(t):
        g = group(t.system_attrs.get("fixed_params", {}))
        return (0 if g == last_group else 1 if g not in busy else 2, t.number)

    me = worker_identity()
    for t in sorted(waiting, key=rank):
        try:
            # who tries to claim, written before the claim: a claimant killed before
            # mark_started is then known to be gone at once (no wait of stale_after_s)
            storage.set_trial_user_attr(t._trial_id, claimant_key(me), me)
            if storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                return optuna.Trial(study, t._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def claimable(trial: optuna.trial.FrozenTrial, ready) -> bool:
    """False for a cell waiting for captures whose answer is not there."""
    needs = trial.user_attrs.get(NEEDS)
    return needs is None or ready is None or ready(needs)


def group(params: dict) -> tuple:
    """The sim model a cell needs: (policy, seed)."""
    return params.get("policy"), params.get("seed")


def duplicate_of(handle: StudyHandle, trial: optuna.Trial, cell_id: str) -> int | None:
    """The number of a trial that has run ``cell_id`` (COMPLETE, whatever its number) or runs
    it and was claimed before ``trial`` (RUNNING, earlier claim; the lower number on a tie), if
    any.  Both claimants see the same claim times, so exactly one of two concurrent runs goes on."""
    def order(t):  # when claimed (WAITING -> RUNNING), then the number
        return (t.datetime_start.timestamp() if t.datetime_start else float("inf"), t.number)

    mine = order(handle.storage.get_trial(trial._trial_id))
    for other in handle.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                 TrialState.RUNNING)):
        if other.number != trial.number and cell_of(other) == cell_id and (
                other.state == TrialState.COMPLETE or order(other) < mine):
            return other.number
    return None


# ---------------------------------------------------------------------------------- liveness
def process_start(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (tells a reused pid apart); None if gone
    (or a zombie); "?" when alive but the start time is unknown (no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else fields[19]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "?"
        return "?"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def worker_identity() -> dict:
    """Who runs a trial: host (+ boot id, so two machines sharing a hostname differ), pid and
    process start time."""
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(),
            "start": process_start(os.getpid())}


def claimant_key(identity: dict) -> str:
    return f"claimant:{identity['host']}:{identity['boot'][:8]}:{identity['pid']}"


def local_and_gone(worker: dict) -> bool:
    """True when ``worker`` ran on this machine (same boot) and its process is gone."""
    if worker.get("host") != socket.gethostname() or worker.get("boot", "") != _boot_id():
        return False
    start = process_start(int(worker["pid"]))
    return start is None or (start != "?" and start != worker.get("start"))


def is_stale(trial: optuna.trial.FrozenTrial, now: float, stale_after: float) -> bool:
    """A RUNNING trial whose local worker process is gone or whose heartbeat is too old.  A
    trial claimed but not yet started is stale at once when every process that tried to claim
    it is a local one that is gone, else after ``stale_after`` from the claim."""
    worker = trial.user_attrs.get("worker")
    if not worker:
        claimants = [v for k, v in trial.user_attrs.items() if k.startswith("claimant:")]
        if claimants and all(local_and_gone(c) for c in claimants):
            return True
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        return now - started > stale_after
    if local_and_gone(worker):
        return True
    return now - float(trial.user_attrs.get("heartbeat", now)) > stale_after


def mark_started(trial: optuna.Trial) -> None:
    """Record who runs ``trial`` and its first heartbeat."""
    trial.set_user_attr("worker", worker_identity())
    trial.set_user_attr("heartbeat", time.time())


class Heartbeat(threading.Thread):
    """Refreshes a running trial's ``heartbeat`` every ``interval`` seconds until ``stop``."""

    def __init__(self, storage, trial_id: int, interval: float):
        super().__init__(daemon=True)
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()

    @classmethod
    def of(cls, handle: StudyHandle, trial: optuna.Trial) -> Heartbeat:
        return cls(handle.storage, trial._trial_id, handle.config.grid.heartbeat_s)

    def run(self):
        while not self.stop.wait(self.interval):
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
            except Exception as exc:  # noqa: BLE001 - finished meanwhile, or a storage hiccup
                log.debug("heartbeat of trial %d not recorded: %s", self.trial_id,
                          first_line(exc))


# ---------------------------------------------------------------------------------- requeue
def requeue_stale(handle: StudyHandle) -> list[str]:
    """Fail RUNNING trials whose worker is gone and queue their cells again."""
    study, storage = handle.study, handle.storage
    now = time.time()
    stale_after = handle.config.grid.stale_after_s
    requeued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(trial, now, stale_after):
            continue
        with folder_lock(handle):
            if fail(storage, trial._trial_id):
                _requeue(handle, trial, "worker gone")
                requeued.append(cell_of(trial))
    return requeued


def stale_cells(handle: StudyHandle) -> list[str]:
    """The cells of RUNNING trials whose worker is gone or silent, read-only (the next
    ``study run`` or worker re-queues them: :func:`requeue_stale`)."""
    now, stale_after = time.time(), handle.config.grid.stale_after_s
    return sorted(cell_of(t) or "?" for t in handle.study.get_trials(
        deepcopy=False, states=(TrialState.RUNNING,)) if is_stale(t, now, stale_after))


def fail_stale(study: optuna.Study, stale_after: float) -> None:
    """Mark FAIL the stale RUNNING trials of a study that is not a grid (nothing re-queued)."""
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_stale(t, now, stale_after):
            fail(study._storage, t._trial_id)


def fail(storage, trial_id: int) -> bool:
    """Atomically RUNNING -> FAIL; False if someone else finished the trial first."""
    try:
        return bool(storage.set_trial_state_values(trial_id, TrialState.FAIL))
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def hand_back(handle: StudyHandle, trial: optuna.Trial, reason: str,
              extra: dict | None = None) -> None:  # fmt: skip
    """Fail this worker's own running ``trial`` and queue its cell again (e.g. on SIGTERM);
    ``extra``: user attributes of the new trial."""
    with folder_lock(handle):
        if fail(handle.storage, trial._trial_id):
            _requeue(handle, handle.storage.get_trial(trial._trial_id), reason, extra)


def await_captures(handle: StudyHandle, trial: optuna.Trial, request_id: str) -> None:
    """Queue ``trial``'s cell again as waiting for the answer to capture request
    ``request_id`` (the failed try is marked, so it never counts as a failure)."""
    trial.set_user_attr(NEEDS, request_id)
    hand_back(handle, trial, f"waiting for captures {request_id}", {NEEDS: request_id})


def _requeue(handle: StudyHandle, trial: optuna.trial.FrozenTrial, reason: str,
             extra: dict | None = None) -> None:  # fmt: skip
    cell = cell_of(trial)
    (log.info if extra else log.warning)("re-queueing cell %s (trial %d: %s)", cell,
                                         trial.number, reason)  # fmt: skip
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        try:
            handle.tracking().set_status(run_id, "KILLED")
        except Exception as exc:  # noqa: BLE001 - best effort; the trial state is what counts
            log.warning("could not mark MLflow run %s killed: %s", run_id, first_line(exc))
    if any(cell_of(t) == cell for t in handle.study.get_trials(deepcopy=False, states=LIVE)):
        return  # queued meanwhile (a sync_grid that held no lock)
    cells = [c for c in grid_cells(handle.config) if c.id == cell]
    enqueue(handle, cells, {"retry_of": trial.number, **(extra or {})})


_held = threading.local()  # the study folder whose lock this thread holds


@contextmanager
def folder_lock(handle: StudyHandle, held: bool = False):
    """The study-folder lock (:func:`studies.storage.study_lock`), when the folder is known, so a
    re-queue never interleaves with :func:`sync_grid`; ``held``: the caller holds it already."""
    folder = handle.study_dir or handle.home
    key = folder and str(Path(folder).resolve())
    if not key or getattr(_held, "folder", None) == key:  # never a 2nd lock: it'd wait forever
        yield
        return
    with nullcontext() if held else study_lock(folder):
        _held.folder = key
        try:
            yield
        finally:
            _held.folder = None


def reconcile_runs(handle: StudyHandle) -> dict[str, str]:
    """End the cell runs a killed worker left RUNNING: FINISHED when their trial completed with
    them (killed between ``tell`` and ending the run), KILLED when their trial is no longer
    running (killed before the run id was recorded, or re-queued).  Returns {run id: status}."""
    tracker = handle.tracking()
    trials = {t.number: t for t in handle.study.get_trials(deepcopy=False)}
    ended = {}
    for run in tracker.running_cells(handle.parent_run_id):
        run_id = run.info.run_id
        number = run.data.tags.get("simgap.trial", "")
        trial = trials.get(int(number)) if number.isdigit() else None
        if trial is not None and trial.state in (TrialState.RUNNING, TrialState.WAITING):
            continue  # its worker may still be at it; requeue_stale decides
        mine = trial is not None and trial.user_attrs.get("mlflow_run_id") == run_id
        status = "FINISHED" if mine and trial.state == TrialState.COMPLETE else "KILLED"
        tracker.set_status(run_id, status)
        ended[run_id] = status
    if ended:
        log.warning("ended %d cell run(s) a stopped worker left running", len(ended))
    return ended


# ---------------------------------------------------------------------------------- state
def trial_counts(handle: StudyHandle) -> dict[str, int]:
    """Number of trials per state name (COMPLETE, RUNNING, WAITING, FAIL, PRUNED)."""
    counts: dict[str, int] = {}
    for t in handle.study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def grid_summary(handle: StudyHandle) -> dict:
    """Cells in the grid, cells complete, and the cells whose last try failed (with errors)."""
    trials = handle.study.get_trials(deepcopy=False)
    complete = {cell_of(t) for t in trials if t.state == TrialState.COMPLETE}
    cells = grid_cells(handle.config)
    failed = sorted({cell_of(t) for t in trials if t.state == TrialState.FAIL
                     and NEEDS not in t.user_attrs} - complete)  # fmt: skip
    return {
        "cells": len(cells),
        "complete": sum(c.id in complete for c in cells),
        "failed": failed,
        "errors": {cell_of(t): t.user_attrs["error"] for t in trials
                   if t.state == TrialState.FAIL and "error" in t.user_attrs
                   and cell_of(t) not in complete},
    }


def cell_states(handle: StudyHandle, ready=None) -> dict:
    """Cells per state (``complete``, ``running``, ``waiting-for-captures``, ``queued``,
    ``failed``, each cell by its last try) and the request ids waiting cells need."""
    last: dict[str, optuna.trial.FrozenTrial] = {}
    complete = set()
    for t in sorted(handle.study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state == TrialState.COMPLETE:
            complete.add(cell_of(t))
        elif t.state != TrialState.PRUNED:
            last[cell_of(t)] = t
    counts = dict.fromkeys(CELL_STATES, 0)
    needs = []
    for cell in grid_cells(handle.config):
        t = last.get(cell.id)
        if cell.id in complete:
            state = "complete"
        elif t is None or t.state == TrialState.WAITING:
            state = "queued" if t is None or claimable(t, ready) else "waiting-for-captures"
        else:
            state = "running" if t.state == TrialState.RUNNING else "failed"
        counts[state] += 1
        if state == "waiting-for-captures":
            needs.append(t.user_attrs[NEEDS])
    return {"counts": counts, "needs": needs}
