"""Statistics of a study's cells: intervals, paired comparisons, fraction curves, headline.

Seeds and benches are crossed: the sim model and the nested real fractions depend on the seed
alone, the real domain on the bench, so the S x B cells of one condition are not S·B independent
samples.  A mean over them gets the variance of the crossed random-effects model from the
two-way ANOVA without replication (:func:`studies.intervals.crossed_variance`: (MS_seed +
MS_bench - MS_resid) / (S B), each variance component truncated at zero) and a t interval on
Satterthwaite's degrees of freedom; with one bench (or one seed) that is the ordinary t interval
over the other factor.

All policies and methods of a seed and bench share the splits and the real fractions, so two
cell groups are compared *paired* (:func:`studies.intervals.paired`): d_sb = a_sb - b_sb per
(seed, bench), the mean d̄ with that t interval, the two-sided p of the t test of d̄ = 0 on
the same df, and a percentile two-way bootstrap interval (S seeds and B benches drawn with
replacement, independently, all their pairs; fixed seed).  Identical differences are flagged
``no_variance`` (no interval, p NaN).  Intervals of accuracies are clipped to [0, 1] (of their
differences to [-1, 1]); fewer than 3 pairs is flagged (``few``).

"Baseline needs" is computed per (seed, bench) on a log-fraction axis (:func:`needed_fraction`)
and summarised by its lower median with a two-way bootstrap interval (:func:`needed_summary`);
a seed whose baseline never reaches the policy counts as "> largest fraction", never
extrapolated.

The input is the per-cell table :func:`studies.report.collect` builds (one row per cell).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from studies.config import ZERO_SHOT, StudyConfig
from studies.intervals import (
    FEW,
    N_BOOT,
    PAIR,
    bounds_of,
    cell_ci,
    clip,
    crossed_ci,
    crossed_table,
    paired,
)

STAT_KEYS = ("mean", "ci95", "n")
REFERENCE_METHOD = "finetune-full"  # each method is compared with this one
#: Known class counts of the built-in sources (chance = 1 / classes).
SOURCE_CLASSES = {"fashion-mnist": 10, "digits": 10}


def summarize(df: pd.DataFrame, by: list[str], metric: str, bounds=None) -> pd.DataFrame:
    """mean, ci95, n and the (clipped) interval lo, hi of ``metric`` per group of ``by``
    (:func:`cell_ci`: seeds x benches crossed)."""
    rows = []
    if metric not in df:
        return pd.DataFrame(columns=[*by, "mean", "ci95", "n", "lo", "hi"])
    bounds = bounds if bounds is not None else bounds_of(metric)
    for key, group in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        mean, ci, n = cell_ci(group, metric)
        lo, hi = clip(mean - ci, mean + ci, bounds)
        rows.append({**dict(zip(by, key)), "mean": mean, "ci95": ci, "n": n, "lo": lo, "hi": hi})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------- paired
def _series(df: pd.DataFrame, metric: str, **where) -> pd.Series:
    rows = df
    for column, value in where.items():
        if column == "fraction":
            rows = rows[np.isclose(rows["fraction"], value)]
        else:
            rows = rows[rows[column] == value]
    return rows.groupby(PAIR)[metric].mean()


def comparisons(df: pd.DataFrame, config: StudyConfig, metric: str) -> list[dict]:
    """Every paired claim of the headline: each policy vs the baseline at 0 %, and each method
    vs ``finetune-full`` (same policy; real-only: the reference policy) at each fraction."""
    if df.empty or metric not in df:
        return []
    bounds = bounds_of(metric)
    base = config.report.baseline
    out = []
    for spec in config.all_policies():
        if spec.key == base:
            continue
        a = _series(df, metric, policy=spec.key, method=ZERO_SHOT)
        b = _series(df, metric, policy=base, method=ZERO_SHOT)
        if len(a) and len(b):
            out.append({"kind": "policy", "a": spec.key, "b": base, "fraction": 0.0,
                        **paired(a, b, bounds)})
    if REFERENCE_METHOD not in config.methods:
        return out
    for method in [m for m in config.methods if m != REFERENCE_METHOD]:
        policies = ([config.reference_policy] if method == "real-only"
                    else [p.key for p in config.policies])
        for policy in policies:
            for frac in [f for f in config.fractions if f > 0]:
                a = _series(df, metric, policy=policy, method=method, fraction=frac)
                b = _series(df, metric, policy=policy, method=REFERENCE_METHOD, fraction=frac)
                if len(a) and len(b):
                    out.append({"kind": "method", "a": method, "b": REFERENCE_METHOD,
                                "policy": policy, "fraction": frac, **paired(a, b, bounds)})
    return out


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


#: The per-cell counts of labelled real images, first found first: every real label the cell
#: used (its fraction, and all of real val under ``selection.adapt: real-val``), else the
#: fraction's pool images (cells recorded before ``n_real_labels``), else its training images.
LABEL_COLUMNS = ("n_real_labels", "n_real_pool", "n_real_train")


def label_count(cells: pd.DataFrame) -> float:
    """Median labelled real images of ``cells`` (see :data:`LABEL_COLUMNS`); NaN if none."""
    for column in LABEL_COLUMNS:
        if column in cells and cells[column].notna().any():
            return float(cells[column].median())
    return math.nan


def fraction_axis(df: pd.DataFrame, config: StudyConfig) -> pd.DataFrame:
    """Per nominal fraction: percent, the labelled real images its cells used (median of
    :func:`label_count`) and the true percent of the pool they are (above 100 % where a cell
    also labels real val; nominal when no cell recorded a count)."""
    rows = []
    for frac in sorted(config.fractions):
        at = df[np.isclose(df["fraction"], frac)] if not df.empty else df
        n = label_count(at) if len(at) else math.nan
        true = 100.0 * n / config.data.real.pool if np.isfinite(n) else 100.0 * frac
        rows.append({"fraction": frac, "percent": 100.0 * frac,
                     "n_images": None if not np.isfinite(n) else int(n), "true_percent": true})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------- needs
def needed_fraction(fractions, values, target: float) -> tuple[float, str]:
    """(fraction, relation) of real data at which one curve first reaches ``target``.

    ``fractions`` ascending, starting at 0 (the policy-free zero-shot point).  Between two
    positive fractions the crossing is interpolated linearly in log fraction:
    log f = log f0 + (target - m0) / (m1 - m0) (log f1 - log f0).  Reached at 0: (0, "=");
    first reached at the smallest positive fraction: (smallest, "<"); never: (largest, ">").
    NaN values (a missing cell) are skipped."""
    f, m = np.asarray(fractions, dtype=float), np.asarray(values, dtype=float)
    keep = np.isfinite(m)  # a missing point is skipped: the crossing spans its neighbours
    f, m = f[keep], m[keep]
    if not len(f):
        return float(np.asarray(fractions, dtype=float)[-1]), ">"
    for i in range(len(f)):
        if m[i] < target - 1e-9:  # equal up to rounding counts as reached
            continue
        if f[i] == 0.0:
            return 0.0, "="
        if m[i] <= target + 1e-9:
            return float(f[i]), "="
        if i == 0 or f[i - 1] == 0.0:
            return float(f[i]), "<"
        lf0, lf1 = math.log(f[i - 1]), math.log(f[i])
        return float(math.exp(lf0 + (target - m[i - 1]) / (m[i] - m[i - 1]) * (lf1 - lf0))), "="
    return float(f[-1]), ">"


_ZERO, _BELOW, _ABOVE = -1e9, -1e6, 1e6  # codes of the censored answers (log10 scale)


def _code(value: float, relation: str) -> float:
    if relation == ">":
        return _ABOVE
    if relation == "<":
        return _BELOW
    return _ZERO if value == 0.0 else math.log10(value)


def _decode(code: float, smallest: float, largest: float) -> dict:
    if code >= _ABOVE:
        return {"value": largest, "relation": ">"}
    if code <= _ZERO:
        return {"value": 0.0, "relation": "="}
    if code <= _BELOW:
        return {"value": smallest, "relation": "<"}
    return {"value": float(10 ** code), "relation": "="}


def needed_summary(answers: list[tuple[float, str]], seed: int = 0, pairs=None) -> dict:
    """Lower median over (seed, bench) of :func:`needed_fraction` answers and its 95 %
    percentile bootstrap interval.  Quantiles are taken as observed values (``inverted_cdf``:
    of an even count the lower of the two middle answers), so a censored answer stays censored
    and is never averaged into a number.  ``pairs``: the (seed, bench) of each answer; the
    bootstrap then resamples seeds and benches independently (S seeds and B benches with
    replacement, all their pairs; the largest complete part of a table with holes), else the
    answers.  Values in fraction units, each as {value, relation}."""
    if not answers:
        return {"median": None, "lo": None, "hi": None, "n": 0, "few": True}
    codes = np.array([_code(v, r) for v, r in answers])
    positive = [v for v, r in answers if v > 0] or [0.0]
    smallest, largest = min(positive), max(positive)
    q = lambda x, p: np.quantile(x, p, axis=-1, method="inverted_cdf")
    rng = np.random.default_rng(seed)
    if pairs is not None:
        table = crossed_table(pd.Series(codes, index=pd.MultiIndex.from_tuples(
            list(pairs), names=PAIR)))
        codes = table.ravel()
        rows = rng.integers(0, table.shape[0], (N_BOOT, table.shape[0]))[:, :, None]
        cols = rng.integers(0, table.shape[1], (N_BOOT, table.shape[1]))[:, None, :]
        draws = table[rows, cols].reshape(N_BOOT, -1)
    else:
        draws = codes[rng.integers(0, len(codes), (N_BOOT, len(codes)))]
    out = {"median": _decode(float(q(codes, 0.5)), smallest, largest), "n": len(codes),
           "few": len(codes) < FEW}
    medians = q(draws, 0.5)
    lo, hi = np.quantile(medians, [0.025, 0.975], method="inverted_cdf")
    out["lo"], out["hi"] = _decode(float(lo), smallest, largest), _decode(float(hi), smallest,
                                                                           largest)
    return out


# ---------------------------------------------------------------------------------- headline
def chance_level(df: pd.DataFrame, config: StudyConfig) -> float | None:
    """1 / number of classes (a ``num_classes`` column, else the source's known count, else
    the class folders of ``folder:PATH``); None when unknown."""
    if "num_classes" in df and df["num_classes"].notna().any():
        return 1.0 / float(df["num_classes"].median())
    source = config.data.source
    if source in SOURCE_CLASSES:
        return 1.0 / SOURCE_CLASSES[source]
    root = Path(source.split(":", 1)[1]).expanduser() if source.startswith("folder:") else None
    classes = [p for p in root.iterdir() if p.is_dir()] if root and root.is_dir() else []
    return 1.0 / len(classes) if classes else None


def share(at: pd.Series, full: pd.Series, metric: str, chance: float | None) -> pd.Series:
    """Share of the 100 % result: (acc - chance) / (acc100 - chance) for accuracies; for PSNR
    the MSE ratio MSE100 / MSE = 10^((psnr - psnr100) / 10) (1: as good as all real data)."""
    if metric.endswith("psnr"):
        return 10.0 ** ((at - full) / 10.0)
    c = chance or 0.0
    return (at - c) / (full - c)


def headline(df: pd.DataFrame, config: StudyConfig, metric: str) -> dict:
    """The headline numbers of docs/DESIGN.md section 6 (see the module docstring)."""
    zero_shot, gap = _zero_shot(df, config, metric)
    points = curve_points(df, config)
    chance = chance_level(df, config) if not metric.endswith("psnr") else None
    return {
        "metric": metric,
        "chance": chance,
        "share_kind": ("MSE(100 %) / MSE" if metric.endswith("psnr") else
                       "(acc - chance) / (acc100 - chance)" if chance else
                       "acc / acc100 (number of classes unknown: not chance-corrected)"),
        "fraction_axis": fraction_axis(df, config).to_dict("records"),
        "zero_shot": zero_shot,
        "gap": gap,
        "comparisons": comparisons(df, config, metric),
        "reached": _reached(points, config, metric, chance),
        "baseline_needs": _baseline_needs(df, points, config, metric),
    }


def _stat(values: pd.Series, bounds=None) -> dict:
    """mean, ci95, n, lo, hi, few of values indexed by seed and bench (:func:`crossed_ci`)."""
    mean, ci, n = crossed_ci(values)
    lo, hi = clip(mean - ci, mean + ci, bounds)
    return {"mean": mean, "ci95": ci, "n": n, "lo": lo, "hi": hi, "few": n < FEW}


def _zero_shot(df: pd.DataFrame, config: StudyConfig, metric: str) -> tuple[dict, dict]:
    zero_shot, gap = {}, {}
    zero = df[df["method"] == ZERO_SHOT] if not df.empty else df
    for spec in config.all_policies():
        z = zero[zero["policy"] == spec.key] if not zero.empty else zero
        if z.empty:
            continue
        zero_shot[spec.key] = _stat(z.groupby(PAIR)[metric].mean(), bounds_of(metric))
        if "gap" in z:
            gap[spec.key] = _stat(z.groupby(PAIR)["gap"].mean())
    return zero_shot, gap


def _reached(points: pd.DataFrame, config: StudyConfig, metric: str, chance) -> dict:
    """Per curve and fraction below 100 %: :func:`share` per seed and bench, then averaged."""
    out = {}
    for curve, group in points.groupby("curve", sort=False) if not points.empty else []:
        full = group[group["fraction"] == 1.0].groupby(PAIR)[metric].mean()
        if full.empty:
            continue
        reached = {}
        for frac in [f for f in config.fractions if 0.0 < f < 1.0]:  # docs/DESIGN.md: 1 % and 5 %
            at = group[np.isclose(group["fraction"], frac)].groupby(PAIR)[metric].mean()
            ratio = share(at, full, metric, chance).replace([np.inf, -np.inf], np.nan).dropna()
            if len(ratio):
                reached[f"{frac * 100:g}%"] = _stat(ratio)
        if reached:
            out[curve] = reached
    return out


def _baseline_needs(df: pd.DataFrame, points: pd.DataFrame, config: StudyConfig,
                    metric: str) -> dict:
    """Per policy and method: per (seed, bench), the true fraction of real data the baseline's
    curve needs to reach that policy's own 0 % value there; summarised by :func:`needed_summary`
    (values in percent)."""
    out: dict = {}
    if points.empty:
        return out
    axis = fraction_axis(df, config).set_index("fraction")["true_percent"] / 100.0
    base = config.report.baseline
    zero = df[df["method"] == ZERO_SHOT]
    for method in [m for m in config.methods if m != "real-only"]:
        curve = points[points["curve"] == f"{base}/{method}"]
        if curve.empty:
            continue
        for spec in config.all_policies():
            if spec.key == base:
                continue
            targets = zero[zero["policy"] == spec.key].groupby(PAIR)[metric].mean()
            answers, pairs = [], []
            for pair, target in targets.items():
                own = curve[(curve["seed"] == pair[0]) & (curve["bench"] == pair[1])]
                own = own.groupby("fraction")[metric].mean().sort_index()
                if len(own) and own.index[0] == 0.0:
                    true = [float(axis.get(f, f)) if f > 0 else 0.0 for f in own.index]
                    answers.append(needed_fraction(true, own.to_numpy(), float(target)))
                    pairs.append(pair)
            if answers:
                out.setdefault(spec.key, {})[method] = _percent(needed_summary(answers, 0,
                                                                               pairs))
    return out


def _percent(summary: dict) -> dict:
    for key in ("median", "lo", "hi"):
        if summary.get(key):
            summary[key] = {**summary[key], "value": 100.0 * summary[key]["value"]}
    return summary
