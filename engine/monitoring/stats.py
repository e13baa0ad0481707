"""The statistics monitoring uses: intervals for proportions, the population stability index, and the
chi-square test of homogeneity that tells a real shift from sampling noise (all without SciPy).

* :func:`wilson`: the Wilson score interval of one proportion.
* :func:`newcombe`: the interval of a difference of two independent proportions (Newcombe's hybrid
  score interval, method 10, built from the two Wilson intervals; Newcombe, Stat Med 1998).
* :func:`proportion`: a count, its rate and exact Clopper-Pearson interval
  (:func:`engine.evaluation.metrics.clopper_pearson`).
* :func:`psi`: sum over bins of (a - e) * ln(a / e), a and e the window's and the reference's shares,
  each cell smoothed by half a count so that an empty bin stays finite.
* :func:`homogeneity_p`: the p-value of Pearson's chi-square test that two sets of counts come from
  one distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from engine.evaluation.metrics import clopper_pearson

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Proportion:
    """k of n, the rate and its exact 95% interval (NaN without trials)."""

    k: int
    n: int
    rate: float
    low: float
    high: float

    def as_dict(self) -> dict:
        return {"k": self.k, "n": self.n, "rate": _r(self.rate), "low": _r(self.low), "high": _r(self.high)}


def _r(x: float, digits: int = 4):
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def proportion(k: int, n: int) -> Proportion:
    low, high = clopper_pearson(k, n)
    return Proportion(int(k), int(n), k / n if n else math.nan, low, high)


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials ((nan, nan) with no trials)."""
    if n <= 0:
        return math.nan, math.nan
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """(p1 - p2, low, high): the difference of two proportions and its hybrid score interval."""
    if n1 <= 0 or n2 <= 0:
        return math.nan, math.nan, math.nan
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def psi(window: Sequence[float], reference: Sequence[float]) -> float:
    """Population stability index of two count vectors over the same bins (half a count added to each
    cell of both)."""
    a = np.asarray(window, np.float64) + 0.5
    e = np.asarray(reference, np.float64) + 0.5
    a, e = a / a.sum(), e / e.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def homogeneity_p(window: Sequence[float], reference: Sequence[float]) -> float:
    """p-value of Pearson's chi-square test of homogeneity of two count vectors (1.0 when there is
    nothing to compare: one bin, or an empty side)."""
    table = np.array([window, reference], np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    x2 = float(((table - expected) ** 2 / expected).sum())
    return chi2_sf(x2, table.shape[1] - 1)


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for a chi-square variable with ``df`` degrees of freedom."""
    if x <= 0:
        return 1.0
    return _gamma_q(df / 2.0, x / 2.0)


def _gamma_q(a: float, x: float) -> float:
    """The regularised upper incomplete gamma function Q(a, x) (series below a + 1, continued fraction
    above; Numerical Recipes 6.2)."""
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        for n in range(1, 1000):
            term *= x / (a + n)
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300
    b, c, d = x + 1 - a, 1 / tiny, 1 / (x + 1 - a)
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return min(1.0, math.exp(log_front) * h)
