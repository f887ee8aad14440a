"""The fine-tune-fraction curves on the study's MLflow run while the study runs.

When the last cell of a curve point (one curve, one fraction: every seed x bench) completes, the
mean of its cells' primary metric is logged on the study (parent) run as
``curve/<policy>/<method>/<metric>`` (``curve/real-only/<metric>`` for the reference) at
step = the labelled real images its cells used (:func:`studies.stats.label_count`: every
real label, real val included under ``real-val``), the axis of the report's figure; MLflow's
chart of that metric is then the curve, filled in as the study runs.  Each point is logged
once; ``study report`` logs any point still missing (e.g. of a study run before).
"""

from __future__ import annotations

import math

import pandas as pd
from optuna.trial import TrialState

from studies.grid import grid_cells
from studies.stats import LABEL_COLUMNS, curve_points, label_count
from studies.tracking import retry


def _row(cell) -> dict:
    return {"cell": cell.id, "variant": cell.variant, **cell.params, "percent": cell.percent}


def completed(handle) -> pd.DataFrame:
    """One row per completed grid cell: its axes and the metrics its trial recorded."""
    cells = {c.id: c for c in grid_cells(handle.config)}
    rows: dict[str, dict] = {}
    for trial in handle.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        cell = trial.user_attrs.get("cell")
        if cell in cells and cell not in rows and "metrics" in trial.user_attrs:
            rows[cell] = {**_row(cells[cell]), **trial.user_attrs["metrics"]}
    return pd.DataFrame(list(rows.values()))


def _logged_steps(tracker, run_id: str, key: str) -> set[int]:
    return {m.step for m in retry(tracker.client.get_metric_history, run_id, key)}


def log_curve_points(handle, tracker, cell=None) -> int:
    """Log every complete curve point not yet on the study run (with ``cell``: only the points
    it belongs to); returns how many were logged."""
    metric = handle.config.primary_metric
    done = completed(handle)
    if (not handle.parent_run_id or done.empty or metric not in done
            or not any(c in done for c in LABEL_COLUMNS)):
        return 0
    grid = pd.DataFrame([_row(c) for c in grid_cells(handle.config)])
    expected = curve_points(grid, handle.config).groupby(["curve", "percent"]).size()
    points = curve_points(done, handle.config)
    if cell is not None:
        points = points[points.groupby(["curve", "percent"])["cell"].transform(
            lambda ids: (ids == cell.id).any())]
    logged = 0
    for (curve, percent), group in points.groupby(["curve", "percent"]):
        if len(group) < expected.get((curve, percent), 0):
            continue  # seeds / benches still running
        n = label_count(group)
        if math.isnan(n):  # no count recorded
            continue
        key, step = f"curve/{curve}/{metric}", int(n)
        if step in _logged_steps(tracker, handle.parent_run_id, key):
            continue
        tracker.log_metrics(handle.parent_run_id, {key: float(group[metric].mean())}, step=step)
        logged += 1
    return logged
