"""Fixtures of the studies tests: a private simgap cache, never the network."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SIMGAP_CACHE", str(tmp_path_factory.getbasetemp() / "simgap-cache"))
    monkeypatch.setenv("SIMGAP_OFFLINE", "1")
