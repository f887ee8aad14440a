"""Progress of long study steps: the ETA of ``study run`` (in each cell's log line) and the
step bar of ``study report``."""

from __future__ import annotations

import time


def duration_text(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3 h 05 min``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class Eta:
    """Remaining time of a grid from the rate at which its cells complete (any worker's),
    measured from just before the first cell this process completed."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.start: tuple[float, int] | None = None

    def after(self, done: int, total: int, cell_seconds: float) -> str:
        """``"; ETA 12 min"`` once ``done`` of ``total`` cells are complete ('' when all are)."""
        now = self.clock()
        if self.start is None:
            self.start = (now - cell_seconds, done - 1)
        elapsed, finished = now - self.start[0], done - self.start[1]
        if done >= total or finished <= 0 or elapsed <= 0:
            return ""
        return f"; ETA {duration_text((total - done) * elapsed / finished)}"
