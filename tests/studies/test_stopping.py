"""Stop signals interrupt computation, never a storage call."""

from __future__ import annotations

import os
import signal
import time

import pytest

from studies import stopping


def test_stop_signal_waits_for_storage_calls_to_finish():
    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        stopping.install()
        os.kill(os.getpid(), signal.SIGTERM)  # outside any block: held, not raised
        with pytest.raises(SystemExit) as stop:
            stopping.check()
        assert stop.value.code == 128 + signal.SIGTERM
        stopping.check()  # raised once only
        steps = []
        with pytest.raises(SystemExit), stopping.interruptible():
            with stopping.protected():  # e.g. an MLflow call during training
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("storage call finished")
            steps.append("not reached")
        assert steps == ["storage call finished"]
        with pytest.raises(KeyboardInterrupt), stopping.interruptible():
            os.kill(os.getpid(), signal.SIGINT)  # computation: interrupted at once
            time.sleep(5)
    finally:
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])
