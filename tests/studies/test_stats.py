"""Statistics of the report: the t interval and the real data a curve needs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from studies.stats import ci95, needed_percent


def test_ci95_is_the_t_interval():
    mean, half, n = ci95([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(4.302652729911275 * 1.0 / math.sqrt(3))
    assert math.isnan(ci95([0.7])[1]) and ci95([])[2] == 0


def test_needed_percent_interpolates():
    percent, mean = np.array([0.0, 1.0, 5.0, 100.0]), np.array([0.4, 0.5, 0.6, 0.9])
    assert needed_percent(percent, mean, 0.55) == pytest.approx(3.0)
    assert needed_percent(percent, mean, 0.3) == 0.0
    assert needed_percent(percent, mean, 0.95) is None
    assert needed_percent(percent, mean, 0.4 + 1e-12) == 0.0  # equal up to rounding
