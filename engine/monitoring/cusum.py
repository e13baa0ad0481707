"""A one-sided Bernoulli CUSUM (Reynolds & Stoumbos, J Qual Technol 1999), the stop rule's detector.

Each observation x (1: an event, 0: none) adds its log-likelihood ratio of the out-of-control rate
``p1`` against the in-control rate ``p0``::

    S_t = max(0, S_(t-1) + x ln(p1/p0) + (1 - x) ln((1 - p1)/(1 - p0)))

and the rule signals the first time ``S_t >= h``. The limit ``h`` is the smallest one whose average run
length to a false signal, at the in-control rate, is at least ``ARL0`` observations (500: about one
false alarm per 500 decisions or studies while nothing changed). Run lengths are computed on
a lattice: the two increments are replaced by integer multiples m and -n of one step, m/n the closest
fraction (m, n <= 40) to their ratio (Reynolds & Stoumbos' integer weights), and the chain's
absorbing-state equations are solved (Brook & Evans, Biometrika 1972). Checked by simulation within
a few percent. With p1 = 2 p0:

    p0 = 0.15 (0.30 out of control):  h = 3.24, ARL0 515, ARL1 37 observations
    p0 = 0.05 (0.10):                 h = 2.19, ARL0 502, ARL1 76
    p0 = 0.02 (0.04):                 h = 1.55, ARL0 501, ARL1 122
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np

ARL0 = 500            # in-control average run length (observations) that sets h
MAX_JUMP = 40         # the largest integer weight of the lattice chain
RATE_FLOOR, RATE_CEILING = 0.02, 0.45   # p0 is kept inside these, so that p1 = 2 p0 stays below 0.9


@dataclass(frozen=True)
class CusumRun:
    """One CUSUM over a sequence: its parameters, path and first crossing (None: not crossed)."""

    p0: float
    p1: float
    h: float
    path: tuple[float, ...] = field(repr=False)
    crossed_at: Optional[int]          # index of the observation at which S first reached h
    events: int

    @property
    def n(self) -> int:
        return len(self.path)

    @property
    def value(self) -> float:
        return self.path[-1] if self.path else 0.0

    def as_dict(self) -> dict:
        return {"p0": round(self.p0, 4), "p1": round(self.p1, 4), "h": round(self.h, 3), "arl0": ARL0,
                "arl1": round(run_length(self.p0, self.p1, self.h, self.p1), 1), "observations": self.n,
                "events": self.events, "value": round(self.value, 3),
                "crossed": self.crossed_at is not None, "crossed_at": self.crossed_at,
                "path": [round(v, 3) for v in self.path]}


def in_control_rate(p0: float) -> float:
    """p0 kept within [RATE_FLOOR, RATE_CEILING]."""
    return min(max(float(p0), RATE_FLOOR), RATE_CEILING)


def weights(p0: float, p1: float) -> tuple[float, float]:
    """The increments for an event and for a non-event."""
    return math.log(p1 / p0), math.log((1 - p1) / (1 - p0))


def _lattice(p0: float, p1: float, max_jump: int = MAX_JUMP) -> tuple[float, int, int]:
    """(step, m, n): a grid on which an event moves S up by m steps and a non-event down by n, with
    m / n the closest fraction to the weights' ratio (Reynolds & Stoumbos' integer weights)."""
    up, down = weights(p0, p1)
    ratio = up / -down
    best = min(((abs(round(ratio * n) / n - ratio), round(ratio * n), n) for n in range(1, max_jump + 1)
                if 1 <= round(ratio * n) <= max_jump), default=(0.0, max_jump, max(1, round(max_jump / ratio))))
    _, m, n = best
    return up / m, int(m), int(n)


def _arl_states(m: int, n: int, states: int, p: float) -> float:
    """Average run length from 0 of the lattice chain that signals at ``states`` steps: (I - Q) L = 1,
    solved by banded elimination (Q moves m up or n down: an M-matrix, no pivoting needed), which is
    faster than LAPACK for these sizes on a busy machine."""
    j = np.arange(states)
    a = np.eye(states)
    inside = j + m < states
    a[j[inside], (j + m)[inside]] -= p
    a[j, np.maximum(j - n, 0)] -= 1 - p
    b = np.ones(states)
    for k in range(states - 1):
        rows, cols = slice(k + 1, min(k + n + 1, states)), slice(k, min(k + m + 1, states))
        f = a[rows, k] / a[k, k]
        a[rows, cols] -= f[:, None] * a[k, cols]
        b[rows] -= f * b[k]
    x = np.zeros(states)
    for k in range(states - 1, -1, -1):
        hi = min(k + m + 1, states)
        x[k] = (b[k] - a[k, k + 1:hi] @ x[k + 1:hi]) / a[k, k]
    return float(x[0])


def run_length(p0: float, p1: float, h: float, p: float) -> float:
    """Average run length to a signal when events occur at rate ``p``."""
    step, m, n = _lattice(p0, p1)
    return _arl_states(m, n, max(1, int(math.ceil(h / step - 1e-9))), p)


@lru_cache(maxsize=256)
def _limit(p0: float, p1: float, arl0: int) -> float:
    step, m, n = _lattice(p0, p1)
    lo, hi = 1, m
    while _arl_states(m, n, hi, p0) < arl0:       # the signal comes at hi steps: grow until ARL0 is met
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _arl_states(m, n, mid, p0) < arl0 else (lo, mid)
    return hi * step


def limit_for(p0: float, p1: float, arl0: int = ARL0) -> float:
    """The smallest h on the lattice whose in-control average run length is at least ``arl0``."""
    return _limit(round(p0, 3), round(p1, 3), int(arl0))


def run(events: Sequence[bool], p0: float, p1: Optional[float] = None, h: Optional[float] = None) -> CusumRun:
    """The CUSUM over ``events`` (p1 defaults to 2 p0, h to :func:`limit_for`)."""
    p0 = in_control_rate(p0)
    p1 = 2 * p0 if p1 is None else p1
    h = limit_for(p0, p1) if h is None else h
    up, down = weights(p0, p1)
    s, path, crossed = 0.0, [], None
    for i, x in enumerate(events):
        s = max(0.0, s + (up if x else down))
        path.append(s)
        if crossed is None and s >= h:
            crossed = i
    return CusumRun(p0, p1, h, tuple(path), crossed, int(sum(bool(x) for x in events)))
