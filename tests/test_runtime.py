"""Process settings: thread budget per worker and the glibc allocator tuning."""

import os

import torch

from harness.runtime import configure_threads, tune_cpu_allocator


def test_threads_are_split_between_workers(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("SIMGAP_THREADS", raising=False)
    try:
        cores = len(os.sched_getaffinity(0))
        assert configure_threads(1) == cores == torch.get_num_threads()
        assert configure_threads(cores * 4) == 1 == torch.get_num_threads()
        monkeypatch.setenv("SIMGAP_THREADS", "1")
        assert configure_threads(1) == 1
    finally:
        torch.set_num_threads(before)


def test_allocator_tuning_is_optional(monkeypatch):
    monkeypatch.setenv("SIMGAP_NO_MALLOC_TUNING", "1")
    assert tune_cpu_allocator() is False
    monkeypatch.delenv("SIMGAP_NO_MALLOC_TUNING")
    assert isinstance(tune_cpu_allocator(), bool)
