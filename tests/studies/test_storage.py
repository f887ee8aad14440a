"""Study folders and storage URLs."""

from __future__ import annotations

import pytest

from harness.errors import SimgapError
from studies import storage
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
