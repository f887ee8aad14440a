"""The study report's figures (PNG for the page, PDF for a paper), drawn from the per-cell table;
next to each figure a CSV holds the numbers it plots (mean, clipped 95 % interval over seeds x
benches crossed, n; a ``selection`` column holding the oracle stamp where cells selected on real
test).

matplotlib is imported when a figure is drawn (with the Agg backend: no display needed), so
building tables alone never pays for it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from studies.config import ZERO_SHOT, StudyConfig
from studies.intervals import bounds_of, cell_ci, clip
from studies.stats import fraction_axis, summarize


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _data(frame: pd.DataFrame, stem: Path, stamp: str = "") -> None:
    """The plotted numbers as ``stem``.csv; with ``stamp`` a ``selection`` column holding it."""
    (frame.assign(selection=stamp) if stamp else frame).to_csv(stem.with_suffix(".csv"),
                                                               index=False)


def _save(fig, stem: Path, stamp: str = "") -> None:
    """PNG and PDF of ``fig``; ``stamp`` (e.g. the oracle warning) written across it."""
    if stamp:
        fig.text(0.5, 0.5, stamp.upper(), rotation=20, ha="center", va="center", fontsize=22,
                 color="red", alpha=0.35)
    fig.savefig(stem.with_suffix(".png"), dpi=150, bbox_inches="tight")
    fig.savefig(stem.with_suffix(".pdf"), bbox_inches="tight")
    _plt().close(fig)


def figure_curves(points: pd.DataFrame, config: StudyConfig, metric: str, stem: Path,
                  stamp: str = "") -> None:
    """One panel per adaptation method: a line per policy (band = 95 % CI over seeds x
    benches, clipped to the metric's range), the real-only reference dashed in every panel.
    The x axis is the true share of the pool, labelled with the real images it holds."""
    plt = _plt()
    s = summarize(points, ["curve", "percent"], metric)
    axis = fraction_axis(points, config).set_index("percent")
    s = s.join(axis[["n_images", "true_percent"]], on="percent")
    _data(s, stem, stamp)
    methods = [m for m in config.methods if m != "real-only"] or ["real-only"]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.6 * len(methods), 3.8), sharey=True,
                             squeeze=False)
    colors = {p.key: f"C{i}" for i, p in enumerate(config.policies)}
    ticks = axis[axis.index.isin(points["percent"].unique())]

    def draw(ax, curve, label, **style):
        c = s[s["curve"] == curve].sort_values("percent")
        if c.empty:
            return
        ax.plot(c["true_percent"], c["mean"], marker="o", label=label, **style)
        ax.fill_between(c["true_percent"], c["lo"].fillna(c["mean"]),
                        c["hi"].fillna(c["mean"]), alpha=0.15, color=style["color"])

    for ax, method in zip(axes[0], methods):
        for spec in config.policies:
            draw(ax, f"{spec.key}/{method}", spec.key, color=colors[spec.key])
        draw(ax, "real-only", "real-only", color="black", linestyle="--")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xticks(ticks["true_percent"], [_tick(r) for _, r in ticks.iterrows()],
                      fontsize=7)
        ax.set_xlabel("labelled real images (true % of the pool)")
        ax.set_title(method if method != "real-only" else "reference", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(metric.replace("_", " "))
    fig.suptitle("Fine-tune-fraction curves (mean, 95 % CI)", fontsize=11)
    _save(fig, stem, stamp)


def _tick(row) -> str:
    if row["n_images"] is None or not np.isfinite(row["n_images"]):
        return f"{row['true_percent']:.3g} %"
    return f"{int(row['n_images'])}\n({row['true_percent']:.3g} %)"


def _bars(zero: pd.DataFrame, specs, key: str) -> pd.DataFrame:
    """mean, lo, hi (clipped 95 % CI), n of ``key`` per policy at 0 %."""
    rows = []
    for p in specs:
        mean, ci, n = cell_ci(zero[zero["policy"] == p.key], key)
        ci = 0.0 if not np.isfinite(ci) else ci
        lo, hi = clip(mean - ci, mean + ci, bounds_of(key))
        rows.append({"policy": p.key, "metric": key, "mean": mean, "lo": lo, "hi": hi, "n": n})
    return pd.DataFrame(rows)


def _yerr(bars: pd.DataFrame):
    return [(bars["mean"] - bars["lo"]).to_numpy(), (bars["hi"] - bars["mean"]).to_numpy()]


def figure_policies(df: pd.DataFrame, config: StudyConfig, metric: str, stem: Path,
                    stamp: str = "") -> None:
    plt = _plt()
    zero = df[df["method"] == ZERO_SHOT]
    specs = [p for p in config.all_policies() if p.key in set(zero["policy"])]
    bars = _bars(zero, specs, metric)
    _data(bars, stem, stamp)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(specs) + 2), 3.8))
    colors = ["tab:gray" if p.key == config.report.baseline else
              "tab:orange" if p in config.ablations else "tab:blue" for p in specs]
    x = np.arange(len(specs))
    ax.bar(x, bars["mean"], yerr=_yerr(bars), color=colors, capsize=3)
    ax.set_xticks(x, [p.key for p in specs], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric.replace('_', ' ')} at 0 %")
    ax.set_title("Policies at 0 % real data (blue: compared, orange: ablation)")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, stem, stamp)


def figure_gap(df: pd.DataFrame, config: StudyConfig, metric: str, stem: Path,
               stamp: str = "") -> None:
    plt = _plt()
    zero = df[df["method"] == ZERO_SHOT]
    specs = [p for p in config.all_policies() if p.key in set(zero["policy"])]
    sim_key = metric.replace("real_test", "sim_real_test")
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(specs) + 2), 3.8))
    x = np.arange(len(specs))
    drawn = []
    for offset, key, label in ((-0.2, sim_key, "sim (same inputs)"), (0.2, metric, "real")):
        if key not in zero:
            continue
        bars = _bars(zero, specs, key)
        drawn.append(bars)
        ax.bar(x + offset, bars["mean"], width=0.4, label=label, capsize=3, yerr=_yerr(bars))
    if drawn:
        _data(pd.concat(drawn), stem, stamp)
    ax.set_xticks(x, [p.key for p in specs], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric.removeprefix('real_test_')} at 0 %")
    ax.set_title("Sim vs real (gap = sim − real)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    _save(fig, stem, stamp)


def figure_tsne(npz: Path, title: str, stem: Path, points: int, seed: int = 0,
                stamp: str = "") -> None:
    from sklearn.manifold import TSNE

    plt = _plt()
    with np.load(npz) as data:
        sim, real = data["sim_features"][:points], data["real_features"][:points]
        ys, yr = data["sim_labels"][:points], data["real_labels"][:points]
    x = np.concatenate([sim, real]).astype(np.float64)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    emb = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(emb[: len(sim), 0], emb[: len(sim), 1], c=ys, cmap="tab10", marker="o", s=10,
               alpha=0.6, label="sim")
    ax.scatter(emb[len(sim):, 0], emb[len(sim):, 1], c=yr, cmap="tab10", marker="x", s=14,
               alpha=0.8, label="real")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(title="o sim / x real (colour = class)", fontsize=7, title_fontsize=7)
    _save(fig, stem, stamp)

