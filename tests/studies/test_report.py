"""The report's paper outputs: LaTeX that compiles, strict JSON, plotted data as CSV, number
formats, and the findings block, built from a fixed per-cell table (no study run)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import types

import numpy as np
import pandas as pd
import pytest

from harness.files import write_json
from studies import report
from studies.outputs import finding, findings, fmt, fmt_needs, latex_escape, latex_table, strict
from studies.protocol import ORACLE_STAMP
from tests.studies.test_stats import config_of, table_df


def _strict_load(text: str):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_latex_escape_every_special_character():
    assert latex_escape("a_b 5 % & #1 {x} ~ ^ \\ $ ± – < >") == (
        r"a\_b 5 \% \& \#1 \{x\} \textasciitilde{} \textasciicircum{} \textbackslash{} \$ "
        r"$\pm$ -- \textless{} \textgreater{}")
    assert latex_escape("ü") == "?"  # pdflatex has no glyph promise for the rest


def test_latex_table_is_booktabs_with_escaped_cells():
    table = pd.DataFrame({"share at 1% (10 images)": ["0.500 ± 0.100"]},
                         index=pd.Index(["physics-without:phase_jitter"], name="curve"))
    tex = latex_table(table, "Mean ± 95 % CI", "tab:x_y")
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"physics-without:phase\_jitter & 0.500 $\pm$ 0.100 \\" in tex
    assert r"share at 1\% (10 images)" in tex and r"\caption{Mean $\pm$ 95 \% CI}" in tex


def test_headline_json_writes_null_for_missing_numbers(tmp_path):
    path = tmp_path / "h.json"
    write_json(path, strict({"a": math.nan, "b": [np.float32("inf"), np.int64(3)],
                             "c": np.bool_(True), "d": {"e": np.float64(0.25)}}), allow_nan=False)
    assert _strict_load(path.read_text()) == {"a": None, "b": [None, 3], "c": True,
                                              "d": {"e": 0.25}}


def test_fmt_clips_and_flags_small_samples():
    assert fmt(0.99, 0.05, 3, (0.0, 1.0)) == "0.990 [0.940, 1.000]"
    assert fmt(0.5, 0.1, 2, (0.0, 1.0)) == "0.500 ± 0.100 (n=2)"
    assert fmt(0.5, math.nan, 1) == "0.500 (n=1)" and fmt(math.nan, 0.1) == "–"
    summary = {"median": {"value": 2.9, "relation": "="}, "lo": {"value": 1.67, "relation": "<"},
               "hi": {"value": 100.0, "relation": ">"}, "n": 9, "few": False}
    assert fmt_needs(summary) == "2.9 % [< 1.67 %, > 100 %]"


def test_a_finding_reads_as_a_sentence():
    c = {"kind": "policy", "a": "physics", "b": "none", "fraction": 0.0, "mean": 0.13,
         "t_lo": 0.05, "t_hi": 0.21, "boot_lo": 0.07, "boot_hi": 0.19, "p": 0.0042, "n": 9,
         "n_seeds": 3, "n_benches": 3, "df": 3.2, "few": False, "excludes_zero": True,
         "no_variance": False}
    assert finding(c, {}, digits=2) == (
        "physics at 0 % beats none by +0.13 [0.05, 0.21] (95 % t interval, 3.2 df; bootstrap "
        "[0.07, 0.19]), p = 0.0042, 3 seeds x 3 benches (crossed); the interval excludes zero.")
    c = {**c, "kind": "method", "a": "siamese", "b": "finetune-full", "policy": "physics",
         "fraction": 0.01, "mean": -0.02, "n": 2, "n_seeds": 2, "n_benches": 1, "few": True,
         "excludes_zero": False}
    text = finding(c, {0.01: (10, 1.667)}, digits=2)
    assert text.startswith("siamese at 1 % (10 images, 1.67 % of the pool) trails "
                           "finetune-full (both after policy physics) by -0.02")
    assert "2 seeds x 1 bench (crossed)" in text
    assert text.endswith("too few pairs (< 3) for the interval to carry a claim.")


def test_identical_differences_are_flagged_no_variance():
    c = {"kind": "policy", "a": "physics", "b": "none", "fraction": 0.0, "mean": 0.001,
         "t_lo": 0.001, "t_hi": 0.001, "boot_lo": 0.001, "boot_hi": 0.001, "p": math.nan,
         "n": 9, "n_seeds": 3, "n_benches": 3, "df": math.nan, "few": False,
         "excludes_zero": False, "no_variance": True}
    text = finding(c, {})
    assert "p = n/a" in text and "excludes zero" not in text
    assert text.endswith("no variance: every seed x bench difference is the same, so no "
                         "interval or test applies.")
    head = {"metric": "real_test_acc", "comparisons": [c]}
    assert "0 of 1 intervals exclude zero" in findings(head)[0]
    assert "two-way" in findings(head)[0]


@pytest.fixture
def built(tmp_path, monkeypatch):
    """The report files of the fixed table of tests/studies/test_stats.py."""
    config = config_of()
    handle = types.SimpleNamespace(config=config, storage_url="sqlite:///x", study_name="x",
                                   tracking_uri="sqlite:///y", parent_run_id=None)
    monkeypatch.setattr(report, "_tsne_figures", lambda *args: [])
    report._write_report(handle, table_df(), tmp_path)
    return tmp_path


def test_report_has_findings_strict_json_and_plotted_data(built):
    md = (built / "report.md").read_text()
    findings = md.split("## Findings", 1)[1].split("##", 1)[0]
    # physics - none at 0 %: d = 0.05, 0.2, 0.4 -> +0.217
    assert "- physics at 0 % beats none by +0.217 [" in findings
    assert "3 seeds x 1 bench (crossed)" in findings
    head = _strict_load((built / "headline.json").read_text())
    assert head["baseline_needs"]["physics"]["finetune-head"]["hi"]["relation"] == ">"
    assert len(head["comparisons"]) == 5
    curves = pd.read_csv(built / "figures" / "fraction_curves.csv")
    assert {"curve", "percent", "n_images", "true_percent", "mean", "lo", "hi"} <= set(curves)
    assert curves["lo"].min() >= 0.0 and curves["hi"].max() <= 1.0
    for stem in ("fraction_curves", "policies_zero_shot", "sim_real_gap"):
        pdf = (built / "figures" / f"{stem}.pdf").read_bytes()  # vector, with its text
        assert pdf.startswith(b"%PDF-") and b"/Font" in pdf and len(pdf) > 5000
        assert (built / "figures" / f"{stem}.csv").is_file()
    table = pd.read_csv(built / "tables" / "fraction_curves.csv", index_col=0)
    assert table.loc[report.AXIS_ROW, "10 %"] == "15 (10 %)"


def test_latex_tables_have_no_unescaped_specials(built):
    for tex in (built / "tables").glob("*.tex"):
        body = re.sub(r"\\label\{[^}]*\}", "", tex.read_text())  # _ is fine in a label
        assert not re.search(r"(?<!\\)[_#%]", body), tex.name
        assert all(ord(ch) < 128 for ch in body), tex.name


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_tables_compile(built, tmp_path):
    doc = tmp_path / "doc.tex"
    inputs = "\n".join(f"\\input{{{p.as_posix()}}}" for p in sorted(
        (built / "tables").glob("*.tex")))
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                   f"{inputs}\n\\end{{document}}\n")
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
                         check=False, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


def _two_benches(oracle: float) -> pd.DataFrame:
    """The fixed table on two bench kinds (bench 1 a little worse), ``oracle_invalid`` set."""
    one = table_df().assign(bench_label="typical")
    two = one.assign(bench=1, bench_label="unmodelled", real_test_acc=one["real_test_acc"] - 0.02,
                     cell=one["cell"].str.replace("/b0", "/b1"))
    return pd.concat([one, two], ignore_index=True).assign(oracle_invalid=oracle)


def test_oracle_cells_stamp_every_table_figure_and_the_page(tmp_path, monkeypatch):
    handle = types.SimpleNamespace(config=config_of(), storage_url="sqlite:///x", study_name="x",
                                   tracking_uri="sqlite:///y", parent_run_id=None)
    monkeypatch.setattr(report, "_tsne_figures", lambda *args: [])
    report._write_report(handle, _two_benches(1.0), tmp_path)
    assert "**ORACLE — NOT A VALID RESULT**" in (tmp_path / "report.md").read_text()
    assert _strict_load((tmp_path / "headline.json").read_text())["stamp"] == ORACLE_STAMP
    tables = sorted((tmp_path / "tables").glob("*.csv"))
    assert any("@" in p.name for p in tables)  # the per-bench tables are there
    figures = sorted((tmp_path / "figures").glob("*.csv"))
    assert len(figures) == 3
    for csv in tables + figures:
        assert set(pd.read_csv(csv)["selection"]) == {ORACLE_STAMP}, csv.name
    for tex in (tmp_path / "tables").glob("*.tex"):
        assert r"\caption{ORACLE --- NOT A VALID RESULT: " in tex.read_text(), tex.name
    # and a valid study carries no stamp
    clean = tmp_path / "clean"
    clean.mkdir()
    report._write_report(handle, _two_benches(0.0), clean)
    assert "ORACLE" not in (clean / "report.md").read_text()
    for csv in [*(clean / "tables").glob("*.csv"), *(clean / "figures").glob("*.csv")]:
        assert "selection" not in pd.read_csv(csv), csv.name
