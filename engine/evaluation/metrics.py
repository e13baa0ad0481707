"""Classification metrics, operating points, calibration and bootstrap intervals for a binary score.

Convention everywhere: a study is flagged (predicted positive) when ``score >= threshold``.
Labels are 0 (normal) and 1 (pneumonia). Pure numpy; every function accepts array-likes.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import asdict, dataclass
from typing import Callable, Literal, Optional

import numpy as np

NAN = float("nan")


def _as_arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    raw = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if raw.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {raw.size} vs {s.size}")
    if raw.size and not np.isin(raw, (0, 1)).all():  # checked before the cast: 0.7 is not 0
        raise ValueError("labels must be 0 or 1")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return raw.astype(np.int64), s


def _check_unit(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _nan_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise a / b with NaN where b == 0 (no warnings)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out = np.full(np.broadcast(a, b).shape, np.nan)
    np.divide(a, b, out=out, where=b != 0)
    return out


def _ranked_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (tps, fps) at each distinct score, scores descending, and those scores."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s_sorted))[0], y.size - 1]
    tps = np.cumsum(y_sorted)[distinct]
    fps = (distinct + 1) - tps
    return tps, fps, s_sorted[distinct]


# --------------------------------------------------------------------------- ROC / PR curves

def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds); thresholds descend, the first is +inf (nothing flagged).

    One point per distinct score. A class that is absent gives a rate of 0 throughout.
    """
    y, s = _as_arrays(labels, scores)
    if y.size == 0:
        return np.zeros(1), np.zeros(1), np.array([np.inf])
    tps, fps, thr = _ranked_counts(y, s)
    pos, neg = max(int(y.sum()), 1), max(int((1 - y).sum()), 1)
    return np.r_[0.0, fps / neg], np.r_[0.0, tps / pos], np.r_[np.inf, thr]


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (ties count one half); NaN when one class is absent.

    Computed as the Mann-Whitney U statistic with midranks, which equals the trapezoidal area.
    """
    y, s = _as_arrays(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return NAN
    order = np.argsort(s, kind="mergesort")
    sv = s[order]
    starts = np.r_[True, sv[1:] != sv[:-1]]
    bounds = np.r_[np.nonzero(starts)[0], sv.size]
    midrank = (bounds[:-1] + bounds[1:] + 1) / 2.0  # 1-based average rank of each tie group
    ranks = midrank[np.cumsum(starts) - 1]
    rank_sum = ranks[y[order] == 1].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def precision_recall_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) in the same order as ``roc_curve``: thresholds descend.

    Unlike scikit-learn (ascending thresholds, extra point at the end), the first point is
    threshold +inf with recall 0 and precision 1 by convention; the arrays have equal length.
    Recall is 0 throughout when there are no positives.
    """
    y, s = _as_arrays(labels, scores)
    if y.size == 0:
        return np.ones(1), np.zeros(1), np.array([np.inf])
    tps, fps, thr = _ranked_counts(y, s)
    pos = max(int(y.sum()), 1)
    return np.r_[1.0, tps / (tps + fps)], np.r_[0.0, tps / pos], np.r_[np.inf, thr]


def average_precision(labels, scores) -> float:
    """AP = sum_n (R_n - R_{n-1}) P_n over distinct thresholds (scikit-learn's step-wise sum,
    no interpolation); NaN when there are no positives."""
    y, _ = _as_arrays(labels, scores)
    if y.sum() == 0:
        return NAN
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(np.sum(np.diff(recall) * precision[1:]))


# --------------------------------------------------------------------------- confusion

@dataclass(frozen=True)
class Confusion:
    tn: int
    fp: int
    fn: int
    tp: int

    @staticmethod
    def _ratio(a: float, b: float) -> float:
        return float(a / b) if b else NAN

    @property
    def n(self) -> int:
        return self.tn + self.fp + self.fn + self.tp

    @property
    def sensitivity(self) -> float:
        return self._ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float:
        return self._ratio(self.tn, self.tn + self.fp)

    @property
    def ppv(self) -> float:
        return self._ratio(self.tp, self.tp + self.fp)

    @property
    def npv(self) -> float:
        return self._ratio(self.tn, self.tn + self.fn)

    @property
    def f1(self) -> float:
        return self._ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def accuracy(self) -> float:
        return self._ratio(self.tp + self.tn, self.n)

    def matrix(self) -> list[list[int]]:
        """``[[tn, fp], [fn, tp]]``: rows are the truth, columns the prediction."""
        return [[self.tn, self.fp], [self.fn, self.tp]]

    def summary(self) -> dict:
        return asdict(self) | {k: getattr(self, k) for k in RATIO_NAMES}


RATIO_NAMES = ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy")


def flagged(probability, threshold: float):
    """The product's one flag rule: a study is flagged when ``probability >= threshold`` (a bool for a
    number, a boolean array for an array). Every module that flags calls this."""
    if isinstance(probability, (int, float)):
        return float(probability) >= float(threshold)
    return np.asarray(probability, dtype=float) >= threshold


def confusion_at(labels, scores, threshold: float) -> Confusion:
    y, s = _as_arrays(labels, scores)
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    return Confusion(tn=tn, fp=fp, fn=fn, tp=tp)


# --------------------------------------------------------------------------- thresholds

def threshold_for_sensitivity(labels, scores, target: float) -> float:
    """The highest threshold whose sensitivity is at least ``target`` (best specificity for it).

    Always one of the positives' scores. Raises ValueError when there are no positives.
    """
    target = _check_unit("target sensitivity", target)
    y, s = _as_arrays(labels, scores)
    pos = np.sort(s[y == 1])[::-1]
    if pos.size == 0:
        raise ValueError("no positive labels: sensitivity is undefined")
    k = int(np.ceil(target * pos.size - 1e-9))  # positives that must be flagged
    return float(pos[min(max(k, 1), pos.size) - 1])


def threshold_for_specificity(labels, scores, target: float) -> float:
    """The lowest threshold whose specificity is at least ``target`` (best sensitivity for it).

    This is the next float above the k-th lowest negative score (so that negative is not
    flagged), e.g. 0.30000000000000004 rather than 0.3. Raises ValueError with no negatives.
    """
    target = _check_unit("target specificity", target)
    y, s = _as_arrays(labels, scores)
    neg = np.sort(s[y == 0])
    if neg.size == 0:
        raise ValueError("no negative labels: specificity is undefined")
    k = int(np.ceil(target * neg.size - 1e-9))  # negatives that must stay below the threshold
    if k <= 0:
        return float(neg[0])
    return float(np.nextafter(neg[min(k, neg.size) - 1], np.inf))


def threshold_youden(labels, scores) -> float:
    """The threshold that maximises Youden's J = sensitivity + specificity - 1.

    Among equal J the highest threshold wins (fewer flags). Raises ValueError when a class is
    absent, because J is then undefined.
    """
    y, s = _as_arrays(labels, scores)
    if y.size == 0 or y.min() == y.max():
        raise ValueError("Youden's J needs both classes in the labels")
    tps, fps, thr = _ranked_counts(y, s)
    n_pos = int(y.sum())
    j_scaled = tps * (y.size - n_pos) - fps * n_pos  # J * n_pos * n_neg, exact in integers
    return float(thr[int(np.argmax(j_scaled))])  # first maximum = highest threshold


_RULE_FORMS = ('"youden"', '"sensitivity>=0.95"', '"specificity>=0.90"', '"fixed:0.5"')
_NUM = r"([-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[-+]?[0-9]+)?)"  # text is lower-cased first
_RULE_RES = (
    ("youden", re.compile(r"youden(?:'?s?[ _-]?j)?")),
    ("sensitivity", re.compile(r"sensitivity\s*>=\s*" + _NUM)),
    ("specificity", re.compile(r"specificity\s*>=\s*" + _NUM)),
    ("fixed", re.compile(r"fixed\s*:\s*" + _NUM)),
)
PRESET_RULES = ("youden", "sensitivity>=0.95", "specificity>=0.90")


def parse_rule(rule: str) -> tuple[str, Optional[float]]:
    """Parse a threshold rule into ``(kind, value)``: ``("youden", None)``,
    ``("sensitivity", 0.95)``, ``("specificity", 0.9)`` or ``("fixed", 0.5)``.

    Case and spaces around the operator are ignored; targets must lie in [0, 1].
    """
    text = str(rule).strip().lower()
    for kind, pattern in _RULE_RES:
        m = pattern.fullmatch(text)
        if m is None:
            continue
        if kind == "youden":
            return kind, None
        value = float(m.group(1))
        if kind != "fixed":
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"threshold rule {rule!r}: the {kind} target must be in [0, 1]")
        return kind, value
    raise ValueError(f"unknown threshold rule {rule!r}; valid forms are "
                     f"{', '.join(_RULE_FORMS)} (any number in place of the examples)")


def _fmt(value: float) -> str:
    return f"{value:.2f}" if round(value, 2) == value else f"{value:g}"


@dataclass(frozen=True)
class OperatingPoint:
    """A decision threshold, the rule that chose it, and the confusion it gives on the data."""
    name: str            # human label, e.g. "Sensitivity ≥ 0.95"
    rule: str            # the rule as given, e.g. "sensitivity>=0.95" (what the model card stores)
    threshold: float
    confusion: Confusion

    def to_dict(self) -> dict:
        return {"name": self.name, "rule": self.rule, "threshold": self.threshold,
                "confusion_matrix": self.confusion.matrix(), **self.confusion.summary()}


def choose_threshold(labels, scores, rule: str) -> OperatingPoint:
    """Pick a threshold by ``rule`` (see ``parse_rule``) and evaluate it on the same data."""
    kind, value = parse_rule(rule)
    if kind == "youden":
        name, thr = "Youden's J", threshold_youden(labels, scores)
    elif kind == "sensitivity":
        name = f"Sensitivity ≥ {_fmt(value)}"
        thr = threshold_for_sensitivity(labels, scores, value)
    elif kind == "specificity":
        name = f"Specificity ≥ {_fmt(value)}"
        thr = threshold_for_specificity(labels, scores, value)
    else:
        name, thr = f"Fixed {_fmt(value)}", float(value)
    return OperatingPoint(name=name, rule=str(rule).strip(), threshold=thr,
                          confusion=confusion_at(labels, scores, thr))


def operating_points(labels, scores) -> dict[str, OperatingPoint]:
    """The standard presets keyed by rule: Youden's J, sensitivity ≥ 0.95, specificity ≥ 0.9."""
    return {rule: choose_threshold(labels, scores, rule) for rule in PRESET_RULES}


# --------------------------------------------------------------------------- calibration

@dataclass(frozen=True)
class CalibrationBins:
    """Per-bin arrays (length n_bins; ``edges`` has n_bins + 1). Empty bins have count 0 and
    NaN mean_predicted / observed_fraction."""
    edges: np.ndarray
    mean_predicted: np.ndarray
    observed_fraction: np.ndarray
    counts: np.ndarray

    def to_dict(self) -> dict:
        return {k: v.tolist() for k, v in asdict(self).items()}


def calibration_bins(labels, scores, n_bins: int = 10,
                     strategy: Literal["uniform", "quantile"] = "uniform") -> CalibrationBins:
    """Reliability-diagram bins for probabilities in [0, 1].

    Bins are half-open ``[e_i, e_{i+1})`` except the last, which includes 1. "uniform" uses
    edges i / n_bins; "quantile" uses score quantiles (tied scores can leave bins empty).
    """
    y, s = _as_arrays(labels, scores)
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    n_bins = int(n_bins)
    if s.size and (s.min() < 0.0 or s.max() > 1.0):
        raise ValueError("calibration needs probabilities in [0, 1]")
    if strategy == "uniform":
        edges = np.arange(n_bins + 1) / n_bins
    elif strategy == "quantile":
        if s.size == 0:
            raise ValueError("quantile bins need at least one score")
        edges = np.quantile(s, np.arange(n_bins + 1) / n_bins)
        edges[0], edges[-1] = 0.0, 1.0
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    idx = np.searchsorted(edges[1:-1], s, side="right")
    counts = np.bincount(idx, minlength=n_bins)
    sum_pred = np.bincount(idx, weights=s, minlength=n_bins)
    sum_true = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins)
    return CalibrationBins(edges=edges, mean_predicted=_nan_div(sum_pred, counts),
                           observed_fraction=_nan_div(sum_true, counts), counts=counts)


def expected_calibration_error(labels, scores, n_bins: int = 10,
                               strategy: Literal["uniform", "quantile"] = "uniform") -> float:
    """ECE = sum_b (n_b / n) |observed_b - mean_predicted_b| over non-empty bins; NaN if empty."""
    b = calibration_bins(labels, scores, n_bins, strategy)
    n = b.counts.sum()
    if n == 0:
        return NAN
    full = b.counts > 0
    gap = np.abs(b.observed_fraction[full] - b.mean_predicted[full])
    return float(np.sum(b.counts[full] * gap) / n)


# --------------------------------------------------------------------------- bootstrap

def _stratified_indices(y: np.ndarray, n_resamples: int, seed: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Positions of positives and negatives, and (B, n_pos) / (B, n_neg) draws into them.

    Each class is resampled with replacement to its own size, so both stay present.
    """
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    draw_pos = rng.integers(0, max(pos.size, 1), size=(int(n_resamples), pos.size))
    draw_neg = rng.integers(0, max(neg.size, 1), size=(int(n_resamples), neg.size))
    return pos, neg, draw_pos, draw_neg


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along axis 0, ignoring NaN resamples (all NaN gives NaN)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha = (1.0 - confidence) / 2.0
    values = np.asarray(values, dtype=np.float64)
    if not np.isnan(values).any():
        lo, hi = np.quantile(values, [alpha, 1.0 - alpha], axis=0)
        return lo, hi
    lo, hi = np.full(values.shape[1:], np.nan), np.full(values.shape[1:], np.nan)
    cols = values.reshape(values.shape[0], -1)
    for j in range(cols.shape[1]):
        col = cols[:, j][~np.isnan(cols[:, j])]
        if col.size:
            lo.flat[j], hi.flat[j] = np.quantile(col, [alpha, 1.0 - alpha])
    return lo, hi


def _resampled_auc(s_pos: np.ndarray, s_neg: np.ndarray, dp: np.ndarray, dn: np.ndarray
                   ) -> np.ndarray:
    """AUC of every resample at once: for each drawn positive, count the drawn negatives
    below it plus half those tied with it (Mann-Whitney U), via per-resample cumulative counts."""
    n_b, n_neg = dn.shape
    order = np.argsort(s_neg, kind="mergesort")
    neg_sorted = s_neg[order]
    rank = np.empty(n_neg, np.int64)
    rank[order] = np.arange(n_neg)
    counts = np.bincount((np.arange(n_b)[:, None] * n_neg + rank[dn]).ravel(),
                         minlength=n_b * n_neg).reshape(n_b, n_neg)
    cum = np.concatenate([np.zeros((n_b, 1), np.int64), np.cumsum(counts, axis=1)], axis=1)
    lo = np.searchsorted(neg_sorted, s_pos, side="left")[dp]   # (B, n_pos)
    hi = np.searchsorted(neg_sorted, s_pos, side="right")[dp]
    below = np.take_along_axis(cum, lo, axis=1)
    tied = np.take_along_axis(cum, hi, axis=1) - below
    return (below.sum(axis=1) + 0.5 * tied.sum(axis=1)) / (dp.shape[1] * n_neg)


def bootstrap_ci(labels, scores, statistic: Callable[[np.ndarray, np.ndarray], float],
                 n_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(labels, scores)``, resampling each class
    separately (stratified). Resamples where the statistic is NaN are dropped; same seed, same
    interval. ``roc_auc`` itself is recognised and computed for all resamples at once."""
    y, s = _as_arrays(labels, scores)
    pos, neg, dp, dn = _stratified_indices(y, n_resamples, seed)
    s_pos, s_neg = s[pos], s[neg]
    if statistic is roc_auc and pos.size and neg.size:
        stats = _resampled_auc(s_pos, s_neg, dp, dn)
    else:
        y_b = np.r_[np.ones(pos.size, np.int64), np.zeros(neg.size, np.int64)]
        stats = np.array([statistic(y_b, np.concatenate([s_pos[dp[b]], s_neg[dn[b]]]))
                          for b in range(dp.shape[0])], dtype=np.float64)
    lo, hi = _percentile_interval(stats, confidence)
    return float(lo), float(hi)


def _ratios(tn, fp, fn, tp) -> dict[str, np.ndarray]:
    return {"sensitivity": _nan_div(tp, tp + fn), "specificity": _nan_div(tn, tn + fp),
            "ppv": _nan_div(tp, tp + fp), "npv": _nan_div(tn, tn + fn),
            "f1": _nan_div(2 * tp, 2 * tp + fp + fn),
            "accuracy": _nan_div(tp + tn, tp + tn + fp + fn)}


@functools.lru_cache(maxsize=64)
def _log_factorials(n: int) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])


def _binom_tail_ge(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (exact, no SciPy)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lf = _log_factorials(n)
    i = np.arange(k, n + 1)
    terms = lf[n] - lf[i] - lf[n - i] + i * math.log(p) + (n - i) * math.log1p(-p)
    top = terms.max()
    return float(min(1.0, math.exp(top) * np.exp(terms - top).sum()))


def _bisect(f: Callable[[float], float], lo: float = 0.0, hi: float = 1.0, iters: int = 60) -> float:
    """The root of an increasing ``f`` on [lo, hi]."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        if f(mid) < 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial proportion; (nan, nan) with no trials.

    Unlike a bootstrap, it does not collapse at 0 or n successes: 60 of 60 gives 0.940-1.000.
    """
    k, n = int(successes), int(trials)
    if n <= 0:
        return NAN, NAN
    alpha = 1.0 - confidence
    # lower: P(X >= k | p) = alpha/2; upper, by symmetry: 1 - (lower bound of n - k failures)
    lower = 0.0 if k == 0 else _bisect(lambda p: _binom_tail_ge(k, n, p) - alpha / 2)
    upper = 1.0 if k == n else 1.0 - _bisect(lambda q: _binom_tail_ge(n - k, n, q) - alpha / 2)
    return float(lower), float(upper)


_PROPORTIONS = {   # metric -> (successes, trials) from the confusion counts
    "sensitivity": lambda c: (c.tp, c.tp + c.fn),
    "specificity": lambda c: (c.tn, c.tn + c.fp),
    "ppv": lambda c: (c.tp, c.tp + c.fp),
    "npv": lambda c: (c.tn, c.tn + c.fn),
    "accuracy": lambda c: (c.tp + c.tn, c.tp + c.tn + c.fp + c.fn),
}


def threshold_metrics_with_ci(labels, scores, threshold: float, n_resamples: int = 1000,
                              confidence: float = 0.95, seed: int = 0
                              ) -> dict[str, tuple[float, float, float]]:
    """``{metric: (value, low, high)}`` for sensitivity, specificity, ppv, npv, f1, accuracy.

    Proportions (sensitivity, specificity, PPV, NPV, accuracy) get exact Clopper-Pearson intervals,
    which hold at 0 or n events where a bootstrap collapses to a point; F1, not a proportion, gets a
    stratified bootstrap like ``bootstrap_ci`` (same seed, same resamples), computed at once for all
    resamples; fast enough for a dashboard slider.
    """
    y, s = _as_arrays(labels, scores)
    pos, neg, dp, dn = _stratified_indices(y, n_resamples, seed)
    flag_pos, flag_neg = s[pos] >= threshold, s[neg] >= threshold
    tp = flag_pos[dp].sum(axis=1)  # (B,): flagged positives in each resample
    fp = flag_neg[dn].sum(axis=1)
    boot = _ratios(neg.size - fp, fp, pos.size - tp, tp)
    lo, hi = _percentile_interval(np.stack([boot[k] for k in RATIO_NAMES], axis=1), confidence)
    point = confusion_at(y, s, threshold)
    out = {}
    for i, k in enumerate(RATIO_NAMES):
        if k in _PROPORTIONS:
            succ, trials = _PROPORTIONS[k](point)
            out[k] = (getattr(point, k), *clopper_pearson(succ, trials, confidence))
        else:
            out[k] = (getattr(point, k), float(lo[i]), float(hi[i]))
    return out


# --------------------------------------------------------------------------- paired comparison

def _midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    _, first, counts = np.unique(sorted_x, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return ranks


def delong_test(labels, scores_a, scores_b) -> dict:
    """DeLong's paired test of two AUCs on the same cases (DeLong et al., Biometrics 1988; the fast
    midrank algorithm of Sun & Xu, IEEE SPL 2014): both AUCs, their difference with a 95% interval,
    z and the two-sided p-value."""
    y, a = _as_arrays(labels, scores_a)
    _, b = _as_arrays(labels, scores_b)
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m == 0 or n == 0:
        raise ValueError("both classes are needed to compare AUCs")
    v01, v10, aucs = [], [], []
    for s in (a, b):
        x, z = s[pos], s[neg]
        tx, tz, tall = _midranks(x), _midranks(z), _midranks(np.concatenate([x, z]))
        aucs.append((tall[:m].sum() - m * (m + 1) / 2) / (m * n))
        v01.append((tall[:m] - tx) / n)          # per positive: share of negatives it outranks
        v10.append(1.0 - (tall[m:] - tz) / m)    # per negative: share of positives that outrank it
    s01 = np.atleast_2d(np.cov(np.vstack(v01))) if m > 1 else np.zeros((2, 2))
    s10 = np.atleast_2d(np.cov(np.vstack(v10))) if n > 1 else np.zeros((2, 2))
    cov = s01 / m + s10 / n
    diff = aucs[0] - aucs[1]
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(var) if var > 0 else 0.0
    z = diff / se if se > 0 else 0.0
    p = math.erfc(abs(z) / math.sqrt(2)) if se > 0 else 1.0
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": float(diff),
            "ci_95": (float(diff - 1.959964 * se), float(diff + 1.959964 * se)), "z": float(z), "p": float(p)}


# --------------------------------------------------------------------------- report

def summarize(labels, scores, threshold: float, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Everything the evaluate CLI writes to metrics.json, as plain floats/ints (NaN where
    undefined). Scores are probabilities; ``auc_ci_95`` is a stratified bootstrap interval."""
    y, s = _as_arrays(labels, scores)
    c = confusion_at(y, s, threshold)
    n_pos = int(y.sum())
    both = n_pos > 0 and n_pos < y.size
    auc_ci = bootstrap_ci(y, s, roc_auc, n_resamples, 0.95, seed) if both else (NAN, NAN)
    return {
        "auc": roc_auc(y, s),
        "average_precision": average_precision(y, s),
        **{k: getattr(c, k)
           for k in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")},
        "threshold": float(threshold),
        "n": int(y.size),
        "n_positive": n_pos,
        "n_negative": int(y.size - n_pos),
        "confusion_matrix": c.matrix(),
        "auc_ci_95": [float(auc_ci[0]), float(auc_ci[1])],
        "ece": expected_calibration_error(y, s) if y.size else NAN,
    }


# --------------------------------------------------------------------------- temperature

def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


def _logit_diff(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 2 and z.shape[1] == 2:
        return z[:, 1] - z[:, 0]  # softmax(l / T)[:, 1] == sigmoid((l1 - l0) / T)
    if z.ndim == 2 and z.shape[1] == 1:
        return z[:, 0]
    if z.ndim != 1:
        raise ValueError("expected logit differences (n,) or two-class logits (n, 2), "
                         f"got shape {z.shape}")
    return z


def apply_temperature(logits_or_logit_diff: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probability of pneumonia, sigmoid(z / T)."""
    return _sigmoid(_logit_diff(logits_or_logit_diff) / float(temperature))


def fit_temperature(logits_or_logit_diff: np.ndarray, labels,
                    bounds: tuple[float, float] = (1e-2, 1e2)) -> float:
    """T > 0 minimising the mean NLL of sigmoid(z / T), clipped to ``bounds``.

    ``z`` is the pneumonia-minus-normal logit, or (n, 2) logits [normal, pneumonia]. The NLL is
    convex in a = 1/T, so a safeguarded Newton search on a finds the global minimum. T hits the
    upper bound when the logits carry no (or reversed) signal, the lower one when separable.
    """
    z = _logit_diff(logits_or_logit_diff)
    y, z = _as_arrays(labels, z)
    if y.size == 0:
        raise ValueError("cannot fit a temperature on no data")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite")
    t_lo, t_hi = float(bounds[0]), float(bounds[1])
    if not 0.0 < t_lo < t_hi:
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}")

    def grad_hess(a: float) -> tuple[float, float]:
        p = _sigmoid(a * z)
        return float(np.mean((p - y) * z)), float(np.mean(p * (1.0 - p) * z * z))

    lo, hi = 1.0 / t_hi, 1.0 / t_lo  # bracket on a; d NLL / da is increasing
    if grad_hess(lo)[0] >= 0.0:
        return t_hi
    if grad_hess(hi)[0] <= 0.0:
        return t_lo
    a = min(max(1.0, lo), hi)
    for _ in range(200):
        g, h = grad_hess(a)
        if g > 0.0:
            hi = a
        else:
            lo = a
        step = g / h if h > 0.0 else math.inf
        a_new = a - step
        if not lo < a_new < hi:
            a_new = 0.5 * (lo + hi)  # Newton left the bracket: bisect instead
        if abs(a_new - a) <= 1e-12 * a or hi - lo <= 1e-12 * hi:
            a = a_new
            break
        a = a_new
    return float(1.0 / a)
