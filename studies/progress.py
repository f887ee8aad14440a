"""Progress of long study steps: the ETA of ``study run`` (in each cell's log line) and the
step bar of ``study report``."""

from __future__ import annotations

import time

from tqdm.auto import tqdm

#: The steps of ``study report``'s progress bar, each named when it starts.
REPORT_STEPS = ("cells", "tables", "figures", "t-SNE", "MLflow")


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


def report_bar(progress: bool) -> tqdm:
    """The bar of :func:`studies.report.build_report` over :data:`REPORT_STEPS` (stderr)."""
    return tqdm(total=len(REPORT_STEPS), desc=f"report: {REPORT_STEPS[0]}", unit="step",
                disable=not progress)  # fmt: skip


def report_step(bar: tqdm) -> None:
    """One report step done; the bar names the next."""
    bar.update()
    if bar.n < len(REPORT_STEPS):
        bar.set_description_str(f"report: {REPORT_STEPS[bar.n]}")
