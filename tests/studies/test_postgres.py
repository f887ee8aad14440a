"""Issue 16, item 8: a study on a real PostgreSQL (``$SIMGAP_TEST_POSTGRES``, which .ci/run
sets after starting a throw-away server on 127.0.0.1): two workers, one killed mid-cell; every
cell completes exactly once and the numbers equal those of the same study on SQLite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from optuna.trial import TrialState

from studies.config import parse_config
from studies.storage import open_study, resolve_storage_url
from studies.worker import prepare_study, run_study
from tests.studies.test_workers_bitwise import MINI, _results

ROOT = Path(__file__).resolve().parents[2]
BASE = os.environ.get("SIMGAP_TEST_POSTGRES")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not BASE, reason="no $SIMGAP_TEST_POSTGRES (.ci/run starts a server)"),
]


def _database() -> str:
    """A fresh database on the test server; its URL."""
    psycopg = pytest.importorskip("psycopg")
    name = f"simgap_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(BASE.replace("postgresql+psycopg://", "postgresql://"),
                         autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return BASE.rsplit("/", 1)[0] + f"/{name}"


def _wait_for(predicate, timeout: float, what: str):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_workers_on_postgres_one_killed_mid_cell(tmp_path):
    config = parse_config(MINI)
    url = _database()
    handle = prepare_study(config, tmp_path / "pg", storage=url)
    assert handle.storage_url == resolve_storage_url(url, None)
    cmd = [sys.executable, "-m", "harness.cli", "study", "worker", str(tmp_path / "pg")]
    victim, survivor = (subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL)
                        for _ in range(2))

    def victim_running():
        return [t for t in handle.study.get_trials(states=(TrialState.RUNNING,))
                if t.user_attrs.get("worker", {}).get("pid") == victim.pid]

    killed = _wait_for(victim_running, 120, "the victim to start a cell")[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert survivor.wait(timeout=300) == 0
    trials = open_study(tmp_path / "pg").study.get_trials()
    complete = [t.user_attrs["cell"] for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == sorted({c for c in complete}) and len(complete) == 2
    assert {t.number: t.state for t in trials}[killed.number] == TrialState.FAIL
    run_study(config, tmp_path / "sqlite", workers=1, report=False)
    assert _results(tmp_path / "pg") == _results(tmp_path / "sqlite")
