"""MLflow tracking of a study: one parent run per study, one nested run per cell.

Default store: ``sqlite:///<study>/mlflow.db`` with artifacts in ``<study>/mlruns/``; any MLflow
tracking URI (e.g. ``http://host:5000``) can replace it.  Several worker processes may log into one
SQLite file, so every call is retried while the database is locked.

Cell runs carry the tags ``simgap.cell`` (the cell id) and ``simgap.trial`` (the Optuna trial
number); the parent run carries ``simgap.study`` (storage study name).  Every run carries
MLflow's standard tags (:func:`studies.lineage.standard_tags`: user, source, git commit).
Metrics logged per cell: per-epoch curves (step = epoch), the final numbers (no step), and
``curve/<metric>`` at step = the labelled real images of its fraction; the study run gets the
mean of each fraction-curve point as ``curve/<policy>/<method>/<metric>`` at the same step as
soon as all cells of the point are done (:mod:`studies.live`).

A SQLite store keeps absolute artifact locations; when its folder was moved or copied (the
database no longer beside the ``mlruns/`` its experiment names), opening it points the
experiment, its runs and models at the ``mlruns/`` beside the database (:func:`follow_folder`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from filelock import FileLock

from harness.data import cache_dir
from harness.errors import SimgapError
from harness.files import atomic_write
from studies import stopping
from studies.lineage import standard_tags
from studies.urls import mask_url

T = TypeVar("T")
MAX_PARAM_LENGTH = 6000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def default_tracking_uri(study_dir: Path) -> str:
    return f"sqlite:///{Path(study_dir).resolve() / 'mlflow.db'}"


def artifact_location_for(uri: str) -> str | None:
    """Artifacts of a SQLite store go to ``mlruns/`` next to the database file (never to the
    working directory of whichever process creates the experiment); a server decides itself."""
    path = _sqlite_path(uri)
    return None if path is None else (path.resolve().parent / "mlruns").as_uri()


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def prepare_sqlite_store(uri: str) -> None:
    """Create a new SQLite tracking database by copying an empty, fully migrated one.

    Creating the schema runs all of MLflow's migrations, which is slow; the empty database is
    made once per MLflow version under the simgap cache folder and copied (MLflow checks the
    schema version whenever it opens a store, so a stale template cannot go unnoticed).  The
    template is copied only if this user owns it and nobody else can write it (checked on the
    open file, so it cannot be swapped between check and copy); otherwise the store is
    migrated in place."""
    import mlflow

    path = _sqlite_path(uri)
    if path is None or path.exists():
        return
    template = cache_dir() / f"mlflow-{mlflow.__version__}-empty.db"
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(template) + ".lock"):
            if not template.exists():
                atomic_write(template, _migrate, mode=0o644)  # not writable by others
    except OSError:  # a cache we cannot write: no template
        pass
    source = _open_private(template)
    if source is None:
        atomic_write(path, _migrate)
        return
    with source:
        atomic_write(path, lambda tmp: _copy_from(source, tmp))


def follow_folder(db: Path, experiment_id: str, old: str, new: str) -> None:
    """Point the artifact root of an experiment of the SQLite store ``db`` and the artifact
    URIs of its runs and logged models from ``old`` to ``new``, in one transaction (the store
    was moved or copied with its ``mlruns/``; the old place is never read or written again)."""
    import sqlite3

    con = sqlite3.connect(db, timeout=120, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        exp = int(experiment_id)
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                    (new, exp))
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master")}
        for table, column in (("runs", "artifact_uri"), ("logged_models", "artifact_location")):
            if table in tables:
                con.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                    f"WHERE experiment_id = ? AND substr({column}, 1, ?) = ?",
                    (new.rstrip("/") + "/", len(old.rstrip("/")) + 2, exp,
                     len(old.rstrip("/")) + 1, old.rstrip("/") + "/"),
                )
        con.execute("COMMIT")
    finally:
        con.close()
    logging.getLogger("simgap.studies").info("MLflow artifacts: %s now (was %s)", new, old)


def _migrate(tmp: Path) -> None:
    """Fill the empty file ``tmp`` with MLflow's schema."""
    from mlflow import MlflowClient

    retry(MlflowClient, tracking_uri=f"sqlite:///{tmp}").search_experiments()


def _open_private(path: Path):
    """``path`` opened for reading if it is a regular file owned by this user and not writable
    by group or others; None otherwise (missing, foreign, or writable by someone else)."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - returned to the caller
    except OSError:
        return None
    st = os.fstat(handle.fileno())
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        handle.close()
        return None
    return handle


def _copy_from(source, tmp: Path) -> None:
    with open(tmp, "wb") as dst:
        shutil.copyfileobj(source, dst)


def _check_reachable(uri: str, timeout: float = 5.0) -> None:
    """An MLflow server that does not answer fails now, not after MLflow's retries (minutes)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise SimgapError(
            f"tracking_uri {mask_url(uri)}: the MLflow server does not answer "
            f"({exc.strerror or type(exc).__name__})"
        ) from None


def _quiet() -> None:
    for name in ("mlflow", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


def retry(fn: Callable[..., T], *args, attempts: int = 30, **kwargs) -> T:
    """Call ``fn`` again (backing off up to ~1 s) while a SQLite store reports it is locked."""
    for i in range(attempts):
        try:
            with stopping.protected():  # never leave the store mid-transaction
                return fn(*args, **kwargs)
        except Exception as exc:  # MlflowException / sqlalchemy OperationalError wrap the lock
            if "locked" not in str(exc).lower() or i == attempts - 1:
                raise
            time.sleep(min(1.0, 0.05 * 2**i))
    raise AssertionError("unreachable")


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts -> {"a.b": "value"} strings (MLflow params), lists as their repr."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:MAX_PARAM_LENGTH]
    return out


class Tracking:
    """An MLflow client bound to one experiment (created on first use, race-safe); its runs
    name ``source`` as their ``mlflow.source.name``."""

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None,
                 source: str = "simgap study"):
        _quiet()
        from mlflow import MlflowClient

        self.uri = uri
        self.experiment = experiment
        self.source = source
        _check_reachable(uri)
        try:
            prepare_sqlite_store(uri)
            self.client = retry(MlflowClient, tracking_uri=uri)
            self.experiment_id = self._experiment(artifact_location or artifact_location_for(uri))
        except Exception as exc:  # noqa: BLE001 - stores raise assorted errors for a bad URI
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SimgapError(
                f"tracking_uri {mask_url(uri)}: cannot open the MLflow store ({mask_url(msg)})"
            ) from None

    def _experiment(self, artifact_location: str | None) -> str:
        found = retry(self.client.get_experiment_by_name, self.experiment)
        if found is not None:
            beside = artifact_location_for(self.uri)
            old = found.artifact_location or ""
            if (artifact_location == beside and old != beside and old.startswith("file://")
                    and old.rstrip("/").endswith("/mlruns")):
                retry(follow_folder, _sqlite_path(self.uri), found.experiment_id, old, beside)
            return found.experiment_id
        try:
            return retry(self.client.create_experiment, self.experiment, artifact_location)
        except Exception:  # created meanwhile by another worker
            found = retry(self.client.get_experiment_by_name, self.experiment)
            if found is None:
                raise
            return found.experiment_id

    # ------------------------------------------------------------------ runs
    def find_run(self, tag: str, value: str, parent: str | None = None):
        query = f"tags.`{tag}` = '{value}'"
        if parent:
            query += f" and tags.`mlflow.parentRunId` = '{parent}'"
        runs = retry(self.client.search_runs, [self.experiment_id], query, max_results=1000)
        return sorted(runs, key=lambda r: r.info.start_time or 0)

    def running_cells(self, parent: str | None) -> list:
        """The cell runs still marked RUNNING (under ``parent`` if given)."""
        query = "tags.`simgap.kind` = 'cell' and attributes.status = 'RUNNING'"
        if parent:
            query += f" and tags.`mlflow.parentRunId` = '{parent}'"
        return retry(self.client.search_runs, [self.experiment_id], query, max_results=5000)

    def parent_run(self, study_name: str, params: Mapping[str, Any]) -> str:
        """The study's parent run (created once; set RUNNING again when a study resumes)."""
        existing = self.find_run("simgap.study", study_name)
        existing = [r for r in existing if "mlflow.parentRunId" not in r.data.tags]
        if existing:
            run_id = existing[0].info.run_id
            retry(self.client.update_run, run_id, status="RUNNING")
            return run_id
        run = retry(
            self.client.create_run,
            self.experiment_id,
            run_name=study_name,
            tags={**standard_tags(self.source), "simgap.study": study_name,
                  "simgap.kind": "study"},
        )
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def start_cell(
        self, parent_run_id: str | None, cell_id: str, tags: Mapping[str, str], params: Mapping
    ) -> CellRun:
        all_tags = {**standard_tags(self.source), "simgap.cell": cell_id, "simgap.kind": "cell",
                    **tags}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = retry(self.client.create_run, self.experiment_id, run_name=cell_id, tags=all_tags)
        cell_run = CellRun(self, run.info.run_id)
        cell_run.log_params(params)
        return cell_run

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            retry(self.client.log_batch, run_id, params=items[i : i + PARAMS_PER_BATCH])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, int(step or 0))
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        for i in range(0, len(items), METRICS_PER_BATCH):
            retry(self.client.log_batch, run_id, metrics=items[i : i + METRICS_PER_BATCH])

    def log_inputs(self, run_id: str, datasets: Iterable[Mapping[str, Any]]) -> None:
        """Datasets as run inputs: dicts of name, digest, source (a dict, stored as JSON),
        profile (a dict) and context (``mlflow.data.context``: train, validation, ...)."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = [DatasetInput(
            Dataset(d["name"], str(d["digest"])[:36], "local", json.dumps(d["source"]),
                    profile=json.dumps(d.get("profile", {}))),
            tags=[InputTag("mlflow.data.context", d["context"])]) for d in datasets]
        retry(self.client.log_inputs, run_id, datasets=inputs)

    def set_status(self, run_id: str, status: str) -> None:
        retry(self.client.set_terminated, run_id, status=status)

    def get_run(self, run_id: str):
        return retry(self.client.get_run, run_id)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        _forget_artifact_repo(run_id)
        if path.is_dir():
            retry(self.client.log_artifacts, run_id, str(path), artifact_path)
        else:
            retry(self.client.log_artifact, run_id, str(path), artifact_path)

    def download(self, run_id: str, artifact_path: str, dst: Path) -> Path | None:
        """Download an artifact of a run into ``dst``; None when the run has no such artifact."""
        dst.mkdir(parents=True, exist_ok=True)
        from mlflow.exceptions import MlflowException

        _forget_artifact_repo(run_id)

        try:
            return Path(retry(self.client.download_artifacts, run_id, artifact_path, str(dst)))
        except (MlflowException, OSError):
            return None


def _forget_artifact_repo(run_id: str) -> None:
    """MLflow caches each run's artifact location per process, by run id; a copied study folder
    holds the same run ids at another place, so the location is read from the store each time."""
    try:
        from mlflow.tracking._tracking_service import utils
    except ImportError:  # pragma: no cover - another MLflow layout: nothing cached there
        return
    cache = getattr(utils, "_artifact_repos_cache", None)
    if cache is not None:
        cache.pop(run_id, None)


class CellRun:
    """The nested run of one cell: what the cell runner logs into."""

    def __init__(self, tracking: Tracking, run_id: str):
        self.tracking = tracking
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.tracking.log_params(self.run_id, params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.tracking.log_metrics(self.run_id, metrics, step)

    def log_history(self, prefix: str, history: Iterable[Mapping[str, float]]) -> None:
        """Per-epoch rows (dicts with an ``epoch`` key) as ``prefix/<name>`` at step = epoch."""
        for row in history:
            epoch = int(row.get("epoch", 0))
            self.log_metrics({f"{prefix}/{k}": v for k, v in row.items() if k != "epoch"}, epoch)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.tracking.log_artifact(self.run_id, path, artifact_path)

    def log_inputs(self, datasets: Iterable[Mapping[str, Any]]) -> None:
        self.tracking.log_inputs(self.run_id, datasets)

    def end(self, status: str = "FINISHED") -> None:
        self.tracking.set_status(self.run_id, status)
