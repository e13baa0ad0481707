"""Paired comparison of evaluation folders scored on the same files (DeLong's test of two AUCs)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def paired_tests(folders: Sequence[str | Path]) -> list[dict]:
    """DeLong's paired test for every pair of evaluations scored on the same files (same names and
    labels in predictions.csv); pairs on different data are left out."""
    import pandas as pd

    from engine.evaluation.metrics import delong_test
    preds = {}
    for f in folders:
        try:
            df = pd.read_csv(Path(f) / "predictions.csv")
            preds[str(f)] = df.set_index("file").sort_index() if "file" in df else None
        except (OSError, ValueError, KeyError, pd.errors.ParserError):
            preds[str(f)] = None
    out = []
    names = list(preds)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pa, pb = preds[a], preds[b]
            if pa is None or pb is None or not pa.index.equals(pb.index) or not (pa["label"] == pb["label"]).all():
                continue
            d = delong_test(pa["label"].to_numpy(np.int64), pa["probability"].to_numpy(), pb["probability"].to_numpy())
            out.append({"a": Path(a).name, "b": Path(b).name, **d})
    return out
