"""The study grid as an Optuna study: cells, storage, workers, resume.

Each cell (policy / method, real fraction, seed, bench seed) is one trial of an Optuna study whose
sampler is a :class:`optuna.samplers.GridSampler` over the axes ``policy, method, fraction, seed,
bench``.  The grid holds only meaningful points (0 % is one zero-shot cell per policy, method
``none``; real-only uses the reference policy's mask), so every cell is *enqueued* once as a
WAITING trial carrying its grid point; a worker claims one by the storage's atomic
WAITING -> RUNNING transition (the same one ``study.ask()`` uses), which makes "each cell runs
once" hold for any number of workers on any machines, on SQLite, journal files or PostgreSQL.

Resume and recovery:
- A cell is done when it has a COMPLETE trial; finished cells are never redone.
- A running trial records its worker (host, pid, process start) and refreshes a heartbeat.  A
  RUNNING trial whose local worker process is gone, or whose heartbeat is older than
  ``grid.stale_after_s``, is marked FAIL and its cell queued again (the FAIL transition is
  atomic, so only one worker re-queues it).  A worker stopped by SIGTERM or Ctrl-C re-queues
  its own cell; the signal interrupts computation only, never a storage call
  (:mod:`studies.stopping`), so no database lock is left behind.
- ``sync_grid`` (run by ``study run`` under the study-folder lock) queues every cell that has no
  COMPLETE, WAITING or RUNNING trial, e.g. cells that failed with an error.
- Two claims of one cell (only possible around a re-queue race) are settled at start: the
  lower trial number runs, the other is marked PRUNED without running.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock
from optuna.trial import TrialState

from harness.errors import SimgapError
from studies import stopping, tracking
from studies.config import ZERO_SHOT, StudyConfig, load_config, parse_config

log = logging.getLogger("simgap.studies")

AXES = ("policy", "method", "fraction", "seed", "bench")
STUDY_JSON = "study.json"
CONFIG_YAML = "config.yaml"
LIVE = (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


# ---------------------------------------------------------------------------------- cells
@dataclass(frozen=True, order=True)
class Cell:
    """One grid point.  ``policy`` is the label of the sim model used (for real-only: the
    reference policy, whose mask the real-only network sees); ``method`` is ``none`` at 0 %."""

    policy: str
    method: str
    fraction: float
    seed: int
    bench: int

    @property
    def percent(self) -> float:
        return round(self.fraction * 100.0, 6)

    @property
    def id(self) -> str:
        return f"{self.policy}/{self.method}/{self.percent:g}%/s{self.seed}/b{self.bench}"

    @property
    def variant(self) -> str:
        """The curve a cell belongs to (zero-shot cells start every curve of their policy)."""
        if self.method == "real-only":
            return "real-only"
        return self.policy if self.method == ZERO_SHOT else f"{self.policy}/{self.method}"

    @property
    def params(self) -> dict[str, Any]:
        return asdict(self)


def grid_cells(config: StudyConfig) -> list[Cell]:
    """All cells of a study, grouped so cells sharing a sim model are adjacent."""
    cells = []
    positive = [f for f in config.fractions if f > 0]
    for seed in config.seeds:
        for spec in config.all_policies():
            for bench in config.bench.seeds:
                if 0.0 in config.fractions:
                    cells.append(Cell(spec.key, ZERO_SHOT, 0.0, seed, bench))
                if spec in config.ablations:
                    continue
                for f in positive:
                    for method in config.methods:
                        if method != "real-only" or spec.key == config.reference_policy:
                            cells.append(Cell(spec.key, method, f, seed, bench))
    return cells


def search_space(config: StudyConfig) -> dict[str, list]:
    cells = grid_cells(config)
    return {axis: sorted({getattr(c, axis) for c in cells}, key=str) for axis in AXES}


# ---------------------------------------------------------------------------------- storage
def default_storage_url(study_dir: Path) -> str:
    return f"sqlite:///{Path(study_dir).resolve() / 'optuna.db'}"


def _resolve_storage_url(spec: str | None, study_dir: Path | None) -> str:
    """``None`` -> SQLite in the study folder; ``journal:PATH`` / ``*.log`` -> a journal file
    (relative to the study folder); anything else is an SQLAlchemy URL."""
    if spec is None:
        if study_dir is None:
            raise SimgapError("storage: no study folder and no storage URL")
        return default_storage_url(study_dir)
    if spec.startswith("journal:") or spec.endswith((".log", ".journal")):
        path = Path(spec.removeprefix("journal:")).expanduser()
        if not path.is_absolute() and study_dir is not None:
            path = Path(study_dir).resolve() / path
        return f"journal:{path}"
    return spec


_STORAGES: dict[str, optuna.storages.BaseStorage] = {}


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``, one per process.  SQLite transactions begin IMMEDIATE
    (writers queue up instead of failing with 'database is locked' under several workers)."""
    if url in _STORAGES:
        return _STORAGES[url]
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = Path(url.removeprefix("journal:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            storage = JournalStorage(JournalFileBackend(str(path)))
        elif url.startswith("sqlite"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs={"connect_args": {"timeout": 120}}
            )
            _immediate_transactions(storage.engine)
        else:
            storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        storage = optuna.storages.get_storage(storage)  # RDB: the cached wrapper studies use
    except Exception as exc:  # drivers raise assorted errors for a bad URL
        if isinstance(exc, SimgapError):
            raise
        raise SimgapError(f"storage {url}: cannot open the Optuna storage ({_line(exc)})") from None
    _STORAGES[url] = storage
    return storage


def _immediate_transactions(engine) -> None:
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()


# ---------------------------------------------------------------------------------- handle
@dataclass
class StudyHandle:
    """Where a study lives: its config, Optuna storage, tracking and artifact cache."""

    config: StudyConfig
    storage_url: str
    study_name: str
    cache_dir: Path
    tracking_uri: str
    experiment: str
    artifact_location: str | None = None
    parent_run_id: str | None = None
    study_dir: Path | None = None
    _study: optuna.Study | None = field(default=None, repr=False)

    @property
    def storage(self) -> optuna.storages.BaseStorage:
        return open_storage(self.storage_url)

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = optuna.load_study(
                study_name=self.study_name,
                storage=self.storage,
                sampler=optuna.samplers.GridSampler(search_space(self.config), seed=0),
            )
        return self._study

    def tracking(self) -> tracking.Tracking:
        return tracking.Tracking(self.tracking_uri, self.experiment, self.artifact_location)

    def info(self) -> dict:
        return {
            "study_name": self.study_name,
            "storage": self.storage_url,
            "tracking_uri": self.tracking_uri,
            "experiment": self.experiment,
            "artifact_location": self.artifact_location,
            "parent_run_id": self.parent_run_id,
            "config_hash": self.config.hash(),
        }


def _line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def create_study(
    config: StudyConfig,
    study_dir: str | Path,
    storage: str | None = None,
    tracking_uri: str | None = None,
) -> StudyHandle:
    """Create the study in ``study_dir`` or open it if it exists (same config required), queue
    the cells that still need a run, and start (or reopen) the MLflow parent run."""
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(study_dir / ".study.lock")):
        meta_path = study_dir / STUDY_JSON
        if meta_path.exists():
            handle = open_study(study_dir, tracking_uri=tracking_uri)
            if handle.config.hash() != config.hash():
                raise SimgapError(
                    f"{study_dir}: holds a study of a different config "
                    f"({handle.config.name}, hash {handle.config.hash()}); use another --out"
                )
        else:
            handle = _new_study(config, study_dir, storage, tracking_uri)
        sync_grid(handle)
    return handle


def _new_study(config, study_dir: Path, storage, tracking_uri) -> StudyHandle:
    url = _resolve_storage_url(storage or config.storage, study_dir)
    uri = tracking_uri or config.tracking_uri or tracking.default_tracking_uri(study_dir)
    handle = StudyHandle(
        config=config,
        storage_url=url,
        study_name=f"{config.name}-{config.hash()[:8]}",
        cache_dir=study_dir.resolve() / "cache",
        tracking_uri=uri,
        experiment=f"simgap/{config.name}",
        artifact_location=tracking.artifact_location_for(uri),
        study_dir=study_dir.resolve(),
    )
    study = optuna.create_study(
        study_name=handle.study_name,
        storage=handle.storage,
        sampler=optuna.samplers.GridSampler(search_space(config), seed=0),
        direction="maximize",
        load_if_exists=True,
    )
    handle.parent_run_id = handle.tracking().parent_run(
        handle.study_name, {"config": config.model_dump(mode="json")}
    )
    for key, value in {**handle.info(), "config": config.model_dump(mode="json")}.items():
        study.set_user_attr(key, value)
    _write_atomic(study_dir / CONFIG_YAML, config.to_yaml())
    _write_atomic(study_dir / STUDY_JSON, json.dumps(handle.info(), indent=2) + "\n")
    return handle


def open_study(
    target: str | Path,
    study_name: str | None = None,
    cache_dir: str | Path | None = None,
    tracking_uri: str | None = None,
) -> StudyHandle:
    """Open an existing study from its folder or from a storage URL (a remote worker)."""
    path = Path(str(target)).expanduser()
    if path.is_dir():
        meta_path = path / STUDY_JSON
        if not meta_path.is_file():
            raise SimgapError(f"{path}: not a study folder (no {STUDY_JSON}); run `simgap study run`")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise SimgapError(f"{meta_path}: invalid JSON ({exc.msg})") from None
        config = load_config(path / CONFIG_YAML)
        return StudyHandle(
            config=config,
            storage_url=meta["storage"],
            study_name=meta["study_name"],
            cache_dir=Path(cache_dir) if cache_dir else path.resolve() / "cache",
            tracking_uri=tracking_uri or meta["tracking_uri"],
            experiment=meta["experiment"],
            artifact_location=meta.get("artifact_location"),
            parent_run_id=meta.get("parent_run_id"),
            study_dir=path.resolve(),
        )
    url = _resolve_storage_url(str(target), None)
    storage = open_storage(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
             if "config_hash" in s.user_attrs]
    if study_name is None:
        if len(names) != 1:
            raise SimgapError(
                f"{target}: holds {len(names)} simgap studies ({', '.join(names) or 'none'}); "
                "pick one with --study NAME"
            )
        study_name = names[0]
    elif study_name not in names:
        raise SimgapError(f"--study: {study_name!r} is not a simgap study in {target}")
    attrs = optuna.load_study(study_name=study_name, storage=storage).user_attrs
    config = parse_config(attrs["config"], f"{target} (study {study_name})")
    return StudyHandle(
        config=config,
        storage_url=url,
        study_name=study_name,
        cache_dir=Path(cache_dir or Path.cwd() / "simgap-cache" / study_name).resolve(),
        tracking_uri=tracking_uri or attrs["tracking_uri"],
        experiment=attrs["experiment"],
        artifact_location=attrs.get("artifact_location"),
        parent_run_id=attrs.get("parent_run_id"),
    )


# ---------------------------------------------------------------------------------- queue
def _cell_of(trial: optuna.trial.FrozenTrial) -> str | None:
    return trial.user_attrs.get("cell")


def sync_grid(handle: StudyHandle) -> int:
    """Queue every cell without a COMPLETE, WAITING or RUNNING trial; returns how many.

    Call it from one process at a time (``create_study`` holds the study-folder lock)."""
    study = handle.study
    requeue_stale(handle)
    trials = study.get_trials(deepcopy=False)
    covered = {_cell_of(t) for t in trials if t.state in LIVE}
    missing = [c for c in grid_cells(handle.config) if c.id not in covered]
    _enqueue(handle, missing, {})
    return len(missing)


def _enqueue(handle: StudyHandle, cells: list, extra_attrs: dict) -> None:
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


def _process_start(pid: int) -> str | None:
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


def _worker_identity() -> dict:
    """Who runs a trial: host (+ boot id, so two machines sharing a hostname differ), pid and
    process start time."""
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(),
            "start": _process_start(os.getpid())}


def _is_stale(trial, now: float, stale_after: float) -> bool:
    worker = trial.user_attrs.get("worker")
    if not worker:  # claimed but not yet started: judge by the claim time
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        return now - started > stale_after
    if worker.get("host") == socket.gethostname() and worker.get("boot", "") == _boot_id():
        start = _process_start(int(worker["pid"]))
        if start is None or (start != "?" and start != worker.get("start")):
            return True
    return now - float(trial.user_attrs.get("heartbeat", now)) > stale_after


def requeue_stale(handle: StudyHandle) -> list[str]:
    """Fail RUNNING trials whose worker is gone and queue their cells again."""
    study, storage = handle.study, handle.storage
    now = time.time()
    stale_after = handle.config.grid.stale_after_s
    requeued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _is_stale(trial, now, stale_after):
            continue
        if _fail(storage, trial._trial_id):
            _requeue(handle, trial, "worker gone")
            requeued.append(_cell_of(trial))
    return requeued


def _fail(storage, trial_id: int) -> bool:
    """Atomically RUNNING -> FAIL; False if someone else finished the trial first."""
    try:
        return bool(storage.set_trial_state_values(trial_id, TrialState.FAIL))
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def _requeue(handle: StudyHandle, trial, reason: str) -> None:
    cell = _cell_of(trial)
    log.warning("re-queueing cell %s (trial %d: %s)", cell, trial.number, reason)
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        try:
            handle.tracking().set_status(run_id, "KILLED")
        except Exception as exc:  # noqa: BLE001 - best effort; the trial state is what counts
            log.warning("could not mark MLflow run %s killed: %s", run_id, _line(exc))
    cells = [c for c in grid_cells(handle.config) if c.id == cell]
    _enqueue(handle, cells, {"retry_of": trial.number})


def _claim(handle: StudyHandle, last_group: tuple | None) -> optuna.Trial | None:
    """Claim a WAITING trial (atomic).  Prefer the sim model this worker used last, then cells
    whose sim model no running cell is building, so workers spread over models."""
    study, storage = handle.study, handle.storage
    trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
    busy = {_group(t.system_attrs["fixed_params"]) for t in trials
            if t.state == TrialState.RUNNING and "fixed_params" in t.system_attrs}
    waiting = [t for t in trials if t.state == TrialState.WAITING]

    def rank(t):
        g = _group(t.system_attrs.get("fixed_params", {}))
        return (0 if g == last_group else 1 if g not in busy else 2, t.number)

    for t in sorted(waiting, key=rank):
        try:
            if storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                return optuna.Trial(study, t._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def _group(params: dict) -> tuple:
    return params.get("policy"), params.get("seed")


def _duplicate_of(handle: StudyHandle, trial: optuna.Trial, cell_id: str) -> int | None:
    for other in handle.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                 TrialState.RUNNING)):
        if (
            other.number != trial.number
            and _cell_of(other) == cell_id
            and (other.state == TrialState.COMPLETE or other.number < trial.number)
        ):
            return other.number
    return None


# ---------------------------------------------------------------------------------- worker
Runner = Callable[..., dict]


class _Heartbeat(threading.Thread):
    def __init__(self, storage, trial_id: int, interval: float):
        super().__init__(daemon=True)
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(self.interval):
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
            except Exception as exc:  # noqa: BLE001 - finished meanwhile, or a storage hiccup
                log.debug("heartbeat of trial %d not recorded: %s", self.trial_id, _line(exc))


def _default_runner() -> Runner:
    from studies.cells import run_cell

    return run_cell


def trial_counts(handle: StudyHandle) -> dict[str, int]:
    """Number of trials per state name (COMPLETE, RUNNING, WAITING, FAIL, PRUNED)."""
    counts: dict[str, int] = {}
    for t in handle.study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


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
    runner = runner or _default_runner()
    tracker = handle.tracking()
    done = 0
    last_group = None
    while max_cells is None or done < max_cells:
        stopping.check()
        requeue_stale(handle)
        trial = None
        try:
            trial = _claim(handle, last_group)
            if trial is None:
                state = trial_counts(handle)
                if not wait or not (state.get("RUNNING", 0) or state.get("WAITING", 0)):
                    break
                with stopping.interruptible():
                    time.sleep(poll_s)
                continue
            params = {axis: trial.suggest_categorical(axis, vals)
                      for axis, vals in search_space(handle.config).items()}
            last_group = _group(params)
            if _run_trial(handle, trial, Cell(**params), runner, tracker):
                done += 1
        except (KeyboardInterrupt, SystemExit):
            if trial is not None and _fail(handle.storage, trial._trial_id):
                _requeue(handle, handle.storage.get_trial(trial._trial_id), "worker stopped")
            raise
    return done


def _run_trial(handle, trial: optuna.Trial, cell: Cell, runner: Runner, tracker) -> bool:
    storage = handle.storage
    other = _duplicate_of(handle, trial, cell.id)
    if other is not None:
        trial.set_user_attr("duplicate_of", other)
        handle.study.tell(trial, state=TrialState.PRUNED)
        return False
    trial.set_user_attr("worker", _worker_identity())
    trial.set_user_attr("heartbeat", time.time())
    beat = _Heartbeat(storage, trial._trial_id, handle.config.grid.heartbeat_s)
    beat.start()
    run = None
    t0 = time.time()
    try:
        run = tracker.start_cell(
            handle.parent_run_id,
            cell.id,
            {"simgap.trial": str(trial.number), "simgap.study": handle.study_name},
            {**cell.params, "percent": cell.percent, "variant": cell.variant},
        )
        trial.set_user_attr("mlflow_run_id", run.run_id)
        log.debug("cell %s (trial %d)", cell.id, trial.number)
        with stopping.interruptible():  # SIGTERM / Ctrl-C stop the computation at once
            metrics = runner(handle, cell, run)
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics["cell_seconds"] = time.time() - t0
        run.log_metrics(metrics)
        trial.set_user_attr("metrics", metrics)
        objective = handle.config.primary_metric
        handle.study.tell(trial, metrics[objective])
        run.end("FINISHED")
        total = len(grid_cells(handle.config))
        done = grid_summary(handle)["complete"]
        log.info("[%d/%d] %s: %s = %.4f (%.0f s)", done, total, cell.id, objective,
                 metrics[objective], metrics["cell_seconds"])
        return True
    except optuna.exceptions.UpdateFinishedTrialError:
        log.warning("cell %s: trial %d was taken over meanwhile", cell.id, trial.number)
        return False
    except Exception as exc:  # noqa: BLE001 - a failing cell must not stop the worker
        message = _line(exc)
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
    handle = open_study(target, study_name, cache_dir, tracking_uri)
    return work(handle, wait=wait)


# ---------------------------------------------------------------------------------- study run
def grid_summary(handle: StudyHandle) -> dict:
    trials = handle.study.get_trials(deepcopy=False)
    complete = {_cell_of(t) for t in trials if t.state == TrialState.COMPLETE}
    cells = grid_cells(handle.config)
    failed = sorted({_cell_of(t) for t in trials if t.state == TrialState.FAIL} - complete)
    return {
        "cells": len(cells),
        "complete": sum(c.id in complete for c in cells),
        "failed": failed,
        "errors": {_cell_of(t): t.user_attrs["error"] for t in trials
                   if t.state == TrialState.FAIL and "error" in t.user_attrs
                   and _cell_of(t) not in complete},
    }


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
    handle = create_study(config, out, storage, tracking_uri)
    if workers <= 1:
        stopping.install()
        work(handle, runner=runner)
    else:
        _run_processes(out, workers, tracking_uri)
    summary = grid_summary(handle)
    complete = summary["complete"] == summary["cells"]
    if report and summary["complete"]:
        from studies.report import build_report

        summary["report"] = str(build_report(out, tracking_uri=tracking_uri))
    if handle.parent_run_id:
        handle.tracking().set_status(handle.parent_run_id, "FINISHED" if complete else "FAILED")
    return summary


def _run_processes(out: Path, workers: int, tracking_uri: str | None) -> None:
    cmd = [sys.executable, "-m", "harness.cli", "study", "worker", str(out),
           "--parent-pid", str(os.getpid())]
    if tracking_uri:
        cmd += ["--tracking-uri", tracking_uri]
    from harness.runtime import configure_threads

    threads = str(configure_threads(workers))  # cores // workers each: no oversubscription
    env = {"SIMGAP_THREADS": threads, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           **os.environ}
    procs = [subprocess.Popen(cmd, env=env) for _ in range(workers)]

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
