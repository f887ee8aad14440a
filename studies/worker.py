"""Running a study: the work loop of a worker, ``study worker``, and ``study run`` with local
worker processes.

A worker claims cells from the queue (:mod:`studies.queue`) until none is left, runs each with a
runner (default :func:`studies.cells.run_cell`) inside its MLflow run, and tells the trial its
primary metric.  A worker stopped by SIGTERM or Ctrl-C re-queues its own cell; the signal
interrupts computation only, never a storage call (:mod:`studies.stopping`), so no database lock
is left behind.  ``study run`` queues the missing cells under the study-folder lock, runs the
workers, then builds the report (:mod:`studies.report`).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from harness.errors import SimgapError
from harness.lab.exchange import CapturesPending
from harness.runtime import cell_threads
from studies import captures, live, queue, stopping
from studies.cells import run_cell
from studies.config import StudyConfig
from studies.grid import Cell, grid_cells, search_space
from studies.progress import Eta
from studies.report import build_report
from studies.storage import (
    GRID_OBJECTIVE,
    StudyHandle,
    create_study,
    export_password,
    first_line,
    open_study,
    study_lock,
)

log = logging.getLogger("simgap.studies")
ETA = Eta()  # this process's estimate of the study's remaining time

Runner = Callable[..., dict]


def prepare_study(
    config: StudyConfig,
    study_dir: str | Path,
    storage: str | None = None,
    tracking_uri: str | None = None,
) -> StudyHandle:
    """Create the study in ``study_dir`` or open it (same config required) and queue the cells
    that still need a run, all under the study-folder lock.  Passwords in the URLs move to the
    environment (:func:`studies.storage.export_password`), never into a file."""
    storage, tracking_uri = export_password(storage), export_password(tracking_uri)
    with study_lock(study_dir):
        handle = create_study(config, study_dir, storage, tracking_uri)
        queue.sync_grid(handle)
        queue.reconcile_runs(handle)
    return handle


def work(
    handle: StudyHandle,
    runner: Runner | None = None,
    wait: bool = True,
    poll_s: float = 2.0,
    max_cells: int | None = None,
) -> int:
    """Run cells until none is left; returns the number of cells this worker completed.

    With ``wait`` the worker stays while other workers still run cells (it takes over the cell
    of a worker that dies).  SIGTERM re-queues the cell in progress and exits.
    """
    runner = runner or run_cell
    tracker = handle.tracking()
    done = 0
    last_group = None
    while max_cells is None or done < max_cells:
        stopping.check()
        queue.requeue_stale(handle)
        trial = None
        try:
            trial = queue.claim(handle, last_group, captures.ready_check(handle.config,
                                                                         handle.study_dir))
            if trial is None:
                if not _keep_waiting(handle, wait):
                    break
                with stopping.interruptible():
                    time.sleep(handle.config.bench.poll or poll_s)
                continue
            params = {axis: trial.suggest_categorical(axis, vals)
                      for axis, vals in search_space(handle.config).items()}
            last_group = queue.group(params)
            if run_trial(handle, trial, Cell(**params), runner, tracker):
                done += 1
        except (KeyboardInterrupt, SystemExit):
            if trial is not None:
                queue.hand_back(handle, trial, "worker stopped")
            raise
    return done


def _keep_waiting(handle: StudyHandle, wait: bool) -> bool:
    """With nothing to claim: wait while other workers run or queue cells, and, when the
    bench polls (``bench.poll_s`` > 0), while cells wait for captures."""
    counts = queue.cell_states(handle, captures.ready_check(handle.config,
                                                            handle.study_dir))["counts"]
    if counts["waiting-for-captures"] and handle.config.bench.poll > 0:
        return True
    return wait and bool(counts["running"] or counts["queued"])


def run_trial(handle, trial: optuna.Trial, cell: Cell, runner: Runner, tracker) -> bool:
    """Run ``cell`` as ``trial``; True when it completed (False: a duplicate, or it failed)."""
    other = queue.duplicate_of(handle, trial, cell.id)
    if other is not None:
        trial.set_user_attr("duplicate_of", other)
        handle.study.tell(trial, state=TrialState.PRUNED)
        return False
    queue.mark_started(trial)
    threads = cell_threads()  # fixed, whatever --workers: the same float reductions
    torch.set_num_threads(threads)
    trial.set_user_attr("threads", threads)
    beat = queue.Heartbeat.of(handle, trial)
    beat.start()
    run = None
    t0 = time.time()
    try:
        run = tracker.start_cell(
            handle.parent_run_id,
            cell.id,
            {"simgap.trial": str(trial.number), "simgap.study": handle.study_name},
            {**cell.params, "percent": cell.percent, "variant": cell.variant,
             "threads": threads},
        )
        _run_cell(handle, trial, cell, runner, run, t0)
        return True
    except optuna.exceptions.UpdateFinishedTrialError:
        log.warning("cell %s: trial %d was taken over meanwhile", cell.id, trial.number)
        return False
    except CapturesPending as exc:  # queued again, claimed when the lab's answer is there
        log.info("cell %s: %s", cell.id, exc)
        queue.await_captures(handle, trial, exc.request_id)
        return False
    except Exception as exc:  # noqa: BLE001 - a failing cell must not stop the worker
        full = disk_full(exc, handle)
        if full is not None:  # every later cell would fail too: stop, the cell queued again
            _give_back(handle, trial, run)
            raise SimgapError(f"{full}: no space left on device; the cell is queued again, "
                              "free some space and run again") from None
        message = first_line(exc)
        log.error("cell %s failed: %s\n%s", cell.id, message, traceback.format_exc())
        try:
            trial.set_user_attr("error", f"{type(exc).__name__}: {message}")
            handle.study.tell(trial, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
        if run is not None:
            run.end("FAILED")
        return False
    finally:
        beat.stop.set()


def disk_full(exc: BaseException, handle: StudyHandle) -> str | None:
    """The path a full disk refused (an ``ENOSPC`` error, or SQLite's 'database or disk is
    full' in the exception chain); None for any other error."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return str(seen.filename or handle.study_dir or "disk")
        if "database or disk is full" in str(seen):
            storage = isinstance(exc, optuna.exceptions.StorageInternalError)
            url = handle.storage_url if storage else handle.tracking_uri
            return url.removeprefix("sqlite:///")
        seen = seen.__cause__ or seen.__context__
    return None


def _give_back(handle: StudyHandle, trial: optuna.Trial, run) -> None:
    """Best effort on a full disk: FAIL the trial and queue its cell again, end its run.  When
    the storage cannot be written either, the trial stays RUNNING with this (exiting) process
    as its worker, which the next start re-queues at once."""
    try:
        queue.hand_back(handle, trial, "disk full")
    except Exception as exc:  # noqa: BLE001 - the storage may be on the full disk
        log.warning("cell not handed back (%s); the next start re-queues it", first_line(exc))
    if run is not None:
        try:
            run.end("KILLED")
        except Exception as exc:  # noqa: BLE001 - so may the tracking store
            log.warning("run %s not ended (%s)", run.run_id, first_line(exc))


def _run_cell(handle, trial: optuna.Trial, cell: Cell, runner: Runner, run, t0: float) -> None:
    """The cell's computation and its results: metrics into the run and the trial."""
    trial.set_user_attr("mlflow_run_id", run.run_id)
    log.debug("cell %s (trial %d)", cell.id, trial.number)
    with stopping.interruptible():  # SIGTERM / Ctrl-C stop the computation at once
        metrics = runner(handle, cell, run)
    metrics = {k: float(v) for k, v in metrics.items()}
    metrics["cell_seconds"] = time.time() - t0
    run.log_metrics(metrics)
    trial.set_user_attr("metrics", metrics)
    objective = handle.config.primary_metric
    trial.set_user_attr(objective, metrics[objective])  # a column of the dashboard's table
    handle.study.tell(trial, metrics[GRID_OBJECTIVE])  # never a test score (GRID_OBJECTIVE)
    run.end("FINISHED")
    try:
        live.log_curve_points(handle, run.tracking, cell)
    except Exception as exc:  # noqa: BLE001 - a chart never fails a completed cell
        log.warning("curve of cell %s not logged on the study run: %s", cell.id, first_line(exc))
    total = len(grid_cells(handle.config))
    done = queue.grid_summary(handle)["complete"]
    log.info("[%d/%d] %s: %s = %.4f (%.0f s)%s", done, total, cell.id, objective,
             metrics[objective], metrics["cell_seconds"],
             ETA.after(done, total, metrics["cell_seconds"]))


def _watch_parent(parent_pid: int) -> None:
    """Stop (SIGTERM to self) when the parent ``study run`` process is gone."""

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, daemon=True).start()


def run_worker(target, study_name=None, cache_dir=None, tracking_uri=None, parent_pid=None,
               wait=True) -> int:
    """``simgap study worker``: join a study (folder or storage URL) and run cells."""
    stopping.install()
    if parent_pid:
        _watch_parent(parent_pid)
    target, tracking_uri = export_password(str(target)), export_password(tracking_uri)
    handle = open_study(target, study_name, cache_dir, tracking_uri)
    return work(handle, wait=wait)


def run_study(
    config: StudyConfig,
    out: str | Path,
    workers: int = 1,
    storage: str | None = None,
    tracking_uri: str | None = None,
    report: bool = True,
    runner: Runner | None = None,
) -> dict:
    """Create or resume the study in ``out`` and run it with ``workers`` local processes
    (1 = in this process), then build the report.  Returns the grid summary."""
    out = Path(out)
    storage, tracking_uri = export_password(storage), export_password(tracking_uri)
    handle = prepare_study(config, out, storage, tracking_uri)
    if workers <= 1:
        stopping.install()
        work(handle, runner=runner)
    else:
        _run_processes(out, workers, tracking_uri)
    summary = queue.grid_summary(handle)
    states = queue.cell_states(handle, captures.ready_check(config, out))
    summary["states"] = states["counts"]
    if states["needs"]:
        summary["waiting"] = captures.waiting_requests(config, out, states["needs"])
    complete = summary["complete"] == summary["cells"]
    if report and summary["complete"]:
        summary["report"] = str(build_report(out, tracking_uri=tracking_uri))
    if handle.parent_run_id:
        handle.tracking().set_status(handle.parent_run_id, "FINISHED" if complete else "FAILED")
    return summary


def _run_processes(out: Path, workers: int, tracking_uri: str | None) -> None:
    cmd = [sys.executable, "-m", "harness.cli", "study", "worker", str(out),
           "--parent-pid", str(os.getpid())]
    if tracking_uri:
        cmd += ["--tracking-uri", tracking_uri]
    # each cell sets its own thread count (cell_threads), the same for any number of workers
    procs = [subprocess.Popen(cmd) for _ in range(workers)]

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        forward(signal.SIGINT, None)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if any(codes):
        log.warning("worker exit codes: %s", codes)
