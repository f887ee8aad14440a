"""Paper-ready text of the report: number formats, LaTeX tables, strict JSON, the findings.

- :func:`fmt` writes ``mean ± ci`` (``mean [lo, hi]`` where the interval was clipped to the
  metric's range, `` (n=2)`` appended where fewer than 3 samples back it).
- :func:`write_table` writes CSV, Markdown and a booktabs LaTeX table whose every cell is
  escaped (:func:`latex_escape`), so it compiles under pdflatex.
- :func:`strict` makes an object strict JSON (NaN and infinities ``null``), written with
  :func:`harness.files.write_json` (atomic).
- :func:`findings` turns the paired comparisons of :func:`studies.stats.comparisons` into
  sentences a reader can paste.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from studies.intervals import FEW, clip

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    "±": r"$\pm$", "–": "--", "—": "---", "−": "$-$", "×": r"$\times$", "…": r"\dots{}",
    "≤": r"$\leq$", "≥": r"$\geq$", "→": r"$\rightarrow$", "µ": r"$\mu$", "√": r"$\surd$",
}


def latex_escape(text) -> str:
    """``text`` as LaTeX source that pdflatex typesets verbatim (other non-ASCII: ``?``)."""
    out = []
    for ch in str(text):
        if ch in _LATEX_SPECIAL:
            out.append(_LATEX_SPECIAL[ch])
        else:
            out.append(ch if ord(ch) < 128 else "?")
    return "".join(out)


def fmt(mean: float, ci: float, n: int | None = None, bounds=None, digits: int = 3) -> str:
    """One table cell: ``mean ± ci``; ``mean [lo, hi]`` if ``bounds`` clipped the interval;
    the mean alone for no interval; "–" for no value; `` (n=k)`` where k < 3."""
    if mean is None or not np.isfinite(mean):
        return "–"
    few = f" (n={n})" if n is not None and 0 < n < FEW else ""
    if ci is None or not np.isfinite(ci):
        return f"{mean:.{digits}f}{few}"
    lo, hi = clip(mean - ci, mean + ci, bounds)
    if (lo, hi) != (mean - ci, mean + ci):
        return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]{few}"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}{few}"


def fmt_need(answer: dict | None) -> str:
    """A :func:`studies.stats.needed_summary` value in percent: "2.9 %", "< 1.67 %", "> 100 %"."""
    if not answer:
        return "–"
    rel = {"=": "", "<": "< ", ">": "> "}[answer["relation"]]
    return f"{rel}{answer['value']:.3g} %"


def fmt_needs(summary: dict) -> str:
    """Median [95 % bootstrap interval] of a baseline-needs summary."""
    text = f"{fmt_need(summary.get('median'))} [{fmt_need(summary.get('lo'))}, " \
           f"{fmt_need(summary.get('hi'))}]"
    return text + (f" (n={summary['n']})" if summary.get("few") and summary.get("n") else "")


def write_table(table: pd.DataFrame, stem: Path, caption: str) -> None:
    """``stem``.csv, .md and .tex (booktabs; needs ``\\usepackage{booktabs}``)."""
    table.to_csv(stem.with_suffix(".csv"))
    stem.with_suffix(".md").write_text(table.to_markdown(disable_numparse=True) + "\n")
    stem.with_suffix(".tex").write_text(latex_table(table, caption, f"tab:{stem.name}"))


def latex_table(table: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs ``table`` environment with every header and cell escaped."""
    index_name = latex_escape(table.index.name or "")
    cols = [latex_escape(c) for c in table.columns]
    lines = [r"\begin{table}", r"\centering", f"\\caption{{{latex_escape(caption)}}}",
             f"\\label{{{latex_escape(label).replace(chr(92), '')}}}",
             r"\begin{tabular}{l" + "l" * len(cols) + "}", r"\toprule",
             " & ".join([index_name, *cols]) + r" \\", r"\midrule"]
    for key, row in table.iterrows():
        cells = [latex_escape(key), *(latex_escape(v) for v in row.tolist())]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def strict(obj):
    """``obj`` with NaN/inf as None and numpy scalars as Python numbers (for strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (int, str)):
        return obj
    return str(obj)


# ---------------------------------------------------------------------------------- findings
def _num(x: float, digits: int, sign: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def finding(c: dict, axis: dict, digits: int = 3) -> str:
    """One paired comparison in words, e.g. "physics at 0 % beats none by +0.130 [0.050,
    0.210] (95 % t interval, 3.2 df; bootstrap [0.07, 0.19]), p = 0.01, 3 seeds x 3 benches
    (crossed); the interval excludes zero." ``axis``: fraction -> (images, true percent)."""
    verb = "beats" if c["mean"] > 0 else "trails" if c["mean"] < 0 else "ties with"
    if c["kind"] == "policy":
        subject, other = f"{c['a']} at 0 %", c["b"]
    else:
        n_img, true = axis.get(c["fraction"], (None, 100 * c["fraction"]))
        where = f"{100 * c['fraction']:g} %" + (f" ({n_img} images, {true:.3g} % of the pool)"
                                                 if n_img is not None else "")
        subject = f"{c['a']} at {where}"
        other = (f"{c['b']}" + (f" (both after policy {c['policy']})" if c["a"] != "real-only"
                                else f" (after policy {c['policy']})"))
    p = "n/a" if c["p"] is None or not np.isfinite(c["p"]) else f"{c['p']:.2g}"
    df = c.get("df")
    df = f", {df:.2g} df" if df is not None and np.isfinite(df) else ""
    text = (f"{subject} {verb} {other} by {_num(c['mean'], digits, True)} "
            f"[{_num(c['t_lo'], digits)}, {_num(c['t_hi'], digits)}] (95 % t interval{df}; "
            f"bootstrap [{_num(c['boot_lo'], digits)}, {_num(c['boot_hi'], digits)}]), "
            f"p = {p}, {design(c)}; ")
    if c["few"]:
        return text + f"too few pairs (< {FEW}) for the interval to carry a claim."
    if c.get("no_variance"):
        return text + ("no variance: every seed x bench difference is the same, so no "
                       "interval or test applies.")
    return text + ("the interval excludes zero." if c["excludes_zero"]
                   else "the interval includes zero (no difference shown).")


def design(c: dict) -> str:
    """"3 seeds x 3 benches (crossed)" of a comparison (its pair count where unrecorded)."""
    if c.get("n_seeds") is None:
        return f"{c['n']} seed x bench pair{'s' if c['n'] != 1 else ''}"
    s, b = c["n_seeds"], c["n_benches"]
    return (f"{s} seed{'s' if s != 1 else ''} x {b} bench{'es' if b != 1 else ''} "
            "(crossed)")


def findings(head: dict) -> list[str]:
    """The report's findings block (Markdown lines)."""
    comps = head.get("comparisons", [])
    if not comps:
        return ["(no paired comparison possible yet)"]
    axis = {row["fraction"]: (row["n_images"], row["true_percent"])
            for row in head.get("fraction_axis", [])}
    shown = sum(c["excludes_zero"] and not c["few"] for c in comps)
    lines = [(f"Differences in {head['metric']}, paired per (seed, bench) (same splits and real "
              "fractions); seeds and benches are crossed, so the t interval and p take the "
              "mean's variance from the two-way ANOVA (seed, bench, residual; Satterthwaite "
              "df) and the bootstrap resamples seeds and benches independently, not the pairs "
              f"as if independent; {shown} of {len(comps)} intervals exclude zero.  p-values are "
              "not corrected for multiple comparisons."), ""]
    lines += [f"- {finding(c, axis)}" for c in comps]
    return lines


def comparisons_table(head: dict) -> pd.DataFrame:
    """One row per paired comparison (the findings as a table)."""
    rows = []
    for c in head.get("comparisons", []):
        claim = (f"{c['a']} - {c['b']} at 0 %" if c["kind"] == "policy" else
                 f"{c['a']} - {c['b']} at {100 * c['fraction']:g} % ({c['policy']})")
        rows.append({"comparison": claim, "difference": _num(c["mean"], 3, True),
                     "95 % t CI": f"[{_num(c['t_lo'], 3)}, {_num(c['t_hi'], 3)}]",
                     "bootstrap CI": f"[{_num(c['boot_lo'], 3)}, {_num(c['boot_hi'], 3)}]",
                     "p": "n/a" if not np.isfinite(c["p"]) else f"{c['p']:.2g}",
                     "df": _num(c.get("df", math.nan), 1),
                     "seeds x benches": f"{c.get('n_seeds', '?')} x {c.get('n_benches', '?')}",
                     "excludes 0": "n < 3" if c["few"] else "no variance" if c.get(
                         "no_variance") else ("yes" if c["excludes_zero"] else "no")})
    return pd.DataFrame(rows, columns=["comparison", "difference", "95 % t CI", "bootstrap CI",
                                       "p", "df", "seeds x benches", "excludes 0"]
                        ).set_index("comparison")
