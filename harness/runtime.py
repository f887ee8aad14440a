"""Process-level CPU settings for the CLI, workers and benchmarks (never applied on import).

- Threads: oversubscribed OpenMP threads (several workers x all cores) make every op erratic on
  a small machine, so each process gets ``cores // workers`` intra-op threads.  A study cell
  instead runs on :func:`cell_threads` threads, a number that does not depend on ``--workers``:
  float reductions split over a different number of threads round differently, and a study's
  numbers must not depend on how many workers ran it.
- Allocator: glibc serves tensors above 128 KiB with fresh ``mmap`` pages, so every step pays the
  page faults of its temporaries again.  Raising the mmap and trim thresholds keeps freed blocks
  in the heap for reuse, as jemalloc/tcmalloc would (``benchmarks/optics.py`` measures it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper bound on 64-bit


def tune_cpu_allocator() -> bool:
    """Keep freed large blocks in the glibc heap (no per-step page faults); False if not glibc."""
    name = ctypes.util.find_library("c")
    if not name or os.environ.get("SIMGAP_NO_MALLOC_TUNING"):
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    ok &= mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    ok &= mallopt(_M_TOP_PAD, 64 << 20)
    return bool(ok)


CELL_THREADS = 4  # the default intra-op threads of a study cell (at most the cores)


def cell_threads() -> int:
    """Intra-op threads of one study cell: ``$SIMGAP_CELL_THREADS``, else ``$SIMGAP_THREADS``,
    else ``min(CELL_THREADS, cores)``; never a function of the worker count."""
    for name in ("SIMGAP_CELL_THREADS", "SIMGAP_THREADS"):
        env = os.environ.get(name, "")
        if env.isdigit() and int(env) > 0:
            return int(env)
    return max(1, min(CELL_THREADS, usable_cores()))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def configure_threads(workers: int = 1) -> int:
    """Give this process ``max(1, cores // workers)`` intra-op threads (``$SIMGAP_THREADS``
    overrides); returns the count."""
    import torch  # here, not at the top: `simgap --help` imports this module and must stay fast

    if os.environ.get("SIMGAP_THREADS", "").isdigit() and int(os.environ["SIMGAP_THREADS"]) > 0:
        torch.set_num_threads(int(os.environ["SIMGAP_THREADS"]))
        return torch.get_num_threads()
    threads = max(1, usable_cores() // max(1, workers))
    torch.set_num_threads(threads)
    return threads
