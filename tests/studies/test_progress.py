"""The ETA in ``study run``'s per-cell log lines."""

from __future__ import annotations

from studies.progress import REPORT_STEPS, Eta, duration_text, report_bar, report_step


def test_eta_from_the_completion_rate():
    now = [100.0]
    eta = Eta(clock=lambda: now[0])
    # the first cell this process completes took 10 s; 3 of 20 done (2 by other workers before)
    assert eta.after(3, 20, cell_seconds=10.0) == "; ETA 3 min"  # 17 cells x 10 s
    now[0] = 130.0  # 3 more cells in 30 s more (two workers): 4 cells in 40 s
    assert eta.after(6, 20, cell_seconds=12.0) == "; ETA 2 min"  # 14 cells x 10 s
    assert eta.after(20, 20, cell_seconds=1.0) == ""


def test_duration_text():
    assert duration_text(45) == "45 s"
    assert duration_text(720) == "12 min"
    assert duration_text(3 * 3600 + 300) == "3 h 05 min"


def test_report_bar_names_each_step(capsys):
    bar = report_bar(True)
    names = [bar.desc]
    for _ in REPORT_STEPS:
        report_step(bar)
        names.append(bar.desc)
    bar.close()
    assert names[:-1] == [f"report: {s}" for s in REPORT_STEPS] and bar.n == len(REPORT_STEPS)
    assert "report: MLflow" in capsys.readouterr().err
