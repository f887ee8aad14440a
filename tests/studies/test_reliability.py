"""Issue 16: study folders that are not ours, passwords in URLs, the MLflow template from a
shared cache."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from harness.cli import main
from harness.errors import SimgapError
from studies import queue, storage, tracking, urls, worker
from studies.config import parse_config
from studies.worker import prepare_study, run_study
from tests.studies.tiny import TINY

ROOT = Path(__file__).resolve().parents[2]
SMALL = {**{k: v for k, v in TINY.items() if k != "adapt"}, "seeds": [0],
         "methods": ["finetune-head"], "fractions": [0]}


def _config_file(tmp_path, **changes):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**SMALL, **changes}))
    return path


# ------------------------------------------------------------------ item 1: foreign folders
def test_run_refuses_a_foreign_folder_and_removes_nothing(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "report").mkdir(parents=True)
    (out / "report" / "notes.md").write_text("my notes")
    code = main(["study", "run", str(_config_file(tmp_path)), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "not a simgap study" in err and "'report'" in err
    assert (out / "report" / "notes.md").read_text() == "my notes"
    assert sorted(p.name for p in out.rglob("*")) == ["notes.md", "report"]  # no lock left
    with pytest.raises(SimgapError, match="not a simgap study"):
        run_study(parse_config(SMALL), out, report=False, runner=lambda *a: {})


def test_run_out_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    code = main(["study", "run", str(_config_file(tmp_path)), "--out", str(target)])
    assert code == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert target.read_text() == "x"


def test_empty_folder_and_study_folder_are_accepted(tmp_path):
    (tmp_path / "study").mkdir()
    handle = prepare_study(parse_config(SMALL), tmp_path / "study")
    (tmp_path / "study" / "report").mkdir()  # a study's own report folder
    again = prepare_study(parse_config(SMALL), tmp_path / "study")
    assert again.study_name == handle.study_name


# ------------------------------------------------------------------ item 3: passwords
def test_urls_are_masked_and_stripped():
    url = "postgresql+psycopg://alice:s3cr%40t@db.lan:5432/simgap"
    assert urls.mask_url(f"cannot open {url}") == (
        "cannot open postgresql+psycopg://alice:***@db.lan:5432/simgap")
    assert urls.split_password(url) == ("postgresql+psycopg://alice@db.lan:5432/simgap", "s3cr%40t")
    assert urls.split_password("sqlite:////a/b.db") == ("sqlite:////a/b.db", None)


def test_export_password_moves_secrets_to_the_environment(monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    bare = urls.export_password("postgresql://alice:s3cr%40t@db/simgap")
    assert bare == "postgresql://alice@db/simgap" and os.environ["PGPASSWORD"] == "s3cr@t"
    assert urls.export_password("https://bob:pw@mlflow.lan") == "https://mlflow.lan"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "bob"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "pw"
    assert urls.export_password(None) is None


def test_password_in_another_scheme_is_refused():
    """Only postgres and http(s) passwords can move to the environment: any other would end up
    on the workers' command lines."""
    with pytest.raises(SimgapError) as info:
        urls.export_password("mysql+pymysql://u:hunter2@db.lan/simgap")
    message = str(info.value)
    assert message.startswith("--storage / --tracking-uri: mysql+pymysql://u:***@")
    assert "hunter2" not in message and "\n" not in message
    assert urls.export_password("mysql+pymysql://u@db.lan/simgap") == "mysql+pymysql://u@db.lan/simgap"


def test_storage_error_does_not_print_the_password():
    with pytest.raises(SimgapError) as info:
        storage.open_storage("postgresql://alice:hunter2@127.0.0.1:1/simgap")
    assert "hunter2" not in str(info.value) and "alice:***@" in str(info.value)


def test_no_password_is_stored(tmp_path):
    """study.json and the Optuna study attributes both hold ``info()``: no password in it."""
    handle = storage.StudyHandle(
        config=parse_config(SMALL), storage_url="postgresql://alice:hunter2@db/simgap",
        study_name="s", cache_dir=tmp_path, tracking_uri="https://bob:pw2@mlflow.lan",
        experiment="simgap/s")
    info = json.dumps(handle.info())
    assert "hunter2" not in info and "pw2" not in info
    assert handle.info()["storage"] == "postgresql://alice@db/simgap"


# ------------------------------------------------------------------ item 2: MLflow template
def test_template_writable_by_others_is_not_copied(tmp_path, monkeypatch):
    import mlflow

    cache = tmp_path / "cache"
    monkeypatch.setenv("SIMGAP_CACHE", str(cache))
    tracking.prepare_sqlite_store(f"sqlite:///{tmp_path / 'a.db'}")
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    assert template.stat().st_mode & 0o022 == 0  # made private to write
    template.chmod(0o666)  # planted or loosened: someone else could have written it
    template.write_bytes(b"planted")
    tracking.prepare_sqlite_store(f"sqlite:///{tmp_path / 'b.db'}")
    assert (tmp_path / "b.db").read_bytes() != b"planted"
    tracking.Tracking(f"sqlite:///{tmp_path / 'b.db'}", "x")  # a working store all the same
    template.chmod(0o644)
    tracking.prepare_sqlite_store(f"sqlite:///{tmp_path / 'c.db'}")
    assert (tmp_path / "c.db").read_bytes() == b"planted"  # our own, private: copied


# ------------------------------------------------------------------ item 5: crash windows
def test_worker_killed_between_claim_and_start_is_requeued_at_once(tmp_path):
    handle = prepare_study(parse_config(SMALL), tmp_path / "study")
    code = ("import os, sys; from studies import queue; from studies.storage import open_study; "
            "t = queue.claim(open_study(sys.argv[1]), None); print(t.number, flush=True); "
            "os._exit(9)")  # killed before mark_started
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "study")],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    number = int(proc.stdout.split()[0])
    trial = handle.study.get_trials(deepcopy=False)[number]
    assert trial.state == TrialState.RUNNING and "worker" not in trial.user_attrs
    assert queue.requeue_stale(handle) == [trial.user_attrs["cell"]]  # no stale_after_s wait


def test_claim_by_a_live_process_is_not_stale(tmp_path):
    handle = prepare_study(parse_config(SMALL), tmp_path / "study")
    queue.claim(handle, None)
    assert queue.requeue_stale(handle) == []


def _cell_run(handle, trial, record: bool):
    cell = trial.user_attrs["cell"]
    run = handle.tracking().start_cell(handle.parent_run_id, cell,
                                       {"simgap.trial": str(trial.number)}, {})
    if record:
        trial.set_user_attr("mlflow_run_id", run.run_id)
    return run


def test_orphan_runs_are_ended_on_start_up(tmp_path):
    config = parse_config(SMALL)
    handle = prepare_study(config, tmp_path / "study")
    tracker = handle.tracking()
    # killed between creating the run and recording its id; the trial is then re-queued
    lost = queue.claim(handle, None)
    queue.mark_started(lost)
    orphan = _cell_run(handle, lost, record=False)
    queue.hand_back(handle, lost, "worker gone")
    # killed between tell(COMPLETE) and ending the run
    done = queue.claim(handle, None)
    queue.mark_started(done)
    finished = _cell_run(handle, done, record=True)
    handle.study.tell(done, 0.5)
    # a live worker's run is left alone
    live = queue.claim(handle, None)
    queue.mark_started(live)
    running = _cell_run(handle, live, record=True)
    prepare_study(config, tmp_path / "study")  # the next start
    status = {r: tracker.get_run(r).info.status
              for r in (orphan.run_id, finished.run_id, running.run_id)}
    assert status == {orphan.run_id: "KILLED", finished.run_id: "FINISHED",
                      running.run_id: "RUNNING"}


def test_cells_complete_after_a_hand_back(tmp_path):
    """Every grid point has a finished trial once the last cell completes after a re-queue:
    GridSampler's stop() used to raise in tell, so the cell counted as failed, its run FAILED."""
    handle = prepare_study(parse_config(SMALL), tmp_path / "study")
    queue.hand_back(handle, queue.claim(handle, None), "worker stopped")
    assert worker.work(handle, lambda *_: {"real_test_acc": 0.5}) == 2
    runs = handle.tracking().find_run("simgap.kind", "cell", handle.parent_run_id)
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]


# ------------------------------------------------------------------ item 4: disk full
def _full_disk(path):
    def runner(_handle, _cell, _run):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return runner


def _storage_full(_handle, _cell, _run):
    try:
        raise sqlite3.OperationalError("database or disk is full")
    except sqlite3.OperationalError as exc:
        raise optuna.exceptions.StorageInternalError("An exception is raised") from exc


@pytest.mark.parametrize("kind", ["file", "storage"])
def test_disk_full_is_one_line_and_the_cell_is_queued_again(tmp_path, kind):
    handle = prepare_study(parse_config(SMALL), tmp_path / "study")
    target = tmp_path / "study" / "cache" / "model.pt"
    runner = _full_disk(target) if kind == "file" else _storage_full
    with pytest.raises(SimgapError) as info:
        worker.work(handle, runner)
    expected = str(target) if kind == "file" else str(tmp_path / "study" / "optuna.db")
    assert str(info.value).startswith(f"{expected}: no space left on device")
    assert "\n" not in str(info.value)
    trials = handle.study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1
    retry = [t for t in trials if t.user_attrs.get("retry_of") == failed[0].number]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING
    run = handle.tracking().get_run(failed[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert worker.work(handle, lambda *_: {"real_test_acc": 0.5}) == 2  # space freed: resumes
    assert not list((tmp_path / "study").glob(".*tmp*"))


def test_cli_turns_enospc_into_one_line(monkeypatch, capsys):
    import studies.cli

    def full(_args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/x.pt")

    monkeypatch.setattr(studies.cli, "run_worker", lambda *a, **k: full(None))
    assert main(["study", "worker", "/nowhere"]) == 2
    assert capsys.readouterr().err.strip() == (
        "simgap: error: /data/x.pt: no space left on device")


def test_missing_postgres_driver_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed: import fails
    with pytest.raises(SimgapError, match=r"pip install 'simgap\[postgres\]'"):
        storage.open_storage(storage.resolve_storage_url("postgresql://u@127.0.0.1:1/x", None))
