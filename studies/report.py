"""The study report, built from what the storage holds (never from a live process's memory).

Cells come from the Optuna storage (the COMPLETE trial of each grid cell and the MLflow run it
names); their numbers come from MLflow (the run's metrics and artifacts).  Output, written
atomically into ``<study>/report/``:

    report.md                       everything on one page
    tables/*.csv|md|tex             mean ± 95 % CI over seeds x benches (crossed);
                                    LaTeX as booktabs tables that compile
    figures/*.png|pdf|csv           fraction curves, policies at 0 %, sim vs real gap, t-SNE
                                    (the CSV holds the plotted numbers)
    headline.json                   the headline numbers of docs/DESIGN.md section 6 and the
                                    paired comparisons (strict JSON: null for a missing number)
    cells.csv                       one row per cell (the raw numbers)

The statistics are :mod:`studies.stats`, the figures :mod:`studies.figures`, the number formats,
LaTeX, JSON and the findings sentences :mod:`studies.outputs`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from optuna.trial import TrialState

from harness.errors import SimgapError
from harness.files import staged_dir, write_json
from studies.config import ZERO_SHOT, StudyConfig
from studies.figures import figure_curves, figure_gap, figure_policies, figure_tsne
from studies.grid import AXES, Cell, grid_cells
from studies.intervals import bounds_of, cell_ci
from studies.live import log_curve_points
from studies.outputs import (
    comparisons_table,
    findings,
    fmt,
    fmt_needs,
    strict,
    write_table,
)
from studies.progress import report_bar, report_step
from studies.protocol import ORACLE_STAMP
from studies.stats import (
    curve_order,
    curve_points,
    fraction_axis,
    headline,
    summarize,
)
from studies.storage import StudyHandle, mask_url, open_study
from studies.tracking import retry

FEATURES = "features.npz"


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
                     "bench_label": handle.config.bench.of(cell.bench).label,
                     "percent": cell.percent, "trial": trial.number, "run_id": run_id,
                     **run.data.metrics})
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["cell", "variant", *AXES, "percent", "trial", "run_id"])
    return df.sort_values(["policy", "method", "fraction", "seed", "bench"]).reset_index(drop=True)


def _search(tracking, query: str) -> list:
    out, token = [], None
    while True:
        page = retry(tracking.client.search_runs, [tracking.experiment_id], query,
                     max_results=5000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


# ---------------------------------------------------------------------------------- tables
def tables(df: pd.DataFrame, config: StudyConfig, metric: str) -> dict[str, pd.DataFrame]:
    """The fraction-curve table (its last row: the real images each fraction holds and the
    true share of the pool) and the table of policies at 0 %."""
    points = curve_points(df, config)
    out = {}
    if not points.empty:
        s = summarize(points, ["curve", "percent"], metric)
        s["text"] = [fmt(m, c, n, bounds_of(metric))
                     for m, c, n in zip(s["mean"], s["ci95"], s["n"])]
        wide = s.pivot(index="curve", columns="percent", values="text")
        wide = wide.reindex([c for c in curve_order(config) if c in wide.index])
        axis = fraction_axis(df, config).set_index("percent")
        wide.loc[AXIS_ROW] = [_axis_text(axis, p) for p in wide.columns]
        wide.columns = [f"{p:g} %" for p in wide.columns]
        out["fraction_curves"] = wide.fillna("–")
    zero = df[df["method"] == ZERO_SHOT] if not df.empty else df
    if not zero.empty:
        out["zero_shot"] = _zero_shot_table(zero, config, metric)
    return out


AXIS_ROW = "real images (true % of pool)"


def _axis_text(axis: pd.DataFrame, percent: float) -> str:
    if percent not in axis.index or axis.loc[percent, "n_images"] is None:
        return "–"
    return f"{int(axis.loc[percent, 'n_images'])} ({axis.loc[percent, 'true_percent']:.3g} %)"


def _zero_shot_table(zero: pd.DataFrame, config: StudyConfig, metric: str) -> pd.DataFrame:
    keys = (metric, "sim_real_test_acc", "gap", "sim_test_acc", "feature_mmd2")
    cols = [c for c in keys if c in zero]
    rows = []
    for spec in config.all_policies():
        z = zero[zero["policy"] == spec.key]
        if z.empty:
            continue
        row = {"policy": spec.key, "kind": "ablation" if spec in config.ablations else
               "compared", "n": len(z)}
        row.update({c: fmt(*cell_ci(z, c)[:2], bounds=bounds_of(c)) for c in cols})
        rows.append(row)
    return pd.DataFrame(rows).set_index("policy")


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
    study: str | Path, tracking_uri: str | None = None, log_to_mlflow: bool = True,
    progress: bool = False,
) -> Path:
    """Build ``<study>/report/`` from the storage and tracking contents; returns report.md.
    ``progress``: a bar over the steps (cells, tables, figures, t-SNE, MLflow) on stderr."""
    study_dir = Path(study)
    handle = open_study(study_dir, tracking_uri=tracking_uri)
    with report_bar(progress) as bar:
        df = collect(handle)
        if df.empty:
            raise SimgapError(f"{study_dir}: no completed cells yet; nothing to report")
        dest = study_dir / "report"
        with staged_dir(dest) as tmp:
            _write_report(handle, df, tmp, bar)
        if log_to_mlflow and handle.parent_run_id:
            _log_parent(handle, dest)
        report_step(bar)
    return dest / "report.md"


def _write_report(handle: StudyHandle, df: pd.DataFrame, tmp: Path, bar=None) -> pd.DataFrame:
    """Write the report's files into ``tmp``; returns the curve points.  ``bar``: the progress
    bar of :func:`build_report` (one step each: tables, figures, t-SNE)."""
    bar = bar if bar is not None else report_bar(False)
    report_step(bar)
    config = handle.config
    metric = config.primary_metric
    (tmp / "tables").mkdir()
    (tmp / "figures").mkdir()
    df.to_csv(tmp / "cells.csv", index=False)
    stamp = oracle_stamp(df)
    tabs = tables(df, config, metric)
    head = {**headline(df, config, metric), "stamp": stamp or None}
    tabs.update(headline_tables(head))
    tabs["comparisons"] = comparisons_table(head)
    for name, table in tabs.items():
        caption = CAPTIONS.get(name, "Headline numbers (mean ± 95 % CI; baseline needs: "
                               "lower median [95 % bootstrap CI] over seeds x benches)")
        write_stamped(table, tmp / "tables" / name, caption.format(metric=metric), stamp)
    write_json(tmp / "headline.json", strict(head), allow_nan=False)
    report_step(bar)
    points = curve_points(df, config)
    figs = _figures(df, points, config, metric, tmp / "figures", stamp)
    report_step(bar)
    figs += _tsne_figures(handle, df, tmp, stamp)
    report_step(bar)
    md = report_markdown(handle, df, grid_cells(config), tabs, head, figs)
    md += _per_bench(df, config, metric, tmp, stamp)
    (tmp / "report.md").write_text(md)
    return points


CAPTIONS = {"fraction_curves": "{metric} vs labelled real fraction (mean ± 95 % CI)",
            "zero_shot": "Policies at 0 % real data (mean ± 95 % CI)",
            "comparisons": "Paired comparisons of {metric}, seeds x benches crossed (95 % CI)"}


def write_stamped(table: pd.DataFrame, stem: Path, caption: str, stamp: str = "") -> None:
    """:func:`write_table`, with a ``stamp`` (oracle) column and caption prefix if given."""
    if stamp:
        caption, table = f"{stamp.upper()}: {caption}", table.assign(selection=stamp)
    write_table(table, stem, caption)


def oracle_stamp(df: pd.DataFrame) -> str:
    """:data:`studies.protocol.ORACLE_STAMP` when any cell selected on real test, else ""."""
    if "oracle_invalid" in df and (df["oracle_invalid"].fillna(0) > 0).any():
        return ORACLE_STAMP
    return ""


def _figures(df: pd.DataFrame, points: pd.DataFrame, config: StudyConfig, metric: str,
             folder: Path, stamp: str = "") -> list[tuple[str, str]]:
    """(title, file stem) of the figures drawn into ``folder``."""
    figs = []
    if not points.empty:
        figure_curves(points, config, metric, folder / "fraction_curves", stamp)
        figs.append(("Fine-tune-fraction curves", "fraction_curves"))
    if (df["method"] == ZERO_SHOT).any():
        figure_policies(df, config, metric, folder / "policies_zero_shot", stamp)
        figure_gap(df, config, metric, folder / "sim_real_gap", stamp)
        figs += [("Policies at 0 % (with ablations)", "policies_zero_shot"),
                 ("Sim vs real", "sim_real_gap")]
    return figs


def _tsne_figures(handle: StudyHandle, df: pd.DataFrame, tmp: Path,
                  stamp: str = "") -> list[tuple[str, str]]:
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
                    config.report.tsne_points, stamp=stamp)
        out.append((f"t-SNE, {cell.id}", stem))
    shutil.rmtree(tmp / "dl", ignore_errors=True)
    return out


def _per_bench(df: pd.DataFrame, config: StudyConfig, metric: str, tmp: Path,
               stamp: str = "") -> str:
    """With several bench kinds: each one's headline and tables (``tables/NAME@BENCH``,
    stamped like the others) and their report section; "" with one."""
    labels = sorted(df["bench_label"].unique()) if "bench_label" in df else []
    if len(labels) < 2:
        return ""
    lines = ["## Per bench", "", "The numbers above pool every bench; here each bench alone.", ""]
    for label in labels:
        part = df[df["bench_label"] == label]
        tabs = {**tables(part, config, metric),
                **headline_tables(headline(part, config, metric))}  # fmt: skip
        for name, table in tabs.items():
            caption = CAPTIONS.get(name, "Headline numbers").format(metric=metric)
            write_stamped(table, tmp / "tables" / f"{name}@{_slug(label)}",
                          f"{caption} (bench {label})", stamp)  # fmt: skip
        lines += [f"### bench `{label}`", ""]
        lines += [tabs[n].to_markdown() + "\n" for n in ("headline_policies", "fraction_curves")
                  if n in tabs]  # fmt: skip
    return "\n".join(lines)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)


def headline_tables(head: dict) -> dict[str, pd.DataFrame]:
    """Two tables: per policy at 0 % (metric, gap, real data the baseline needs to match it:
    median [95 % bootstrap interval] over seed x bench) and per curve (its share of the 100 %
    result at each smaller fraction, see ``head["share_kind"]``)."""
    metric = head["metric"]
    bounds = bounds_of(metric)
    rows = []
    for policy, s in head["zero_shot"].items():
        row = {"policy": policy, f"{metric} at 0 %": fmt(s["mean"], s["ci95"], s["n"], bounds)}
        gap = head["gap"].get(policy)
        row["gap (sim − real)"] = fmt(gap["mean"], gap["ci95"], gap["n"]) if gap else "–"
        for method, needs in head["baseline_needs"].get(policy, {}).items():
            row[f"baseline needs (% real, {method})"] = fmt_needs(needs)
        rows.append(row)
    per_policy = pd.DataFrame(rows).set_index("policy").fillna("–")
    images = {f"{row['percent']:g}%": row["n_images"] for row in head["fraction_axis"]}
    rows = [{"curve": curve, **{f"share at {frac} ({images.get(frac, '?')} images)":
                                fmt(s["mean"], s["ci95"], s["n"]) for frac, s in reached.items()}}
            for curve, reached in head["reached"].items()]
    per_curve = pd.DataFrame(rows).set_index("curve") if rows else pd.DataFrame()
    return {"headline_policies": per_policy, "headline_curves": per_curve.fillna("–")}


def report_markdown(handle, df, expected, tabs, head, figs) -> str:
    """report.md: the study, its findings (paired comparisons), headline, tables, figures."""
    config, metric = handle.config, head["metric"]
    head_tables = headline_tables(head)
    lines = _intro(handle, df, expected)
    if head.get("stamp"):
        lines += [(f"**{head['stamp'].upper()}**: model selection read the real test split "
                   "(`selection.adapt: oracle`); no number below is a valid result."), ""]
    lines += ["## Findings", "", *findings(head), ""]
    lines += [
        "## Headline numbers",
        "",
        (f"Per policy: {metric} with no real data, the sim-to-real gap, and how much labelled "
        "real data the no-augmentation baseline "
        f"(`{config.report.baseline}`) needs to match it (per adaptation method; per seed and "
        "bench on a log-fraction axis, lower median [95 % bootstrap interval]; '<' / '>': first "
        "reached below the smallest / never reached up to the largest fraction)."),
        "",
        head_tables["headline_policies"].to_markdown(),
        "",
        (f"Per curve: its share of its own 100 % result, {head['share_kind']}"
         + (f" with chance = {head['chance']:.3g}" if head.get("chance") else "")
         + ", per seed and bench, then averaged."),
        "",
        head_tables["headline_curves"].to_markdown() if len(head_tables["headline_curves"])
        else "(needs cells at 100 % and at a smaller positive fraction)",
        "",
    ]
    return "\n".join(lines + _body(tabs, figs, metric))


def _intro(handle, df, expected) -> list[str]:
    config = handle.config
    done = set(df["cell"])
    missing = [c.id for c in expected if c.id not in done]
    return [
        f"# simgap study report: {config.name}",
        "",
        f"- cells: **{len(done)} / {len(expected)}** complete"
        + (f" (missing: {', '.join(missing[:20])}{' …' if len(missing) > 20 else ''})"
           if missing else ""),
        (f"- seeds {config.seeds}, benches "
        f"{', '.join(f'`{b.label}` {b.seeds}' for b in config.bench.blocks)}, "
        f"real fractions {[f'{f * 100:g} %' for f in config.fractions]}"),
        (f"- source `{config.data.source}` at n = {config.data.size}; sim train/val/test "
        f"{config.data.sim.train}/{config.data.sim.val}/{config.data.sim.test}; real "
        f"pool/val/test {config.data.real.pool}/{config.data.real.val}/{config.data.real.test}"),
        (f"- policies {[p.key for p in config.policies]}, ablations "
        f"{[p.key for p in config.ablations]}, methods {config.methods}"),
        (f"- storage `{mask_url(handle.storage_url)}` (study `{handle.study_name}`), tracking "
        f"`{mask_url(handle.tracking_uri)}` (parent run `{handle.parent_run_id}`)"),
        "",
        ("Protocol: splits are fixed by `data.split_seed` and recorded; the nested real fractions "
        "are drawn per seed; model selection uses "
        f"`{config.selection.sim}` (sim) and `{config.selection.adapt}` (adaptation); the real "
        "test split is read once per cell, for the final numbers only.  Values are mean ± 95 % "
        "CI over seeds x benches, crossed (t interval with the two-way ANOVA variance and "
        "Satterthwaite df: seeds and benches are the independent units, not the cells), "
        "written mean [lo, hi] where the interval was clipped to the metric's range; (n=k) "
        "marks fewer than 3 samples."),
        "",
    ]


def _body(tabs, figs, metric) -> list[str]:
    lines = []
    if "fraction_curves" in tabs:
        lines += [f"## {metric} vs labelled real fraction", "",
                  tabs["fraction_curves"].to_markdown(), ""]
    if "zero_shot" in tabs:
        lines += ["## Policies at 0 % real data", "", tabs["zero_shot"].to_markdown(), ""]
    lines += ["## Figures", ""]
    for title, stem in figs:
        lines += [f"### {title}", "", f"![{title}](figures/{stem}.png)", ""]
    lines += [("Tables as CSV / Markdown / LaTeX (booktabs) in `tables/`, figures as PNG / PDF "
               "with their plotted numbers as CSV in `figures/`, the headline and every paired "
               "comparison in `headline.json`, raw per-cell numbers in `cells.csv`."), ""]
    return lines


def _log_parent(handle: StudyHandle, dest: Path) -> None:
    """The curve points the parent run still lacks (:mod:`studies.live`), and the report as
    its artifact."""
    tracking = handle.tracking()
    log_curve_points(handle, tracking)
    tracking.log_artifact(handle.parent_run_id, dest, "report")
