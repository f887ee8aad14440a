"""Statistics of the report, checked against hand computations on small fixed tables: the t
interval, paired differences (t, bootstrap, p), clipping to [0, 1], the real data the baseline
needs on a log-fraction axis (with censored answers), chance-corrected shares."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from studies.config import parse_config
from studies.stats import (
    ci95,
    comparisons,
    headline,
    needed_fraction,
    needed_summary,
    paired,
    share,
    summarize,
)
from tests.studies.tiny import TINY

T2 = 4.302652729911275  # t_{0.975, 2}

#: policy -> method -> fraction -> values of seeds 0, 1, 2 (bench 0).  The baseline ``none`` at
#: 0 / 10 / 100 %: 0.5 / 0.6 / 0.8 in every seed; physics at 0 %: 0.55, 0.7, 0.9, so the
#: baseline reaches it below 10 % (seed 0), at sqrt(0.1) by log interpolation (seed 1), never
#: (seed 2).
TABLE = {
    "none": {"none": {0.0: [0.5, 0.5, 0.5]},
             "finetune-head": {0.1: [0.6, 0.6, 0.6], 1.0: [0.8, 0.8, 0.8]},
             "finetune-full": {0.1: [0.55, 0.58, 0.5], 1.0: [0.85, 0.8, 0.9]}},
    "physics": {"none": {0.0: [0.55, 0.7, 0.9]},
                "finetune-head": {0.1: [0.7, 0.75, 0.9], 1.0: [0.85, 0.85, 0.95]},
                "finetune-full": {0.1: [0.65, 0.7, 0.85], 1.0: [0.9, 0.9, 0.9]}},
}


def config_of(**changes):
    return parse_config({**TINY, "methods": ["finetune-head", "finetune-full"],
                         "seeds": [0, 1, 2], **changes})


def table_df(table=TABLE, pool=150) -> pd.DataFrame:
    """The per-cell table :func:`studies.report.collect` would build from ``table``."""
    rows = []
    for policy, methods in table.items():
        for method, fractions in methods.items():
            for frac, values in fractions.items():
                for seed, value in enumerate(values):
                    rows.append({"cell": f"{policy}/{method}/{frac * 100:g}%/s{seed}/b0",
                                 "variant": f"{policy}/{method}", "policy": policy,
                                 "method": method, "fraction": frac, "seed": seed, "bench": 0,
                                 "percent": frac * 100, "real_test_acc": value,
                                 "n_real_train": round(frac * pool), "gap": 0.1 * value})
    return pd.DataFrame(rows)


def test_ci95_is_the_t_interval():
    mean, half, n = ci95([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(T2 * 1.0 / math.sqrt(3))
    assert math.isnan(ci95([0.7])[1]) and ci95([])[2] == 0


def test_paired_difference_matches_the_hand_computation():
    index = pd.MultiIndex.from_tuples([(0, 0), (1, 0), (2, 0)], names=["seed", "bench"])
    a = pd.Series([0.7, 0.8, 0.9], index=index)
    b = pd.Series([0.85, 0.65, 0.6], index=index[::-1])  # paired by seed and bench, not order
    got = paired(a, b, (0.0, 1.0))
    # d = 0.1, 0.15, 0.05: mean 0.1, s = 0.05; t = 0.1 / (0.05 / sqrt 3) = 2 sqrt 3, and for two
    # degrees of freedom the two-sided p = 1 - t / sqrt(2 + t^2)
    half = T2 * 0.05 / math.sqrt(3)
    assert got["mean"] == pytest.approx(0.1) and got["n"] == 3 and not got["few"]
    assert (got["t_lo"], got["t_hi"]) == (pytest.approx(0.1 - half), pytest.approx(0.1 + half))
    t = 2 * math.sqrt(3)
    assert got["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert got["excludes_zero"] is False  # 0.1 - half = -0.024
    # bootstrap: the smallest resample mean (all three draws 0.05) has probability 1/27 > 2.5 %
    assert (got["boot_lo"], got["boot_hi"]) == (pytest.approx(0.05), pytest.approx(0.15))


def test_paired_intervals_are_clipped_and_small_samples_flagged():
    index = pd.MultiIndex.from_tuples([(0, 0), (1, 0)], names=["seed", "bench"])
    got = paired(pd.Series([1.0, 0.0], index=index), pd.Series([0.0, 0.0], index=index),
                 (0.0, 1.0))
    # t interval 0.5 ± 12.7 * 0.707 / 1.414 = 0.5 ± 6.35, clipped to the difference range
    assert (got["t_lo"], got["t_hi"]) == (-1.0, 1.0) and got["few"]
    assert (got["boot_lo"], got["boot_hi"]) == (0.0, 1.0)  # resample means 0, 0.5, 1
    s = summarize(pd.DataFrame({"g": [1, 1], "real_test_acc": [0.99, 0.9]}), ["g"],
                  "real_test_acc")
    assert s.loc[0, "hi"] == 1.0 and s.loc[0, "lo"] > 0.0
    assert s.loc[0, "mean"] + s.loc[0, "ci95"] > 1.0  # the clipping did something


def test_constant_differences_get_a_p_value():
    index = pd.MultiIndex.from_tuples([(0, 0), (1, 0), (2, 0)], names=["seed", "bench"])
    got = paired(pd.Series([0.6, 0.7, 0.8], index=index),
                 pd.Series([0.5, 0.6, 0.7], index=index))  # d = 0.1 up to rounding
    assert got["p"] == 0.0 and got["excludes_zero"] and got["t_lo"] == pytest.approx(0.1)


def test_needed_fraction_on_a_log_axis():
    f, m = [0.0, 0.01, 0.1, 1.0], [0.4, 0.5, 0.6, 0.9]
    value, rel = needed_fraction(f, m, 0.55)  # halfway between 1 % and 10 % in log fraction
    assert rel == "=" and value == pytest.approx(math.sqrt(0.01 * 0.1))
    assert needed_fraction(f, m, 0.3) == (0.0, "=")  # the baseline is already there at 0 %
    assert needed_fraction(f, m, 0.45) == (0.01, "<")  # between 0 and the smallest fraction
    assert needed_fraction(f, m, 0.5 + 1e-12) == (0.01, "=")  # equal up to rounding
    assert needed_fraction(f, m, 0.95) == (1.0, ">")  # never reached: not extrapolated


def test_needed_summary_is_a_median_with_a_bootstrap_interval():
    got = needed_summary([(0.02, "="), (0.05, "="), (0.1, "=")])
    # a resampled median is 0.02 when two or three draws are 0.02: 7/27 > 2.5 %
    assert got["median"] == {"value": pytest.approx(0.05), "relation": "="}
    assert got["lo"]["value"] == pytest.approx(0.02) and got["hi"]["value"] == pytest.approx(0.1)
    never = needed_summary([(1.0, ">"), (0.3, "="), (1.0, ">")])
    assert never["median"] == {"value": 1.0, "relation": ">"} and never["hi"]["relation"] == ">"
    assert needed_summary([])["median"] is None


def test_baseline_needs_per_seed_on_the_fixed_table():
    config = config_of()
    head = headline(table_df(), config, "real_test_acc")
    needs = head["baseline_needs"]["physics"]["finetune-head"]
    # per seed: < 10 %, sqrt(0.1) = 31.6 %, > 100 %  -> median 31.6 %
    assert needs["median"]["relation"] == "="
    assert needs["median"]["value"] == pytest.approx(100 * math.sqrt(0.1))
    assert needs["n"] == 3 and needs["hi"]["relation"] == ">" and needs["lo"]["relation"] == "<"
    # the baseline never reaches a policy that beats its 100 % point in every seed
    table = {**TABLE, "physics": {**TABLE["physics"], "none": {0.0: [0.95, 0.9, 0.85]}}}
    never = headline(table_df(table), config, "real_test_acc")["baseline_needs"]["physics"]
    assert never["finetune-head"]["median"] == {"value": 100.0, "relation": ">"}


def test_every_headline_claim_is_compared_paired():
    config = config_of()
    got = comparisons(table_df(), config, "real_test_acc")
    claims = [(c["kind"], c["a"], c.get("policy"), c["fraction"]) for c in got]
    assert claims == [("policy", "physics", None, 0.0),
                      ("method", "finetune-head", "none", 0.1),
                      ("method", "finetune-head", "none", 1.0),
                      ("method", "finetune-head", "physics", 0.1),
                      ("method", "finetune-head", "physics", 1.0)]
    d = np.array([0.05, 0.2, 0.4])  # physics - none at 0 %
    assert got[0]["mean"] == pytest.approx(d.mean())
    assert got[0]["t_hi"] - got[0]["mean"] == pytest.approx(T2 * d.std(ddof=1) / math.sqrt(3))
    d = np.array([0.05, 0.02, 0.1])  # finetune-head - finetune-full, policy none, 10 %
    assert got[1]["mean"] == pytest.approx(d.mean())


def test_shares_are_chance_corrected():
    at, full = pd.Series([0.55]), pd.Series([0.8])
    assert share(at, full, "real_test_acc", 0.1)[0] == pytest.approx(0.45 / 0.7)
    # PSNR: the MSE ratio, 10^((20 - 23) / 10)
    assert share(pd.Series([20.0]), pd.Series([23.0]), "real_test_psnr", None)[0] == (
        pytest.approx(10 ** -0.3))
    head = headline(table_df(), config_of(), "real_test_acc")
    assert head["chance"] == pytest.approx(0.1)  # digits: 10 classes
    # none/finetune-head at 10 %: (0.6 - 0.1) / (0.8 - 0.1) in every seed
    assert head["reached"]["none/finetune-head"]["10%"]["mean"] == pytest.approx(0.5 / 0.7)


def test_the_fraction_axis_holds_real_image_counts():
    axis = headline(table_df(pool=150), config_of(), "real_test_acc")["fraction_axis"]
    assert [(r["percent"], r["n_images"], r["true_percent"]) for r in axis] == [
        (0.0, 0, 0.0), (10.0, 15, 10.0), (100.0, 150, 100.0)]
