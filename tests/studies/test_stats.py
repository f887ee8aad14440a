"""Statistics of the report, checked against hand computations on small fixed tables: the t
interval, paired differences (t, bootstrap, p), clipping to [0, 1], the real data the baseline
needs on a log-fraction axis (with censored answers), chance-corrected shares."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from studies.config import parse_config
from studies.intervals import ci95, paired
from studies.stats import (
    comparisons,
    headline,
    needed_fraction,
    needed_summary,
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


def test_constant_differences_have_no_variance_and_no_p_value():
    index = pd.MultiIndex.from_tuples([(0, 0), (1, 0), (2, 0)], names=["seed", "bench"])
    got = paired(pd.Series([0.6, 0.7, 0.8], index=index),
                 pd.Series([0.5, 0.6, 0.7], index=index))  # d = 0.1 up to rounding
    # no spread: no test and no interval can say anything, so nothing "excludes zero"
    assert math.isnan(got["p"]) and got["no_variance"] and not got["excludes_zero"]
    assert got["mean"] == pytest.approx(0.1)


def _crossed(d, offset=0.5):
    """(a, b) over seeds x benches whose differences a - b are the table ``d``."""
    d = np.asarray(d, dtype=float)
    index = pd.MultiIndex.from_product([range(d.shape[0]), range(d.shape[1])],
                                       names=["seed", "bench"])
    return pd.Series(d.ravel() + offset, index=index), pd.Series(offset, index=index)


def _two_way_by_hand(d):
    """Mean, variance of the mean, Satterthwaite df of a seed x bench table, written out: the
    two-way ANOVA without replication, each variance component truncated at zero."""
    s, b = d.shape
    m, rows, cols = d.mean(), d.mean(axis=1), d.mean(axis=0)
    ms_seed = b * ((rows - m) ** 2).sum() / (s - 1)
    ms_bench = s * ((cols - m) ** 2).sum() / (b - 1)
    ms_resid = ((d - rows[:, None] - cols[None, :] + m) ** 2).sum() / ((s - 1) * (b - 1))
    return m, ms_seed, ms_bench, ms_resid


def test_crossed_seeds_and_benches_match_the_two_way_anova_by_hand():
    from scipy.stats import t

    d = np.array([[0.10, 0.05, 0.12], [0.20, 0.18, 0.25], [0.02, 0.00, 0.09]])
    m, ms_s, ms_b, ms_e = _two_way_by_hand(d)
    assert ms_s > ms_e and ms_b > ms_e  # no component truncated on this table
    var = (ms_s + ms_b - ms_e) / 9
    df = (ms_s + ms_b - ms_e) ** 2 / (ms_s ** 2 / 2 + ms_b ** 2 / 2 + ms_e ** 2 / 4)
    half = t.ppf(0.975, df) * math.sqrt(var)
    got = paired(*_crossed(d), (0.0, 1.0))
    assert (got["n"], got["n_seeds"], got["n_benches"]) == (9, 3, 3)
    assert got["mean"] == pytest.approx(m) and got["df"] == pytest.approx(df)
    assert (got["t_lo"], got["t_hi"]) == (pytest.approx(m - half), pytest.approx(m + half))
    assert got["p"] == pytest.approx(2 * t.sf(m / math.sqrt(var), df))
    # the 9 pairs taken as independent would claim a far narrower interval (df = 8)
    naive = t.ppf(0.975, 8) * d.std(ddof=1) / 3
    assert half > 2 * naive and df < 3
    # a bench effect below the residual: its component is 0, the seeds alone carry the mean
    d = np.array([[0.1, 0.12, 0.08], [0.2, 0.18, 0.22], [0.0, 0.03, 0.03]])
    m, ms_s, ms_b, ms_e = _two_way_by_hand(d)
    assert ms_b < ms_e < ms_s
    got = paired(*_crossed(d))
    half = t.ppf(0.975, 2) * math.sqrt(ms_s / 9)  # (ms_s + ms_e - ms_e) / 9 on S - 1 = 2 df
    assert got["df"] == pytest.approx(2) and got["t_hi"] == pytest.approx(m + half)


def test_table_intervals_over_seeds_and_benches_are_crossed_too():
    from scipy.stats import t

    d = np.array([[0.60, 0.55, 0.62], [0.70, 0.68, 0.75], [0.52, 0.50, 0.59]])
    m, ms_s, ms_b, ms_e = _two_way_by_hand(d)
    total = ms_s + ms_b - ms_e
    df = total ** 2 / (ms_s ** 2 / 2 + ms_b ** 2 / 2 + ms_e ** 2 / 4)
    half = t.ppf(0.975, df) * math.sqrt(total / 9)
    frame = pd.DataFrame([{"g": 1, "seed": s, "bench": b, "real_test_acc": d[s, b]}
                          for s in range(3) for b in range(3)])
    got = summarize(frame, ["g"], "real_test_acc").iloc[0]
    assert got["mean"] == pytest.approx(m) and got["n"] == 9
    assert got["ci95"] == pytest.approx(half)
    # with one bench: the ordinary t interval over the seeds
    one = frame[frame["bench"] == 0]
    assert summarize(one, ["g"], "real_test_acc").iloc[0]["ci95"] == pytest.approx(
        ci95(d[:, 0])[1])


def test_one_bench_or_one_seed_is_the_ordinary_paired_t_test():
    from scipy.stats import ttest_1samp

    d = np.array([0.1, 0.15, 0.05, 0.3])
    ref = ttest_1samp(d, 0.0)
    ci = ref.confidence_interval(0.95)
    for table in (d[:, None], d[None, :]):  # 4 seeds x 1 bench, 1 seed x 4 benches
        got = paired(*_crossed(table))
        assert got["p"] == pytest.approx(ref.pvalue) and got["df"] == pytest.approx(3)
        assert (got["t_lo"], got["t_hi"]) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_the_bootstrap_resamples_seeds_and_benches_independently():
    # a pure seed effect: a resample of seeds alone drawing seed 0 three times (1/27 > 2.5 %)
    # has mean 0; resampling the 9 pairs would almost never draw 9 pairs of seed 0
    d = np.array([[0.0] * 3, [0.1] * 3, [0.2] * 3])
    got = paired(*_crossed(d))
    assert got["boot_lo"] == pytest.approx(0.0, abs=1e-9)
    assert got["boot_hi"] == pytest.approx(0.2, abs=1e-9)


def test_needed_fraction_on_a_log_axis():
    f, m = [0.0, 0.01, 0.1, 1.0], [0.4, 0.5, 0.6, 0.9]
    value, rel = needed_fraction(f, m, 0.55)  # halfway between 1 % and 10 % in log fraction
    assert rel == "=" and value == pytest.approx(math.sqrt(0.01 * 0.1))
    assert needed_fraction(f, m, 0.3) == (0.0, "=")  # the baseline is already there at 0 %
    assert needed_fraction(f, m, 0.45) == (0.01, "<")  # between 0 and the smallest fraction
    assert needed_fraction(f, m, 0.5 + 1e-12) == (0.01, "=")  # equal up to rounding
    assert needed_fraction(f, m, 0.95) == (1.0, ">")  # never reached: not extrapolated


def test_needed_fraction_skips_missing_points():
    f = [0.0, 0.01, 0.1, 1.0]
    # the 1 % point is missing: the crossing lies between 0 and 10 %, first reached at 10 %
    assert needed_fraction(f, [0.4, math.nan, 0.6, 0.9], 0.55) == (0.1, "<")
    value, rel = needed_fraction(f, [0.4, 0.5, math.nan, 0.9], 0.7)  # 1 % -> 100 % in log f
    assert rel == "=" and value == pytest.approx(10 ** (-2 + (0.2 / 0.4) * 2))
    assert needed_fraction(f, [math.nan] * 4, 0.5) == (1.0, ">")


def test_needed_summary_is_a_median_with_a_bootstrap_interval():
    got = needed_summary([(0.02, "="), (0.05, "="), (0.1, "=")])
    # a resampled median is 0.02 when two or three draws are 0.02: 7/27 > 2.5 %
    assert got["median"] == {"value": pytest.approx(0.05), "relation": "="}
    assert got["lo"]["value"] == pytest.approx(0.02) and got["hi"]["value"] == pytest.approx(0.1)
    never = needed_summary([(1.0, ">"), (0.3, "="), (1.0, ">")])
    assert never["median"] == {"value": 1.0, "relation": ">"} and never["hi"]["relation"] == ">"
    assert needed_summary([])["median"] is None
    # an even count: the lower of the two middle answers (documented), never an average that
    # would mix a censored answer into a number
    even = needed_summary([(0.02, "="), (0.05, "="), (0.1, "="), (0.2, "=")])
    assert even["median"] == {"value": pytest.approx(0.05), "relation": "="}


def test_needed_summary_bootstraps_seeds_and_benches_independently():
    # 3 seeds x 20 benches, the answer set by the seed: resampling seeds draws seed 0 at least
    # twice in 7/27 of the resamples (median in seed 0's cluster); resampling the 60 answers
    # as if independent would almost never put 31 of them in that cluster
    base = {0: 0.01, 1: 0.05, 2: 0.1}
    pairs = [(s, b) for s in base for b in range(20)]
    answers = [(base[s] * (1 + 0.001 * b), "=") for s, b in pairs]
    got = needed_summary(answers, pairs=pairs)
    assert got["lo"]["value"] < 0.02 and got["hi"]["value"] > 0.09
    assert got["median"]["value"] == pytest.approx(0.05, rel=0.05)


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


def test_the_fraction_axis_counts_every_real_label_a_cell_used():
    """Under ``real-val`` a positive cell also labels all of real val (40 in TINY): the axis
    counts those labels too, not only the fraction's pool images."""
    from studies.stats import fraction_axis

    df = table_df(pool=150)
    df["n_real_pool"] = df["n_real_train"]
    df["n_real_labels"] = df["n_real_train"] + 40 * (df["fraction"] > 0)
    axis = fraction_axis(df, config_of(selection={"adapt": "real-val"}))
    assert list(axis["n_images"]) == [0, 55, 190]
    assert list(axis["true_percent"]) == pytest.approx([0.0, 100 * 55 / 150, 100 * 190 / 150])
    # a table from before the column existed: the pool count
    axis = fraction_axis(df.drop(columns="n_real_labels"), config_of())
    assert list(axis["n_images"]) == [0, 15, 150]


def test_the_fraction_axis_holds_real_image_counts():
    axis = headline(table_df(pool=150), config_of(), "real_test_acc")["fraction_axis"]
    assert [(r["percent"], r["n_images"], r["true_percent"]) for r in axis] == [
        (0.0, 0, 0.0), (10.0, 15, 10.0), (100.0, 150, 100.0)]


def test_a_table_with_holes_keeps_its_largest_complete_part():
    index = pd.MultiIndex.from_tuples([(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)],
                                      names=["seed", "bench"])
    got = paired(pd.Series([0.5, 0.6, 0.7, 0.8, 0.9], index=index), pd.Series(0.1, index=index))
    # seed 2 ran on bench 0 only: it is dropped, 2 seeds x 2 benches remain
    assert (got["n"], got["n_seeds"], got["n_benches"]) == (4, 2, 2)
    assert got["mean"] == pytest.approx(0.55)
