"""Input drift without labels: does a window's input still look like its reference?

Every input is compared with its reference by one statistic, with these thresholds:

    input                              reference                      statistic        moved when
    probability (vs validation)        the model's validation         PSI              PSI >= 0.25 and p < 0.01
                                       predictions (val_predictions.csv)
    probability (vs reference window)  the reference window           PSI              PSI >= 0.25 and p < 0.01
    format, manufacturer, modality,    the reference window           PSI              PSI >= 0.25 and p < 0.01
    view, age band, source
    warning share, flag rate,          the reference window           difference in   its 95% interval excludes 0
    unreadable share                                                  proportion       and |difference| >= 0.05

* **PSI** (population stability index, :func:`engine.monitoring.stats.psi`): below 0.10 stable, 0.10 to
  0.25 "watch" (reported, no alert), 0.25 or more a major shift (the usual credit-scoring reading).
  Probabilities are cut into k bins at the reference's quantiles, k = n_window // 10 kept within 2..10,
  so that each bin expects about ten studies of the window; categories are the values seen on either
  side, a missing value being "unknown". A small window has a large PSI by chance alone (about
  (k - 1) / n), so a PSI counts as moved only when Pearson's chi-square test of homogeneity on the same
  bins also gives p < 0.01.
* **Rates**: the window's rate with its Wilson interval, and the difference from the reference's
  with Newcombe's hybrid score 95% interval; moved when that interval excludes 0 and the difference is
  at least 5 percentage points. A warning is any warning on a scored study (an out-of-population one,
  from the header or the image, or another); the flag rate is at the period's threshold; unreadable
  studies count in the unreadable share only.
* Fewer than ``MIN_STUDIES`` (10) scored studies in the window or the reference: "too few", no test.
  The window that is itself the reference is marked "reference" (compared with validation only).

One combined input alert per window lists the inputs that moved; it is raised when any did.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from engine.evaluation.metrics import flagged as flag_rule
from engine.monitoring import stats
from engine.worklist.store import StudyRow

PSI_WATCH, PSI_MOVED, P_MOVED = 0.10, 0.25, 0.01
RATE_MIN_CHANGE = 0.05
MIN_STUDIES = 10
MAX_BINS, STUDIES_PER_BIN = 10, 10
UNKNOWN = "unknown"

MIXES: dict[str, Callable[[StudyRow], Optional[str]]] = {
    "format": lambda r: r.metadata.format,
    "manufacturer": lambda r: r.metadata.manufacturer,
    "modality": lambda r: r.metadata.modality,
    "view": lambda r: r.metadata.view_position,
    "age band": lambda r: r.metadata.age_band,
    "source": lambda r: r.source,
}


@dataclass(frozen=True)
class Check:
    """One input of one window against its reference."""

    input: str
    statistic: str                 # "PSI" or "difference in proportion"
    value: Optional[float]
    status: str                    # "stable", "watch", "moved", "too few" or "reference"
    p_value: Optional[float] = None
    interval: Optional[tuple[float, float]] = None
    counts: dict = field(default_factory=dict)

    @property
    def moved(self) -> bool:
        return self.status == "moved"

    def as_dict(self) -> dict:
        r = lambda x: None if x is None or not math.isfinite(x) else round(float(x), 4)   # noqa: E731
        return {"input": self.input, "statistic": self.statistic, "value": r(self.value), "status": self.status,
                "p_value": r(self.p_value), "interval": None if self.interval is None else
                [r(self.interval[0]), r(self.interval[1])], "counts": self.counts}


def category(row: StudyRow, name: str) -> str:
    value = MIXES[name](row)
    return str(value).strip() if value not in (None, "") else UNKNOWN


def _psi_status(value: float, p: float) -> str:
    if value >= PSI_MOVED and p < P_MOVED:
        return "moved"
    return "watch" if value >= PSI_WATCH else "stable"


def mix_check(name: str, window: Sequence[str], reference: Sequence[str]) -> Check:
    """PSI of a categorical mix (window values against reference values)."""
    if len(window) < MIN_STUDIES or len(reference) < MIN_STUDIES:
        return Check(name, "PSI", None, "too few", counts={"window": len(window), "reference": len(reference)})
    a, e = Counter(window), Counter(reference)
    cats = sorted(set(a) | set(e))
    va, ve = [a[c] for c in cats], [e[c] for c in cats]
    value, p = stats.psi(va, ve), stats.homogeneity_p(va, ve)
    return Check(name, "PSI", value, _psi_status(value, p), p,
                 counts={"categories": cats, "window": va, "reference": ve})


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges at the reference's quantiles (ties merged)."""
    qs = np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(qs)


def distribution_check(name: str, window: Sequence[float], reference: Sequence[float]) -> Check:
    """PSI of a probability distribution over quantile bins of the reference."""
    w, ref = np.asarray(window, np.float64), np.asarray(reference, np.float64)
    if len(w) < MIN_STUDIES or len(ref) < MIN_STUDIES:
        return Check(name, "PSI", None, "too few", counts={"window": len(w), "reference": len(ref)})
    edges = quantile_edges(ref, min(MAX_BINS, max(2, len(w) // STUDIES_PER_BIN)))
    va = np.bincount(np.searchsorted(edges, w, side="right"), minlength=len(edges) + 1)
    ve = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    value, p = stats.psi(va, ve), stats.homogeneity_p(va, ve)
    return Check(name, "PSI", value, _psi_status(value, p), p,
                 counts={"edges": [round(float(x), 5) for x in edges], "window": va.tolist(),
                         "reference": ve.tolist()})


def rate_check(name: str, k: int, n: int, k_ref: int, n_ref: int) -> Check:
    """A rate against the reference's: the difference and its Newcombe 95% interval."""
    counts = {"window": {"k": k, "n": n}, "reference": {"k": k_ref, "n": n_ref}}
    if n < MIN_STUDIES or n_ref < MIN_STUDIES:
        return Check(name, "difference in proportion", None, "too few", counts=counts)
    d, lo, hi = stats.newcombe(k, n, k_ref, n_ref)
    counts["window"]["interval"] = [round(x, 4) for x in stats.wilson(k, n)]
    moved = (lo > 0 or hi < 0) and abs(d) >= RATE_MIN_CHANGE
    return Check(name, "difference in proportion", d, "moved" if moved else "stable", interval=(lo, hi),
                 counts=counts)


def rates(rows: Sequence[StudyRow], threshold: float) -> dict[str, tuple[int, int]]:
    """(k, n) of each rate: warnings and flags among scored studies, unreadable among all read."""
    scored = [r for r in rows if r.ok]
    read = [r for r in rows if r.status in ("ok", "error", "refused")]
    return {"warning share": (sum(bool(r.warnings) for r in scored), len(scored)),
            "flag rate": (sum(bool(flag_rule(r.probability, threshold)) for r in scored), len(scored)),
            "unreadable share": (sum(not r.ok for r in read), len(read))}


def check_window(window: Sequence[StudyRow], reference: Sequence[StudyRow], validation: Optional[np.ndarray],
                 threshold: float, is_reference: bool) -> list[Check]:
    """Every input of one window (one row per file) against the reference window and validation."""
    scored, ref_scored = [r for r in window if r.ok], [r for r in reference if r.ok]
    probs = [r.probability for r in scored]
    checks = [distribution_check("probability (vs validation)", probs, validation)
              if validation is not None else Check("probability (vs validation)", "PSI", None, "too few")]
    if is_reference:
        return checks + [Check(name, stat, None, "reference") for name, stat in
                         [("probability (vs reference window)", "PSI"), *((m, "PSI") for m in MIXES),
                          *((r, "difference in proportion") for r in ("warning share", "flag rate",
                                                                       "unreadable share"))]]
    checks.append(distribution_check("probability (vs reference window)", probs,
                                     [r.probability for r in ref_scored]))
    for name in MIXES:
        checks.append(mix_check(name, [category(r, name) for r in scored], [category(r, name) for r in ref_scored]))
    mine, theirs = rates(window, threshold), rates(reference, threshold)
    for name, (k, n) in mine.items():
        checks.append(rate_check(name, k, n, *theirs[name]))
    return checks


def moved(checks: Sequence[Check]) -> list[str]:
    """The inputs that moved (the combined alert's list)."""
    return [c.input for c in checks if c.moved]
