"""The ETA in ``study run``'s per-cell log lines."""

from __future__ import annotations

from studies.progress import Eta, duration_text


def test_eta_from_the_completion_rate():
    now = [100.0]
    eta = Eta(clock=lambda: now[0])
    # the first cell this process completes took 10 s; 3 of 20 done (2 by other workers before)
    assert eta.after(3, 20, cell_seconds=10.0) == "; ETA 3 min"  # 17 cells x 10 s
    now[0] = 130.0  # 3 more cells in 30 s more (two workers): 4 cells in 40 s
    assert eta.after(6, 20, cell_seconds=12.0) == "; ETA 2 min"  # 14 cells x 10 s
    assert eta.after(20, 20, cell_seconds=1.0) == ""


def test_duration_text():
    assert duration_text(45) == "45 s"
    assert duration_text(720) == "12 min"
    assert duration_text(3 * 3600 + 300) == "3 h 05 min"
