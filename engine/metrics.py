"""Classification metrics and operating points for a binary score (probability of pneumonia).

Convention everywhere: a study is flagged (predicted positive) when ``score >= threshold``.
Labels are 0 (normal) and 1 (pneumonia).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _as_arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y, s


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds); thresholds descend, the first is +inf (nothing flagged)."""
    y, s = _as_arrays(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s_sorted))[0], y.size - 1]
    tps = np.cumsum(y_sorted)[distinct]
    fps = (distinct + 1) - tps
    pos, neg = max(y.sum(), 1), max((1 - y).sum(), 1)
    tpr = np.r_[0.0, tps / pos]
    fpr = np.r_[0.0, fps / neg]
    return fpr, tpr, np.r_[np.inf, s_sorted[distinct]]


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (ties count one half); NaN when one class is absent."""
    y, s = _as_arrays(labels, scores)
    if y.min(initial=0) == y.max(initial=0) or y.size == 0:
        return float("nan")
    fpr, tpr, _ = roc_curve(y, s)
    return float(np.trapezoid(tpr, fpr))


@dataclass(frozen=True)
class Confusion:
    tn: int
    fp: int
    fn: int
    tp: int

    @staticmethod
    def _ratio(a: float, b: float) -> float:
        return float(a / b) if b else float("nan")

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
        return asdict(self) | {k: getattr(self, k) for k in
                               ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy")}


def confusion_at(labels, scores, threshold: float) -> Confusion:
    y, s = _as_arrays(labels, scores)
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    return Confusion(tn=tn, fp=fp, fn=fn, tp=tp)


def threshold_for_sensitivity(labels, scores, target: float) -> float:
    """The highest threshold whose sensitivity is at least ``target`` (best specificity for it)."""
    y, s = _as_arrays(labels, scores)
    pos = np.sort(s[y == 1])[::-1]
    if pos.size == 0:
        raise ValueError("no positive labels: sensitivity is undefined")
    k = int(np.ceil(target * pos.size - 1e-9))  # positives that must be flagged
    return float(pos[max(k, 1) - 1])


def threshold_for_specificity(labels, scores, target: float) -> float:
    """The lowest threshold whose specificity is at least ``target`` (best sensitivity for it)."""
    y, s = _as_arrays(labels, scores)
    neg = np.sort(s[y == 0])
    if neg.size == 0:
        raise ValueError("no negative labels: specificity is undefined")
    k = int(np.ceil(target * neg.size - 1e-9))  # negatives that must stay below the threshold
    if k <= 0:
        return float(neg[0])
    return float(np.nextafter(neg[k - 1], np.inf))


def threshold_youden(labels, scores) -> float:
    """The threshold that maximises Youden's J = sensitivity + specificity - 1."""
    fpr, tpr, thr = roc_curve(labels, scores)
    j = tpr - fpr
    best = int(np.argmax(j[1:])) + 1  # skip the +inf point
    return float(thr[best])
