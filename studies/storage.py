"""Where a study lives: its Optuna storage, its folder (``study.json``, ``config.yaml``) and the
:class:`StudyHandle` every other part of a study works through.

Storage URLs: none -> SQLite in the study folder; ``journal:PATH`` or ``*.log`` / ``*.journal``
-> an Optuna journal file (relative to the study folder); anything else is an SQLAlchemy URL
(e.g. PostgreSQL), which lets workers on several machines share one study.  A remote worker
opens a study from the storage alone: the config and the tracking URI are stored as study user
attributes.

A study folder is relocatable: the stores inside it are stored relative to it
(:func:`studies.urls.in_folder`) and made absolute against the folder it is opened from, and the
MLflow artifact locations follow the folder (:mod:`studies.tracking`); a moved or copied folder
reads and writes only its own stores.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from filelock import FileLock

from harness.errors import SimgapError
from harness.files import read_json_object, write_json, write_text
from studies import tracking
from studies.config import StudyConfig, load_config, parse_config
from studies.grid import search_space
from studies.overrides import describe_changes
from studies.urls import (
    export_password,
    folder_of,
    from_folder,
    in_folder,
    mask_url,
    split_password,
)

__all__ = ["export_password", "mask_url", "split_password"]  # re-exported for callers

STUDY_JSON = "study.json"
CONFIG_YAML = "config.yaml"
#: A grid is a queue, not a search: its trial value is what a dashboard may rank without
#: inviting test-set selection; every metric is a trial user attribute (``metrics``, and the
#: primary one under its own name).
GRID_OBJECTIVE = "cell_seconds"

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------- folder
OWN_NAMES = frozenset({".study.lock", "optuna.db", "optuna.db-journal", "mlflow.db",
                       "mlflow.db-journal", "mlruns", CONFIG_YAML})


def check_study_folder(out: str | Path, flag: str = "--out") -> None:
    """A study goes into a new folder, an empty one, or a simgap study folder; never into a file
    or a folder of someone else's files (the report swap would remove them)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SimgapError(f"{flag} {out}: is a file, not a folder")
    if not out.is_dir() or (out / STUDY_JSON).is_file():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OWN_NAMES)
    if foreign:
        raise SimgapError(
            f"{flag} {out}: not empty and not a simgap study (holds {foreign[0]!r}); "
            "use a new or empty folder"
        )


# ---------------------------------------------------------------------------------- storage
def default_storage_url(study_dir: Path) -> str:
    return f"sqlite:///{Path(study_dir).resolve() / 'optuna.db'}"


def resolve_storage_url(spec: str | None, study_dir: Path | None) -> str:
    """``None`` -> SQLite in the study folder; ``journal:PATH`` / ``*.log`` -> a journal file
    (relative to the study folder); anything else is an SQLAlchemy URL, ``postgresql://`` with
    psycopg 3 (``postgresql+psycopg://``, whatever SQLAlchemy's default driver)."""
    if spec is None:
        if study_dir is None:
            raise SimgapError("storage: no study folder and no storage URL")
        return default_storage_url(study_dir)
    if spec.startswith("journal:") or spec.endswith((".log", ".journal")):
        path = Path(spec.removeprefix("journal:")).expanduser()
        if not path.is_absolute() and study_dir is not None:
            path = Path(study_dir).resolve() / path
        return f"journal:{path}"
    for plain in ("postgresql://", "postgres://"):  # the driver of the `postgres` extra
        if spec.startswith(plain):
            return "postgresql+psycopg://" + spec.removeprefix(plain)
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
        raise SimgapError(
            f"storage {mask_url(url)}: cannot open the Optuna storage "
            f"({mask_url(first_line(exc))}){_driver_hint(exc)}"
        ) from None
    _STORAGES[url] = storage
    return storage


def _driver_hint(exc: Exception) -> str:
    """A hint naming the package when the database driver is missing."""
    if "import DB access module" in str(exc) or isinstance(exc, ImportError):
        return "; install the driver (PostgreSQL: pip install 'simgap[postgres]', psycopg 3)"
    return ""


def _immediate_transactions(engine) -> None:
    """SQLite's default deferred transactions take the write lock late, so two writers can
    deadlock and one fails at once; BEGIN IMMEDIATE makes the second wait (up to the timeout)."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()


class QueueGridSampler(optuna.samplers.GridSampler):
    """GridSampler whose ``after_trial`` never calls ``study.stop()``: the queue decides when a
    study is done, and ``stop()`` outside ``optimize`` raises in ``tell`` (after the trial was
    stored COMPLETE) once every grid point has a finished trial, e.g. after a re-queue."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


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
    home: Path | None = None  # the study folder a worker opened by its storage URL found
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
                sampler=QueueGridSampler(search_space(self.config), seed=0),
            )
        return self._study

    def tracking(self) -> tracking.Tracking:
        return tracking.Tracking(self.tracking_uri, self.experiment, self.artifact_location)

    def info(self) -> dict:
        """What is stored (study.json, Optuna user attributes): URLs without passwords; with
        the storage inside the study folder, every store inside it relative to the folder."""
        home = self.study_dir or self.home
        if in_folder(self.storage_url, home) == self.storage_url:
            home = None  # a storage elsewhere: a remote worker needs absolute paths
        return {
            "study_name": self.study_name,
            "storage": in_folder(split_password(self.storage_url)[0], home),
            "tracking_uri": in_folder(split_password(self.tracking_uri)[0], home),
            "experiment": self.experiment,
            "artifact_location": in_folder(self.artifact_location, home),
            "parent_run_id": self.parent_run_id,
            "config_hash": self.config.hash(),
        }


# ---------------------------------------------------------------------------------- create / open
def study_lock(study_dir: str | Path) -> FileLock:
    """The lock of a study folder (created if missing): one process at a time creates or opens
    the study and queues its cells."""
    study_dir = Path(study_dir)
    check_study_folder(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(study_dir / ".study.lock"))


def create_study(
    config: StudyConfig,
    study_dir: str | Path,
    storage: str | None = None,
    tracking_uri: str | None = None,
) -> StudyHandle:
    """Create the study in ``study_dir`` or open it if it exists (same config required), and
    start (or reopen) the MLflow parent run.  Call it under :func:`study_lock`."""
    study_dir = Path(study_dir)
    check_study_folder(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    if not (study_dir / STUDY_JSON).exists():
        return _new_study(config, study_dir, storage, tracking_uri)
    handle = open_study(study_dir, tracking_uri=tracking_uri)
    if handle.config.hash() != config.hash():
        hint = "use another --out"
        if not any(t.state == optuna.trial.TrialState.COMPLETE
                   for t in handle.study.get_trials(deepcopy=False)):
            hint = f"no cell of it completed: `rm -r {study_dir}` starts over, or use another --out"
        fields = describe_changes(handle.config.model_dump(mode="json"),
                                  config.model_dump(mode="json"))
        raise SimgapError(
            f"{study_dir}: holds a study of a different config "
            f"({handle.config.name}, hash {handle.config.hash()}; changed: {fields}); {hint}"
        )
    return handle


def _new_study(config, study_dir: Path, storage, tracking_uri) -> StudyHandle:
    url = resolve_storage_url(storage or config.storage, study_dir)
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
        sampler=QueueGridSampler(search_space(config), seed=0),
        direction="minimize",  # the trial value is the cell's wall time, never a test score
        load_if_exists=True,
    )
    if study.metric_names is None:
        with warnings.catch_warnings():  # experimental in Optuna 4-5, unchanged since 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([GRID_OBJECTIVE])
    handle.parent_run_id = handle.tracking().parent_run(
        handle.study_name, {"config": config.model_dump(mode="json")}
    )
    for key, value in {**handle.info(), "config": config.model_dump(mode="json")}.items():
        study.set_user_attr(key, value)
    write_text(study_dir / CONFIG_YAML, config.to_yaml())
    write_json(study_dir / STUDY_JSON, handle.info())
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
        return _open_folder(path, cache_dir, tracking_uri)
    text = str(target)
    if "://" not in text and not text.startswith("journal:") and path.suffix not in (
            ".log", ".journal"):
        raise SimgapError(f"{target}: no such study folder (and not a storage URL)")
    return _open_url(str(target), study_name, cache_dir, tracking_uri)


def _open_folder(path: Path, cache_dir, tracking_uri) -> StudyHandle:
    meta_path = path / STUDY_JSON
    if not meta_path.is_file():
        raise SimgapError(f"{path}: not a study folder (no {STUDY_JSON}); run `simgap study run`")
    meta = read_json_object(meta_path)
    config = load_config(path / CONFIG_YAML)
    home = path.resolve()
    meta = _moved_from_old_place(meta, home)
    storage = from_folder(meta["storage"], home)
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).is_file():
        raise SimgapError(f"{path}: its Optuna storage {storage[len('sqlite:///'):]} is missing")
    return StudyHandle(
        config=config,
        storage_url=storage,
        study_name=meta["study_name"],
        cache_dir=Path(cache_dir) if cache_dir else home / "cache",
        tracking_uri=tracking_uri or from_folder(meta["tracking_uri"], home),
        experiment=meta["experiment"],
        artifact_location=from_folder(meta.get("artifact_location"), home, bare_path=True),
        parent_run_id=meta.get("parent_run_id"),
        study_dir=path.resolve(),
    )


def _moved_from_old_place(meta: dict, home: Path) -> dict:
    """``study.json`` of a folder written before paths were stored relative to it: a SQLite
    storage named by an absolute path elsewhere whose file this folder holds means the folder
    was moved or copied, so every path of the old folder is taken as one inside this one."""
    stored = meta["storage"]
    if not stored.startswith("sqlite:////"):
        return meta
    old = Path(stored.removeprefix("sqlite:///"))
    if old.parent == home or not (home / old.name).is_file():
        return meta
    keys = ("storage", "tracking_uri", "artifact_location")
    return {**meta, **{k: in_folder(meta.get(k), old.parent) for k in keys}}


def _open_url(target: str, study_name, cache_dir, tracking_uri) -> StudyHandle:
    url = resolve_storage_url(target, None)
    for scheme in ("sqlite:///", "journal:"):  # never create a storage file by opening it
        if url.startswith(scheme) and not Path(url.removeprefix(scheme)).is_file():
            raise SimgapError(f"{target}: no such storage file {url.removeprefix(scheme)}")
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
    home = folder_of(url, attrs["storage"])  # the storage file's study folder, wherever it is
    return StudyHandle(
        config=config,
        storage_url=url,
        study_name=study_name,
        cache_dir=Path(cache_dir or Path.cwd() / "simgap-cache" / study_name).resolve(),
        tracking_uri=tracking_uri or from_folder(attrs["tracking_uri"], home),
        experiment=attrs["experiment"],
        artifact_location=from_folder(attrs.get("artifact_location"), home, bare_path=True),
        parent_run_id=attrs.get("parent_run_id"),
        home=home,
    )
