"""Every data test writes its caches in its own folder and never downloads."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each test writes its caches in its own folder and never downloads."""
    monkeypatch.setenv("SIMGAP_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("SIMGAP_OFFLINE", "1")
    monkeypatch.delenv("SIMGAP_DATA", raising=False)
