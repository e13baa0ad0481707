"""Several checkpoints scored on the same local labelled set, compared (no Streamlit here).

The Compare page scores each chosen checkpoint (an ensemble folder is one checkpoint) on one folder
of images in class folders, through the same cached scoring as the Performance page, then compares
them here: AUC with a bootstrap interval, sensitivity and specificity at each model's own card
threshold with exact intervals, and DeLong's paired test of the AUC difference for every pair, on
the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from engine.evaluation import metrics as M

from dashboard.evaluation import LabelledSet, interval_text, sensitivity_specificity

CARD_FILE = "model_card.json"


@dataclass(frozen=True)
class ScoredModel:
    """One checkpoint's scores on the labelled set, and the threshold its card sets."""

    name: str
    threshold: float
    scores: LabelledSet


def find_checkpoints(roots: Iterable[Path], depth: int = 3) -> list[Path]:
    """Checkpoint folders (holding a model card) under ``roots``, at most ``depth`` levels down."""
    found: list[Path] = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for level in range(depth + 1):
            pattern = "/".join(["*"] * level + [CARD_FILE])
            found.extend(p.parent.resolve() for p in root.glob(pattern))
    return sorted(dict.fromkeys(found))


def aligned(models: Sequence[ScoredModel]) -> bool:
    """Whether every model scored the same files with the same labels (a paired comparison holds)."""
    first = models[0].scores
    return all(m.scores.files == first.files and np.array_equal(m.scores.labels, first.labels)
               for m in models[1:])


def comparison_table(models: Sequence[ScoredModel], n_resamples: int = 1000) -> pd.DataFrame:
    rows = []
    for m in models:
        ls = m.scores
        both = ls.both_classes
        auc = M.roc_auc(ls.labels, ls.scores) if both else np.nan
        lo, hi = M.bootstrap_ci(ls.labels, ls.scores, M.roc_auc, n_resamples=n_resamples) if both else (np.nan, np.nan)
        rows.append({"model": m.name, "n": ls.n, "auc": auc, "auc 95% CI": interval_text(lo, hi) if both else "",
                     "threshold": m.threshold, **sensitivity_specificity(ls.labels, ls.scores, m.threshold),
                     "flagged": int(M.flagged(ls.scores, m.threshold).sum())})
    return pd.DataFrame(rows)


def paired_auc_tests(models: Sequence[ScoredModel]) -> pd.DataFrame:
    """DeLong's test for every pair (empty unless every model scored the same files, both classes)."""
    if len(models) < 2 or not aligned(models) or not models[0].scores.both_classes:
        return pd.DataFrame()
    rows = []
    y = models[0].scores.labels
    for i, a in enumerate(models):
        for b in models[i + 1:]:
            d = M.delong_test(y, a.scores.scores, b.scores.scores)
            rows.append({"A": a.name, "B": b.name, "AUC A": d["auc_a"], "AUC B": d["auc_b"],
                         "A − B": d["difference"], "95% CI": f"{d['ci_95'][0]:+.4f} to {d['ci_95'][1]:+.4f}",
                         "p": d["p"]})
    return pd.DataFrame(rows)
