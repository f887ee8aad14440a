"""Stopping a worker safely: SIGTERM and Ctrl-C interrupt computation, never a storage call.

An exception raised by a signal handler in the middle of a database call can leave a connection
inside an open SQLite transaction: the lock stays taken and every process of the study waits on
it.  So, once :func:`install` has set the handlers, a stop signal is raised at once only inside
:func:`interruptible` blocks (a cell's computation, an idle wait); anywhere else it is held and
raised at the next :func:`check` or interruptible block.  :func:`protected` makes a storage call
inside an interruptible block (e.g. MLflow logging during training) safe again.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_STATE = {"open": 0, "pending": None, "installed": False}


def _exception(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)


def _handler(signum, _frame) -> None:
    if _STATE["open"] > 0:
        raise _exception(signum)
    _STATE["pending"] = signum


def install() -> None:
    """Route SIGTERM and SIGINT through the handler above (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)
        _STATE["installed"] = True


def check() -> None:
    """Raise a stop signal that arrived while it was held."""
    signum, _STATE["pending"] = _STATE["pending"], None
    if signum is not None:
        raise _exception(signum)


@contextlib.contextmanager
def interruptible():
    """A block that a stop signal may interrupt (raised at once; a held one on entry)."""
    _STATE["open"] += 1
    try:
        check()
        yield
    finally:
        _STATE["open"] -= 1


@contextlib.contextmanager
def protected():
    """A block that a stop signal never interrupts; a held one is raised when it ends inside
    an interruptible block."""
    saved, _STATE["open"] = _STATE["open"], 0
    try:
        yield
    finally:
        _STATE["open"] = saved
    if saved > 0:
        check()
