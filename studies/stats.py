"""Statistics of a study's cells: confidence intervals, fraction curves and the headline numbers.

Every (seed, bench) pair of a cell group is one sample; CI = t_{0.975, n-1} s / √n.  The input
is the per-cell table :func:`studies.report.collect` builds (one row per completed cell).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from studies.config import ZERO_SHOT, StudyConfig

STAT_KEYS = ("mean", "ci95", "n")


def ci95(values) -> tuple[float, float, int]:
    """(mean, half-width of the 95 % t interval, n); half-width NaN for n < 2."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(x[0]), math.nan, 1
    from scipy.stats import t

    return float(x.mean()), float(t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n)), n


def summarize(df: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """mean, ci95, n of ``metric`` per group of ``by`` (samples: seeds x benches)."""
    rows = []
    if metric not in df:
        return pd.DataFrame(columns=[*by, "mean", "ci95", "n"])
    for key, group in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        mean, ci, n = ci95(group[metric])
        rows.append({**dict(zip(by, key)), "mean": mean, "ci95": ci, "n": n})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------- curves
def curve_points(df: pd.DataFrame, config: StudyConfig) -> pd.DataFrame:
    """Long table of the fine-tune-fraction curves: one row per (curve, percent, seed, bench).

    A curve is ``policy/method``; its 0 % point is the policy's zero-shot cell.  ``real-only``
    is the reference curve (no 0 % point: it has no network without real data)."""
    if df.empty:
        return df.assign(curve=[])
    parts = []
    zero = df[df["method"] == ZERO_SHOT]
    for method in config.methods:
        if method == "real-only":
            part = df[df["method"] == method].assign(curve="real-only")
            parts.append(part)
            continue
        for spec in config.policies:
            own = df[(df["policy"] == spec.key) & (df["method"] == method)]
            start = zero[zero["policy"] == spec.key]
            parts.append(pd.concat([start, own]).assign(curve=f"{spec.key}/{method}"))
    return pd.concat(parts, ignore_index=True) if parts else df.assign(curve=[])


def curve_order(config: StudyConfig) -> list[str]:
    """The curves in table order: per method, per policy; real-only last."""
    names = [f"{p.key}/{m}" for m in config.methods if m != "real-only" for p in config.policies]
    return names + (["real-only"] if "real-only" in config.methods else [])


def needed_percent(percent: np.ndarray, mean: np.ndarray, target: float) -> float | None:
    """Smallest % of real data at which the (mean) curve reaches ``target``, interpolating
    linearly between measured fractions; None when even the largest fraction falls short."""
    for i, (p, m) in enumerate(zip(percent, mean)):
        if m >= target - 1e-6:  # equal up to rounding counts as reached
            if i == 0 or m <= target:
                return float(p)
            p0, m0 = percent[i - 1], mean[i - 1]
            return float(p0 + (target - m0) * (p - p0) / (m - m0))
    return None


# ---------------------------------------------------------------------------------- headline
def headline(df: pd.DataFrame, config: StudyConfig, metric: str) -> dict:
    """The headline numbers of docs/DESIGN.md section 6 (mean, ci95, n where it applies):
    each policy at 0 % and its sim-to-real gap, the share of a curve's 100 % value reached at
    the smaller fractions, and the real data the baseline needs to match each policy."""
    zero_shot, gap = _zero_shot(df, config, metric)
    points = curve_points(df, config)
    return {
        "metric": metric,
        "zero_shot": zero_shot,
        "gap": gap,
        "reached": _reached(points, config, metric),
        "baseline_needs": _baseline_needs(points, config, metric, zero_shot),
    }


def _stat(values) -> dict:
    return dict(zip(STAT_KEYS, ci95(values)))


def _zero_shot(df: pd.DataFrame, config: StudyConfig, metric: str) -> tuple[dict, dict]:
    zero_shot, gap = {}, {}
    zero = df[df["method"] == ZERO_SHOT] if not df.empty else df
    for spec in config.all_policies():
        z = zero[zero["policy"] == spec.key] if not zero.empty else zero
        if z.empty:
            continue
        zero_shot[spec.key] = _stat(z[metric])
        if "gap" in z:
            gap[spec.key] = _stat(z["gap"])
    return zero_shot, gap


def _reached(points: pd.DataFrame, config: StudyConfig, metric: str) -> dict:
    """Per curve and fraction below 100 %: value / value at 100 %, per seed and bench."""
    out = {}
    for curve, group in points.groupby("curve", sort=False) if not points.empty else []:
        full = group[group["fraction"] == 1.0].set_index(["seed", "bench"])[metric]
        if full.empty:
            continue
        reached = {}
        for frac in [f for f in config.fractions if 0.0 < f < 1.0]:  # docs/DESIGN.md: 1 % and 5 %
            at = group[np.isclose(group["fraction"], frac)].set_index(["seed", "bench"])[metric]
            ratio = (at / full).dropna()
            if len(ratio):
                reached[f"{frac * 100:g}%"] = _stat(ratio)
        if reached:
            out[curve] = reached
    return out


def _baseline_needs(points: pd.DataFrame, config: StudyConfig, metric: str,
                    zero_shot: dict) -> dict:
    """Per policy and method: the % of real data the baseline's curve needs to reach the
    policy's mean at 0 % (None: more than the largest fraction)."""
    out: dict = {}
    if points.empty:
        return out
    base = config.report.baseline
    means = summarize(points, ["curve", "percent"], metric)
    for method in [m for m in config.methods if m != "real-only"]:
        base_curve = means[means["curve"] == f"{base}/{method}"].sort_values("percent")
        if base_curve.empty:
            continue
        for spec in config.all_policies():
            if spec.key == base or spec.key not in zero_shot:
                continue
            target = zero_shot[spec.key]["mean"]
            out.setdefault(spec.key, {})[method] = needed_percent(
                base_curve["percent"].to_numpy(), base_curve["mean"].to_numpy(), target
            )
    return out
