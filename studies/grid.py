"""The study grid: its cells and the search space they span (pure; no storage, no Optuna).

A cell is one grid point (policy / method, real fraction, seed, bench seed).  The grid holds only
meaningful points: 0 % is one zero-shot cell per policy (method ``none``), and real-only runs on
the reference policy's mask only.  How cells become Optuna trials is :mod:`studies.queue`; who
runs them is :mod:`studies.worker`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from studies.config import ZERO_SHOT, StudyConfig

AXES = ("policy", "method", "fraction", "seed", "bench")


@dataclass(frozen=True, order=True)
class Cell:
    """One grid point.  ``policy`` is the label of the sim model used (for real-only: the
    reference policy, whose mask the real-only network sees); ``method`` is ``none`` at 0 %."""

    policy: str
    method: str
    fraction: float
    seed: int
    bench: int

    @property
    def percent(self) -> float:
        return round(self.fraction * 100.0, 6)

    @property
    def id(self) -> str:
        return f"{self.policy}/{self.method}/{self.percent:g}%/s{self.seed}/b{self.bench}"

    @property
    def variant(self) -> str:
        """The curve a cell belongs to (zero-shot cells start every curve of their policy)."""
        if self.method == "real-only":
            return "real-only"
        return self.policy if self.method == ZERO_SHOT else f"{self.policy}/{self.method}"

    @property
    def params(self) -> dict[str, Any]:
        return asdict(self)


def grid_cells(config: StudyConfig) -> list[Cell]:
    """All cells of a study, grouped so cells sharing a sim model are adjacent."""
    cells = []
    positive = [f for f in config.fractions if f > 0]
    for seed in config.seeds:
        for spec in config.all_policies():
            for bench in config.bench.all_seeds:
                if 0.0 in config.fractions:
                    cells.append(Cell(spec.key, ZERO_SHOT, 0.0, seed, bench))
                if spec in config.ablations:
                    continue
                for f in positive:
                    for method in config.methods:
                        if method != "real-only" or spec.key == config.reference_policy:
                            cells.append(Cell(spec.key, method, f, seed, bench))
    return cells


def search_space(config: StudyConfig) -> dict[str, list]:
    """The values of every axis over the grid (the space of the study's GridSampler)."""
    cells = grid_cells(config)
    return {axis: sorted({getattr(c, axis) for c in cells}, key=str) for axis in AXES}
