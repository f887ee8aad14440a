"""Intervals over a study's seeds and benches, which are crossed random factors.

The sim model and the nested real fractions depend on the seed alone, the real domain on the
bench, so the S x B cells (or paired differences) of one condition are not S·B independent
samples.  Their mean gets the variance of the crossed random-effects model,
d_sb = mu + a_s + b_b + e_sb, from the two-way ANOVA without replication
(:func:`crossed_variance`), and a t interval on Satterthwaite's degrees of freedom; the
bootstrap resamples seeds and benches independently (:func:`bootstrap_ci`).  With one bench
(or one seed) both reduce to the ordinary one-sample t interval and bootstrap over the other
factor.  :func:`paired` is the comparison of two cell groups of the same seeds and benches.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

N_BOOT = 4000
FEW = 3  # fewer pairs than this: the interval is flagged
PAIR = ["seed", "bench"]


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


def bounds_of(metric: str) -> tuple[float, float] | None:
    """The range a metric's values live in (accuracies: [0, 1]); None when unbounded."""
    return (0.0, 1.0) if metric.endswith(("acc", "_accuracy")) else None


def clip(lo: float, hi: float, bounds) -> tuple[float, float]:
    if bounds is None:
        return lo, hi
    return (max(lo, bounds[0]) if np.isfinite(lo) else lo,
            min(hi, bounds[1]) if np.isfinite(hi) else hi)


def crossed_table(d: pd.Series) -> np.ndarray:
    """The seed x bench table of ``d`` (indexed by seed and bench), NaN dropped.  A table with
    holes (a study still running) keeps its largest complete part: the seed or bench with the
    most holes is dropped until none is left."""
    table = d.dropna().unstack("bench")
    while table.isna().any().any():
        rows, cols = table.isna().sum(axis=1), table.isna().sum(axis=0)
        if rows.max() / table.shape[1] >= cols.max() / table.shape[0]:
            table = table.drop(index=rows.idxmax())
        else:
            table = table.drop(columns=cols.idxmax())
    return table.to_numpy(dtype=float)


def crossed_variance(table: np.ndarray) -> tuple[float, float]:
    """(variance of the mean, Satterthwaite degrees of freedom) of a seed x bench table.

    Seeds and benches are crossed random factors, d_sb = mu + a_s + b_b + e_sb, so
    Var(mean) = σ²_seed / S + σ²_bench / B + σ²_resid / (S B).  From the two-way ANOVA without
    replication (mean squares MS_seed on S - 1, MS_bench on B - 1, MS_resid on (S-1)(B-1) df) it
    is (MS_seed + MS_bench - MS_resid) / (S B), each variance component truncated at zero (a
    factor whose mean square is below MS_resid drops out of the sum, so the estimate is never
    below MS_resid / (S B)); the degrees of freedom are Satterthwaite's,
    (Σ c_i MS_i)² / Σ (c_i MS_i)² / df_i.  One seed or one bench: s² / n on n - 1 df, the
    ordinary paired t test."""
    s, b = table.shape
    if s == 1 or b == 1:
        x = table.ravel()
        n = len(x)
        return (float(x.var(ddof=1) / n), float(n - 1)) if n > 1 else (math.nan, math.nan)
    m, rows, cols = table.mean(), table.mean(axis=1), table.mean(axis=0)
    ms_seed = b * float(((rows - m) ** 2).sum()) / (s - 1)
    ms_bench = s * float(((cols - m) ** 2).sum()) / (b - 1)
    resid = table - rows[:, None] - cols[None, :] + m
    ms_resid = float((resid ** 2).sum()) / ((s - 1) * (b - 1))
    c_seed, c_bench = float(ms_seed > ms_resid), float(ms_bench > ms_resid)
    terms = [(c_seed, ms_seed, s - 1), (c_bench, ms_bench, b - 1),
             (1.0 - c_seed - c_bench, ms_resid, (s - 1) * (b - 1))]
    total = sum(c * ms for c, ms, _ in terms)
    denom = sum((c * ms) ** 2 / df for c, ms, df in terms if c)
    return total / (s * b), (total ** 2 / denom if denom > 0 else math.nan)


def bootstrap_ci(table, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of a seed x bench table (a 1-d array: one
    bench): each resample draws S seeds and B benches with replacement, independently, and
    takes all their pairs (the two-way bootstrap); NaN for fewer than 2 values."""
    x = np.asarray(table, dtype=float)
    x = x[:, None] if x.ndim == 1 else x
    if x.size < 2:
        return math.nan, math.nan
    if np.ptp(x) <= 1e-12:
        return float(x.mean()), float(x.mean())
    rng = np.random.default_rng(seed)
    s, b = x.shape
    rows = rng.integers(0, s, (N_BOOT, s))[:, :, None]
    cols = rng.integers(0, b, (N_BOOT, b))[:, None, :]
    means = x[rows, cols].mean(axis=(1, 2))
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def paired(a: pd.Series, b: pd.Series, bounds=None) -> dict:
    """Paired comparison of ``a`` - ``b`` (both indexed by seed and bench; unmatched dropped).

    mean, n (pairs), n_seeds, n_benches, the t interval (t_lo, t_hi) on ``df`` degrees of
    freedom from :func:`crossed_variance`, the two-way bootstrap interval (boot_lo, boot_hi),
    p of the t test of mean 0, few, excludes_zero (of the t interval) and no_variance: every
    difference equal (up to rounding), where no interval or test applies (p NaN, the interval
    the point, excludes_zero False).  ``bounds`` of the values clip the difference to
    [lo - hi, hi - lo]."""
    table = crossed_table(a - b)
    n = table.size
    mean = float(table.mean()) if n else math.nan
    out = {"mean": mean, "n": n, "n_seeds": table.shape[0], "n_benches": table.shape[1],
           "few": n < FEW, "no_variance": bool(n >= 2 and np.ptp(table) <= 1e-12)}
    var, df = crossed_variance(table) if n >= 2 else (math.nan, math.nan)
    out["df"], out["p"] = df, math.nan
    span = None if bounds is None else (bounds[0] - bounds[1], bounds[1] - bounds[0])
    if out["no_variance"]:
        out["t_lo"] = out["t_hi"] = mean
    elif np.isfinite(var) and np.isfinite(df) and var > 0:
        from scipy.stats import t

        se = math.sqrt(var)
        half = float(t.ppf(0.975, df)) * se
        out["t_lo"], out["t_hi"] = clip(mean - half, mean + half, span)
        out["p"] = float(2 * t.sf(abs(mean) / se, df))
    else:
        out["t_lo"] = out["t_hi"] = math.nan
    out["boot_lo"], out["boot_hi"] = clip(*bootstrap_ci(table), span)
    out["excludes_zero"] = bool(not out["no_variance"] and (out["t_lo"] > 0 or out["t_hi"] < 0))
    return out


def crossed_ci(values: pd.Series) -> tuple[float, float, int]:
    """(mean, half-width of the 95 % t interval, n) of values indexed by seed and bench, seeds
    and benches crossed (:func:`crossed_variance`; the largest complete part of a table with
    holes); the half-width is NaN for n < 2, 0 for values all equal."""
    table = crossed_table(values.replace([np.inf, -np.inf], np.nan))
    n = table.size
    if n < 2:
        return (float(table.mean()) if n else math.nan), math.nan, n
    var, df = crossed_variance(table)
    if not var > 0:
        return float(table.mean()), (0.0 if var == 0 else math.nan), n
    from scipy.stats import t

    return float(table.mean()), float(t.ppf(0.975, df) * math.sqrt(var)), n


def cell_ci(cells: pd.DataFrame, column: str) -> tuple[float, float, int]:
    """:func:`crossed_ci` of ``column`` over the cells' seeds and benches (a frame without
    them: :func:`ci95`, its rows taken as independent)."""
    if not {"seed", "bench"} <= set(cells):
        return ci95(cells[column])
    return crossed_ci(cells.groupby(PAIR)[column].mean())
