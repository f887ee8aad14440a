"""The study report, built from what the storage holds (never from a live process's memory).

Cells come from the Optuna storage (the COMPLETE trial of each grid cell and the MLflow run it
names); their numbers come from MLflow (the run's metrics and artifacts).  Output, written
atomically into ``<study>/report/``:

    report.md                       everything on one page
    tables/*.csv|md|tex             mean ± 95 % CI over seeds x benches (t distribution)
    figures/*.png|pdf               fraction curves, policy comparison at 0 %, sim vs real gap, t-SNE
    headline.json                   the headline numbers of DESIGN.md section 6
    cells.csv                       one row per cell (the raw numbers)

Statistics: every (seed, bench) pair of a cell group is one sample; CI = t_{0.975, n-1} s / √n.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from optuna.trial import TrialState

from harness.errors import SimgapError
from studies.config import ZERO_SHOT, StudyConfig
from studies.grid import Cell, StudyHandle, grid_cells, open_study

FEATURES = "features.npz"
AXES = ["policy", "method", "fraction", "seed", "bench"]


# ---------------------------------------------------------------------------------- collect
def collect(handle: StudyHandle) -> pd.DataFrame:
    """One row per completed cell: the grid axes, the MLflow run id and its final metrics."""
    cells = {c.id: c for c in grid_cells(handle.config)}
    chosen: dict[str, object] = {}
    for t in handle.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        cell = t.user_attrs.get("cell")
        if cell in cells and (cell not in chosen or t.number < chosen[cell].number):
            chosen[cell] = t
    tracking = handle.tracking()
    runs = {}
    if handle.parent_run_id:
        query = f"tags.`mlflow.parentRunId` = '{handle.parent_run_id}'"
        runs = {r.info.run_id: r for r in _search(tracking, query)}
    rows = []
    for cell_id, trial in chosen.items():
        run_id = trial.user_attrs.get("mlflow_run_id")
        run = runs.get(run_id) or (tracking.get_run(run_id) if run_id else None)
        if run is None:
            continue
        cell = cells[cell_id]
        rows.append({"cell": cell_id, "variant": cell.variant, **cell.params,
                     "percent": cell.percent, "trial": trial.number, "run_id": run_id,
                     **run.data.metrics})
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["cell", "variant", *AXES, "percent", "trial", "run_id"])
    return df.sort_values(["policy", "method", "fraction", "seed", "bench"]).reset_index(drop=True)


def _search(tracking, query: str) -> list:
    from studies.tracking import retry

    out, token = [], None
    while True:
        page = retry(tracking.client.search_runs, [tracking.experiment_id], query,
                     max_results=5000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


# ---------------------------------------------------------------------------------- statistics
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


def fmt(mean: float, ci: float, digits: int = 3) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" if not np.isfinite(ci) else f"{mean:.{digits}f} ± {ci:.{digits}f}"


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


def _curve_order(config: StudyConfig) -> list[str]:
    names = [f"{p.key}/{m}" for m in config.methods if m != "real-only" for p in config.policies]
    return names + (["real-only"] if "real-only" in config.methods else [])


# ---------------------------------------------------------------------------------- headline
def headline(df: pd.DataFrame, config: StudyConfig, metric: str) -> dict:
    """The headline numbers of DESIGN.md section 6 (each with mean, ci95, n where it applies)."""
    out: dict = {"metric": metric, "zero_shot": {}, "gap": {}, "reached": {}, "baseline_needs": {}}
    zero = df[df["method"] == ZERO_SHOT] if not df.empty else df
    for spec in config.all_policies():
        z = zero[zero["policy"] == spec.key] if not zero.empty else zero
        if z.empty:
            continue
        out["zero_shot"][spec.key] = dict(zip(("mean", "ci95", "n"), ci95(z[metric])))
        if "gap" in z:
            out["gap"][spec.key] = dict(zip(("mean", "ci95", "n"), ci95(z["gap"])))
    points = curve_points(df, config)
    for curve, group in points.groupby("curve", sort=False) if not points.empty else []:
        full = group[group["fraction"] == 1.0].set_index(["seed", "bench"])[metric]
        if full.empty:
            continue
        reached = {}
        for frac in [f for f in config.fractions if 0.0 < f < 1.0]:  # DESIGN: 1 % and 5 %
            at = group[np.isclose(group["fraction"], frac)].set_index(["seed", "bench"])[metric]
            ratio = (at / full).dropna()
            if len(ratio):
                reached[f"{frac * 100:g}%"] = dict(zip(("mean", "ci95", "n"), ci95(ratio)))
        if reached:
            out["reached"][curve] = reached
    base = config.report.baseline
    means = summarize(points, ["curve", "percent"], metric) if not points.empty else None
    for method in [m for m in config.methods if m != "real-only"]:
        if means is None:
            break
        base_curve = means[means["curve"] == f"{base}/{method}"].sort_values("percent")
        if base_curve.empty:
            continue
        for spec in config.all_policies():
            if spec.key == base or spec.key not in out["zero_shot"]:
                continue
            target = out["zero_shot"][spec.key]["mean"]
            out["baseline_needs"].setdefault(spec.key, {})[method] = needed_percent(
                base_curve["percent"].to_numpy(), base_curve["mean"].to_numpy(), target
            )
    return out


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


# ---------------------------------------------------------------------------------- tables
def tables(df: pd.DataFrame, config: StudyConfig, metric: str) -> dict[str, pd.DataFrame]:
    points = curve_points(df, config)
    out = {}
    if not points.empty:
        s = summarize(points, ["curve", "percent"], metric)
        s["text"] = [fmt(m, c) for m, c in zip(s["mean"], s["ci95"])]
        wide = s.pivot(index="curve", columns="percent", values="text")
        wide = wide.reindex([c for c in _curve_order(config) if c in wide.index])
        wide.columns = [f"{p:g} %" for p in wide.columns]
        out["fraction_curves"] = wide.fillna("–")
    zero = df[df["method"] == ZERO_SHOT] if not df.empty else df
    if not zero.empty:
        cols = [c for c in (metric, "sim_real_test_acc", "gap", "sim_test_acc", "real_val_acc",
                            "feature_mmd2") if c in zero]
        rows = []
        for spec in config.all_policies():
            z = zero[zero["policy"] == spec.key]
            if z.empty:
                continue
            row = {"policy": spec.key, "kind": "ablation" if spec in config.ablations else
                   "compared", "n": len(z)}
            row.update({c: fmt(*ci95(z[c])[:2]) for c in cols})
            rows.append(row)
        out["zero_shot"] = pd.DataFrame(rows).set_index("policy")
    return out


def write_table(table: pd.DataFrame, stem: Path, caption: str) -> None:
    table.to_csv(stem.with_suffix(".csv"))
    stem.with_suffix(".md").write_text(table.to_markdown() + "\n")
    latex = table.to_latex(caption=caption, label=f"tab:{stem.name}").replace("±", r"$\pm$")
    stem.with_suffix(".tex").write_text(latex.replace("%", r"\%").replace(r"\\%", r"\%"))


# ---------------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, stem: Path) -> None:
    fig.savefig(stem.with_suffix(".png"), dpi=150, bbox_inches="tight")
    fig.savefig(stem.with_suffix(".pdf"), bbox_inches="tight")
    _plt().close(fig)


def figure_curves(points: pd.DataFrame, config: StudyConfig, metric: str, stem: Path) -> None:
    """One panel per adaptation method: a line per policy (band = 95 % CI over seeds x
    benches), the real-only reference dashed in every panel."""
    plt = _plt()
    s = summarize(points, ["curve", "percent"], metric)
    methods = [m for m in config.methods if m != "real-only"] or ["real-only"]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.6 * len(methods), 3.8), sharey=True,
                             squeeze=False)
    colors = {p.key: f"C{i}" for i, p in enumerate(config.policies)}
    ticks = sorted(points["percent"].unique())

    def draw(ax, curve, label, **style):
        c = s[s["curve"] == curve].sort_values("percent")
        if c.empty:
            return
        ax.plot(c["percent"], c["mean"], marker="o", label=label, **style)
        band = c["ci95"].fillna(0.0)
        ax.fill_between(c["percent"], c["mean"] - band, c["mean"] + band, alpha=0.15,
                        color=style["color"])

    for ax, method in zip(axes[0], methods):
        for spec in config.policies:
            draw(ax, f"{spec.key}/{method}", spec.key, color=colors[spec.key])
        draw(ax, "real-only", "real-only", color="black", linestyle="--")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xlabel("labelled real data (% of the pool)")
        ax.set_title(method if method != "real-only" else "reference", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(metric.replace("_", " "))
    fig.suptitle("Fine-tune-fraction curves (mean ± 95 % CI)", fontsize=11)
    _save(fig, stem)


def figure_policies(df: pd.DataFrame, config: StudyConfig, metric: str, stem: Path) -> None:
    plt = _plt()
    zero = df[df["method"] == ZERO_SHOT]
    specs = [p for p in config.all_policies() if p.key in set(zero["policy"])]
    stats = [ci95(zero[zero["policy"] == p.key][metric]) for p in specs]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(specs) + 2), 3.8))
    colors = ["tab:gray" if p.key == config.report.baseline else
              "tab:orange" if p in config.ablations else "tab:blue" for p in specs]
    x = np.arange(len(specs))
    ax.bar(x, [s[0] for s in stats], yerr=[0 if not np.isfinite(s[1]) else s[1] for s in stats],
           color=colors, capsize=3)
    ax.set_xticks(x, [p.key for p in specs], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric.replace('_', ' ')} at 0 %")
    ax.set_title("Policies at 0 % real data (blue: compared, orange: ablation)")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, stem)


def figure_gap(df: pd.DataFrame, config: StudyConfig, metric: str, stem: Path) -> None:
    plt = _plt()
    zero = df[df["method"] == ZERO_SHOT]
    specs = [p for p in config.all_policies() if p.key in set(zero["policy"])]
    sim_key = metric.replace("real_test", "sim_real_test")
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(specs) + 2), 3.8))
    x = np.arange(len(specs))
    for offset, key, label in ((-0.2, sim_key, "sim (same inputs)"), (0.2, metric, "real")):
        if key not in zero:
            continue
        st = [ci95(zero[zero["policy"] == p.key][key]) for p in specs]
        ax.bar(x + offset, [s[0] for s in st], width=0.4, label=label, capsize=3,
               yerr=[0 if not np.isfinite(s[1]) else s[1] for s in st])
    ax.set_xticks(x, [p.key for p in specs], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric.removeprefix('real_test_')} at 0 %")
    ax.set_title("Sim vs real (gap = sim − real)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    _save(fig, stem)


def figure_tsne(npz: Path, title: str, stem: Path, points: int, seed: int = 0) -> None:
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
    _save(fig, stem)


def tsne_cells(config: StudyConfig) -> list[Cell]:
    """Cells whose features get a t-SNE plot: the 0 % cell of each chosen policy (default: the
    baseline and the first other compared policy) at the first seed and bench."""
    labels = list(config.report.tsne)
    if not labels:
        keys = [p.key for p in config.policies]
        labels = [k for k in keys if k == config.report.baseline][:1]
        labels += [k for k in keys if k != config.report.baseline][:1]
    seed, bench = config.seeds[0], config.bench.seeds[0]
    return [Cell(label, ZERO_SHOT, 0.0, seed, bench) for label in labels]


# ---------------------------------------------------------------------------------- report
def build_report(
    study: str | Path, tracking_uri: str | None = None, log_to_mlflow: bool = True
) -> Path:
    """Build ``<study>/report/`` from the storage and tracking contents; returns report.md."""
    study_dir = Path(study)
    handle = open_study(study_dir, tracking_uri=tracking_uri)
    config = handle.config
    metric = config.primary_metric
    df = collect(handle)
    expected = grid_cells(config)
    if df.empty:
        raise SimgapError(f"{study_dir}: no completed cells yet; nothing to report")
    tmp = Path(tempfile.mkdtemp(prefix=".report.tmp-", dir=study_dir))
    try:
        (tmp / "tables").mkdir()
        (tmp / "figures").mkdir()
        df.to_csv(tmp / "cells.csv", index=False)
        tabs = tables(df, config, metric)
        captions = {"fraction_curves": f"{metric} vs labelled real fraction (mean ± 95 % CI)",
                    "zero_shot": "Policies at 0 % real data (mean ± 95 % CI)"}
        for name, table in tabs.items():
            write_table(table, tmp / "tables" / name, captions[name])
        head = headline(df, config, metric)
        head_tables = headline_tables(head)
        for name, table in head_tables.items():
            write_table(table, tmp / "tables" / name, "Headline numbers (mean ± 95 % CI)")
        (tmp / "headline.json").write_text(json.dumps(head, indent=2, default=_json) + "\n")
        points = curve_points(df, config)
        figs = []
        if not points.empty:
            figure_curves(points, config, metric, tmp / "figures" / "fraction_curves")
            figs.append(("Fine-tune-fraction curves", "fraction_curves"))
        if (df["method"] == ZERO_SHOT).any():
            figure_policies(df, config, metric, tmp / "figures" / "policies_zero_shot")
            figure_gap(df, config, metric, tmp / "figures" / "sim_real_gap")
            figs += [("Policies at 0 % (with ablations)", "policies_zero_shot"),
                     ("Sim vs real", "sim_real_gap")]
        figs += _tsne_figures(handle, df, tmp)
        md = report_markdown(handle, df, expected, tabs, head_tables, figs, metric)
        (tmp / "report.md").write_text(md)
        dest = study_dir / "report"
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if log_to_mlflow and handle.parent_run_id:
        _log_parent(handle, points, metric, dest)
    return dest / "report.md"


def _tsne_figures(handle: StudyHandle, df: pd.DataFrame, tmp: Path) -> list[tuple[str, str]]:
    config = handle.config
    out = []
    by_cell = df.set_index("cell")
    tracking = handle.tracking()
    for cell in tsne_cells(config):
        if cell.id not in by_cell.index:
            continue
        got = tracking.download(by_cell.loc[cell.id, "run_id"], FEATURES, tmp / "dl")
        if got is None:
            continue
        stem = f"tsne_{_slug(cell.policy)}"
        figure_tsne(got, f"t-SNE of features: {cell.id}", tmp / "figures" / stem,
                    config.report.tsne_points)
        out.append((f"t-SNE, {cell.id}", stem))
    shutil.rmtree(tmp / "dl", ignore_errors=True)
    return out


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)


def _json(obj):
    return None if isinstance(obj, float) and not math.isfinite(obj) else str(obj)


def headline_tables(head: dict) -> dict[str, pd.DataFrame]:
    """Two tables: per policy at 0 % (accuracy, gap, real data the baseline needs to match it)
    and per curve (share of its 100 % accuracy reached at 1 % and 5 %)."""
    metric = head["metric"]
    rows = []
    for policy, s in head["zero_shot"].items():
        row = {"policy": policy, f"{metric} at 0 %": fmt(s["mean"], s["ci95"])}
        gap = head["gap"].get(policy)
        row["gap (sim − real)"] = fmt(gap["mean"], gap["ci95"]) if gap else "–"
        for method, pct in head["baseline_needs"].get(policy, {}).items():
            row[f"baseline needs (% real, {method})"] = (
                "> largest fraction" if pct is None else f"{pct:.3g}")
        rows.append(row)
    per_policy = pd.DataFrame(rows).set_index("policy").fillna("–")
    rows = [{"curve": curve, **{f"share of 100 % at {frac}": fmt(s["mean"], s["ci95"])
                                for frac, s in reached.items()}}
            for curve, reached in head["reached"].items()]
    per_curve = pd.DataFrame(rows).set_index("curve") if rows else pd.DataFrame()
    return {"headline_policies": per_policy, "headline_curves": per_curve.fillna("–")}


def report_markdown(handle, df, expected, tabs, head_tables, figs, metric) -> str:
    config = handle.config
    done = set(df["cell"])
    missing = [c.id for c in expected if c.id not in done]
    lines = [
        f"# simgap study report: {config.name}",
        "",
        f"- cells: **{len(done)} / {len(expected)}** complete"
        + (f" (missing: {', '.join(missing[:20])}{' …' if len(missing) > 20 else ''})"
           if missing else ""),
        (f"- seeds {config.seeds}, bench seeds {config.bench.seeds} (preset "
        f"`{config.bench.preset}`), real fractions {[f'{f * 100:g} %' for f in config.fractions]}"),
        (f"- source `{config.data.source}` at n = {config.data.size}; sim train/val/test "
        f"{config.data.sim.train}/{config.data.sim.val}/{config.data.sim.test}; real "
        f"pool/val/test {config.data.real.pool}/{config.data.real.val}/{config.data.real.test}"),
        (f"- policies {[p.key for p in config.policies]}, ablations "
        f"{[p.key for p in config.ablations]}, methods {config.methods}"),
        (f"- storage `{handle.storage_url}` (study `{handle.study_name}`), tracking "
        f"`{handle.tracking_uri}` (parent run `{handle.parent_run_id}`)"),
        "",
        ("Protocol: splits are fixed by `data.split_seed` and recorded; the nested real fractions "
        "are drawn per seed; model selection uses "
        f"`{config.selection.sim}` (sim) and `{config.selection.adapt}` (adaptation); the real "
        "test split is read once per cell, for the final numbers only.  Values are mean ± 95 % "
        "CI (t distribution) over seeds x benches."),
        "",
        "## Headline numbers",
        "",
        (f"Per policy: {metric} with no real data, the sim-to-real gap, and how much labelled "
        "real data the no-augmentation baseline "
        f"(`{config.report.baseline}`) needs to match it (per adaptation method)."),
        "",
        head_tables["headline_policies"].to_markdown(),
        "",
        (f"Per curve: the share of its own 100 % {metric} reached with less real data "
         "(per seed and bench, then averaged)."),
        "",
        head_tables["headline_curves"].to_markdown() if len(head_tables["headline_curves"])
        else "(needs cells at 100 % and at a smaller positive fraction)",
        "",
    ]
    if "fraction_curves" in tabs:
        lines += [f"## {metric} vs labelled real fraction", "",
                  tabs["fraction_curves"].to_markdown(), ""]
    if "zero_shot" in tabs:
        lines += ["## Policies at 0 % real data", "", tabs["zero_shot"].to_markdown(), ""]
    lines += ["## Figures", ""]
    for title, stem in figs:
        lines += [f"### {title}", "", f"![{title}](figures/{stem}.png)", ""]
    lines += [("Tables as CSV / Markdown / LaTeX in `tables/`, figures as PNG / PDF in "
              "`figures/`, raw per-cell numbers in `cells.csv`."), ""]
    return "\n".join(lines)


def _swap_in(tmp: Path, dest: Path) -> None:
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def _log_parent(handle: StudyHandle, points: pd.DataFrame, metric: str, dest: Path) -> None:
    """Curves at step = % real on the parent run, and the report as its artifact."""
    tracking = handle.tracking()
    if not points.empty:
        s = summarize(points, ["curve", "percent"], metric)
        for curve, group in s.groupby("curve"):
            for _, row in group.iterrows():
                if np.isfinite(row["mean"]):
                    tracking.log_metrics(handle.parent_run_id,
                                         {f"curve/{curve}/{metric}": row["mean"]},
                                         step=round(row["percent"]))
    tracking.log_artifact(handle.parent_run_id, dest, "report")
