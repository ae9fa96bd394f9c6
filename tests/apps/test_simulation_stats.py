"""The simulation's statistics agree with scipy on known samples; AUBC and budget-to-reach on known curves."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from apps.simulation.stats import (
    BOOTSTRAP_SEED,
    N_RESAMPLES,
    aubc,
    budget_to_reach,
    mean_ci,
    paired_difference,
)

SAMPLE = [0.812, 0.845, 0.861, 0.790, 0.833]


def test_mean_ci_is_scipys_bootstrap() -> None:
    got = mean_ci(SAMPLE)
    ref = stats.bootstrap((np.asarray(SAMPLE),), np.mean, n_resamples=N_RESAMPLES, method="BCa",
                          rng=np.random.default_rng(BOOTSTRAP_SEED)).confidence_interval
    assert got.mean == pytest.approx(np.mean(SAMPLE))
    assert (got.lo, got.hi) == pytest.approx((ref.low, ref.high))
    assert got.lo < got.mean < got.hi and got.n == 5
    assert mean_ci(SAMPLE) == got  # seeded: the same report every time
    assert "[" in got.fmt() and got.fmt().startswith("0.828")


def test_mean_ci_edge_cases() -> None:
    one = mean_ci([0.7])
    assert one.mean == 0.7 and not one.has_ci and one.includes_zero and one.fmt() == "0.700"
    same = mean_ci([0.5, 0.5, 0.5])
    assert (same.lo, same.hi) == (0.5, 0.5)
    assert mean_ci([math.nan, 0.4, 0.6]).n == 2
    assert mean_ci([]).fmt() == "n/a"


def test_paired_difference_uses_wilcoxon_and_a_ci_of_the_differences() -> None:
    a = [0.80, 0.84, 0.86, 0.79, 0.83, 0.88]
    b = [0.78, 0.80, 0.85, 0.77, 0.80, 0.84]
    p = paired_difference(a, b)
    d = np.subtract(a, b)
    assert p.p_value == pytest.approx(stats.wilcoxon(d).pvalue)
    assert p.p_value == pytest.approx(2 / 2**6)  # exact test: all 6 differences positive
    assert (p.diff.lo, p.diff.hi) == pytest.approx((mean_ci(d).lo, mean_ci(d).hi))
    assert p.wins == 6 and p.verdict == "better" and "Wilcoxon p" in p.fmt()
    three = paired_difference(a[:3], b[:3])  # 3 seeds: CI may exclude 0, the test cannot be significant
    assert three.p_value == pytest.approx(0.25) and "not significant" in three.verdict
    noise = paired_difference([0.8, 0.7, 0.9, 0.75], [0.75, 0.8, 0.85, 0.8])
    assert noise.diff.includes_zero and noise.verdict == "within noise"
    assert paired_difference([0.5, 0.6], [0.5, 0.6]).p_value == 1.0
    with pytest.raises(ValueError):
        paired_difference([0.1], [0.1, 0.2])


def test_aubc_on_known_curves() -> None:
    assert aubc([0, 50, 100], [0.0, 0.5, 1.0]) == pytest.approx(0.5)  # y = x / 100 → mean 0.5
    assert aubc([100, 0, 50], [1.0, 0.0, 0.5]) == pytest.approx(0.5)  # order does not matter
    assert aubc([1, 2, 5, 10], [0.8] * 4) == pytest.approx(0.8)  # a flat curve is its value
    # log x: from 1 to 100, Dice 0 → 1 linearly in log10 → area 0.5; linearly in budget it would weigh the top
    assert aubc([1, 10, 100], [0.0, 0.5, 1.0], log_x=True) == pytest.approx(0.5)
    assert aubc([1, 10, 100], [0.0, 0.5, 1.0]) == pytest.approx((0.25 * 9 + 0.75 * 90) / 99)
    assert aubc([5], [0.7]) == pytest.approx(0.7) and math.isnan(aubc([], []))
    with pytest.raises(ValueError):
        aubc([0, 1], [0.1, 0.2], log_x=True)


def test_budget_to_reach_interpolates() -> None:
    x, y = [1, 2, 5, 10], [0.3, 0.6, 0.9, 0.95]
    assert budget_to_reach(x, y, 0.75) == pytest.approx(3.5)
    assert budget_to_reach(x, y, 0.2) == 1.0
    assert budget_to_reach(x, y, 0.95) == 10.0
    assert math.isnan(budget_to_reach(x, y, 0.99))
