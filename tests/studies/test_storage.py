"""Study folders and storage URLs."""

from __future__ import annotations

import json
import shutil

import pytest

from harness.errors import SimgapError
from studies import storage, urls
from tests.studies.tiny import study_of


def test_open_study_rejects_a_changed_config(tmp_path):
    study_of(tmp_path)
    with pytest.raises(SimgapError, match="different config"):
        study_of(tmp_path, seeds=[0, 1, 2])


def test_storage_urls(tmp_path):
    folder = tmp_path.resolve()
    assert storage.resolve_storage_url(None, tmp_path) == f"sqlite:///{folder}/optuna.db"
    assert storage.resolve_storage_url("grid.log", tmp_path) == f"journal:{folder}/grid.log"
    assert storage.resolve_storage_url("journal:/x/y", None) == "journal:/x/y"
    assert storage.resolve_storage_url("postgresql://h/db", tmp_path) == (
        "postgresql+psycopg://h/db")
    with pytest.raises(SimgapError, match="no study folder"):
        storage.resolve_storage_url(None, None)


def test_study_folder_opens_and_remote_handle_matches(tmp_path):
    handle = study_of(tmp_path, seeds=[0], methods=["finetune-head"])
    again = storage.open_study(tmp_path / "study")
    remote = storage.open_study(handle.storage_url)  # a worker given only the storage URL
    assert again.info() == handle.info() == remote.info()
    assert remote.config == handle.config and remote.study_dir is None
    with pytest.raises(SimgapError, match="not a study folder"):
        storage.open_study(tmp_path)


def test_folder_relative_urls_round_trip(tmp_path):
    folder = tmp_path.resolve() / "study"
    for absolute, relative in ((f"sqlite:///{folder}/optuna.db", "sqlite:///optuna.db"),
                               (f"journal:{folder}/logs/grid.log", "journal:logs/grid.log")):
        assert urls.in_folder(absolute, folder) == relative
        assert urls.from_folder(relative, tmp_path / "moved") == absolute.replace(
            str(folder), str(tmp_path.resolve() / "moved"))
        assert urls.folder_of(absolute, relative) == folder
    assert urls.in_folder((folder / "mlruns").as_uri(), folder) == "mlruns"
    assert urls.from_folder("mlruns", folder, bare_path=True) == (folder / "mlruns").as_uri()
    for other in ("sqlite:////elsewhere/x.db", "postgresql+psycopg://u@h/db", "http://h:5000"):
        assert urls.in_folder(other, folder) == other == urls.from_folder(other, folder, True)
    assert urls.folder_of(f"sqlite:///{folder}/x.db", "sqlite:///optuna.db") is None


def test_moved_folder_opens_its_own_stores(tmp_path):
    handle = study_of(tmp_path, seeds=[0], methods=["finetune-head"])
    info = handle.info()
    assert (info["storage"], info["tracking_uri"], info["artifact_location"]) == (
        "sqlite:///optuna.db", "sqlite:///mlflow.db", "mlruns")
    moved = (tmp_path / "moved").resolve()
    shutil.move(tmp_path / "study", moved)
    for again in (storage.open_study(moved), storage.open_study(f"sqlite:///{moved}/optuna.db")):
        assert again.storage_url == f"sqlite:///{moved}/optuna.db"
        assert again.tracking_uri == f"sqlite:///{moved}/mlflow.db"
        assert again.artifact_location == (moved / "mlruns").as_uri()
        assert again.info() == info
    assert not (tmp_path / "study").exists()
    (moved / "optuna.db").unlink()
    with pytest.raises(SimgapError, match="Optuna storage .* is missing"):
        storage.open_study(moved)
    with pytest.raises(SimgapError, match="no such storage file"):
        storage.open_study(f"sqlite:///{moved}/optuna.db")
    assert not (moved / "optuna.db").exists()


def test_folder_from_before_relative_paths_uses_its_own_stores(tmp_path):
    """study.json written with absolute paths (before): a moved folder still opens its own."""
    handle = study_of(tmp_path, seeds=[0], methods=["finetune-head"])
    old = (tmp_path / "study").resolve()
    meta = {**handle.info(), "storage": f"sqlite:///{old}/optuna.db",
            "tracking_uri": f"sqlite:///{old}/mlflow.db",
            "artifact_location": (old / "mlruns").as_uri()}
    (old / storage.STUDY_JSON).write_text(json.dumps(meta))
    moved = (tmp_path / "moved").resolve()
    shutil.copytree(old, moved)
    again = storage.open_study(moved)
    assert again.storage_url == f"sqlite:///{moved}/optuna.db"
    assert again.tracking_uri == f"sqlite:///{moved}/mlflow.db"
    assert again.artifact_location == (moved / "mlruns").as_uri()
    assert storage.open_study(old).storage_url == f"sqlite:///{old}/optuna.db"
