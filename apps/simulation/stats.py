"""Statistics of simulation results that a reviewer accepts: bootstrap CIs, paired tests, budget curves.

Seeds are the unit of replication (a seed fixes the scan order, the random plan choices and the
training seed), so every interval is over seeds: the mean with a 95 % bootstrap CI
(``scipy.stats.bootstrap``, BCa, seeded so a report is reproducible); two strategies are compared
paired by seed (the same seed gives both the same scans and initial model), with the CI of the
mean paired difference and a two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``).
With n seeds the smallest possible exact Wilcoxon p is 2/2^n (0.25 for 3 seeds, 0.0625 for 5):
few seeds can show a difference's size, rarely its significance — the reports say so.

Budget curves: the area under the budget curve (AUBC, nnActive's summary; trapezoid, divided by the
x range so it is a mean Dice in [0, 1]) and the budget needed to reach a fraction of the
full-annotation Dice (linear interpolation between the budgets run; NaN when never reached).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.integrate import trapezoid

CONFIDENCE = 0.95
N_RESAMPLES = 9999
BOOTSTRAP_SEED = 0
"""Seed of the bootstrap resampling: the same results give the same intervals."""


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its bootstrap confidence interval (``lo``/``hi`` NaN when n < 2)."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def has_ci(self) -> bool:
        return self.n >= 2 and math.isfinite(self.lo) and math.isfinite(self.hi)

    @property
    def includes_zero(self) -> bool:
        """Whether 0 lies in the interval (no interval counts as including it: nothing is shown)."""
        return not self.has_ci or self.lo <= 0.0 <= self.hi

    def fmt(self, nd: int = 3, signed: bool = False) -> str:
        """``0.912 [0.901, 0.925]`` (just the mean when there is no interval)."""
        if not math.isfinite(self.mean):
            return "n/a"
        f = f"{{:{'+' if signed else ''}.{nd}f}}"
        if not self.has_ci:
            return f.format(self.mean)
        return f"{f.format(self.mean)} [{f.format(self.lo)}, {f.format(self.hi)}]"


def _finite(values: Sequence[float]) -> np.ndarray:
    v = np.asarray([float(x) for x in values], dtype=float)
    return v[np.isfinite(v)]


def mean_ci(values: Sequence[float], *, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
            seed: int = BOOTSTRAP_SEED) -> Estimate:
    """Mean of the finite ``values`` with a BCa bootstrap CI (percentile when BCa is degenerate).

    All-equal values give a zero-width interval; a single value gives no interval."""
    v = _finite(values)
    if v.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    m = float(v.mean())
    if v.size == 1:
        return Estimate(m, math.nan, math.nan, 1)
    if np.all(v == v[0]):
        return Estimate(m, m, m, int(v.size))
    lo = hi = math.nan
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DegenerateDataWarning on tiny samples: fall back below
            res = stats.bootstrap((v,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                                  method=method, rng=np.random.default_rng(seed))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            break
    return Estimate(m, lo, hi, int(v.size))


@dataclass(frozen=True)
class Paired:
    """``a − b`` paired by seed: the mean difference with its CI, the Wilcoxon p, and how often a won."""

    diff: Estimate
    p_value: float
    wins: int

    @property
    def n(self) -> int:
        return self.diff.n

    @property
    def verdict(self) -> str:
        """``within noise`` when the CI includes 0; ``better``/``worse`` when it excludes 0 and the
        Wilcoxon test is significant (p < 0.05); otherwise ``better``/``worse`` "by CI only" (a bootstrap
        CI over few seeds is narrow, the signed-rank test cannot reach 0.05 with fewer than 6 seeds)."""
        if self.diff.includes_zero:
            return "within noise"
        word = "better" if self.diff.mean > 0 else "worse"
        return word if self.p_value < 1 - CONFIDENCE else f"{word} by CI only, not significant"

    def fmt(self, nd: int = 3) -> str:
        p = "n/a" if not math.isfinite(self.p_value) else f"{self.p_value:.3g}"
        return f"{self.diff.fmt(nd, signed=True)}, Wilcoxon p = {p}, {self.wins}/{self.n} seeds better ({self.verdict})"


def paired_difference(a: Sequence[float], b: Sequence[float], **kw) -> Paired:
    """Paired comparison of two equally long sequences (same seeds in the same order); NaN pairs dropped."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length ({x.size} vs {y.size})")
    d = (x - y)[np.isfinite(x) & np.isfinite(y)]
    est = mean_ci(d, **kw)
    if d.size == 0:
        p = math.nan
    elif np.all(d == 0):
        p = 1.0
    else:
        p = float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    return Paired(est, p, int((d > 0).sum()))


def _curve(x: Sequence[float], y: Sequence[float], log_x: bool) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError("a curve needs equally long 1-D x and y")
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    if log_x:
        if np.any(xs <= 0):
            raise ValueError("a log-x curve needs positive budgets")
        xs = np.log10(xs)
    return xs, ys


def aubc(x: Sequence[float], y: Sequence[float], *, log_x: bool = False) -> float:
    """Area under the budget curve divided by its x range (a mean Dice in [0, 1]; NaN without points).

    ``log_x``: integrate over log10(budget), so each doubling of the budget weighs the same (budgets
    spaced like 1, 2, 5, 10, 20, 33, 100 %); otherwise over the budget itself (equal rounds)."""
    xs, ys = _curve(x, y, log_x)
    if xs.size == 0:
        return math.nan
    if xs.size == 1 or xs[-1] == xs[0]:
        return float(ys.mean())
    return float(trapezoid(ys, xs) / (xs[-1] - xs[0]))


def budget_to_reach(x: Sequence[float], y: Sequence[float], target: float) -> float:
    """Smallest budget at which the curve first reaches ``target`` (linear interpolation between points).

    The first budget if it already reaches it; NaN if no budget run reaches it."""
    xs, ys = _curve(x, y, False)
    hit = np.flatnonzero(ys >= target)
    if hit.size == 0:
        return math.nan
    i = int(hit[0])
    if i == 0:
        return float(xs[0])
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))
