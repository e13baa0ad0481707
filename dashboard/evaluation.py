"""Labelled sets for the Performance page and evaluation folders for Compare (no Streamlit).

A labelled set is labels (0 normal, 1 pneumonia) and probabilities from one of: the model's own
``val_predictions.csv``, an uploaded predictions CSV, or images in class folders (``NORMAL/`` and
``PNEUMONIA/``, any depth, any case) that the model scores. An evaluation folder is what
``python -m training.evaluate`` writes: ``metrics.json``, ``predictions.csv`` and optionally the
checkpoint's ``model_card.json``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import pandas as pd

from engine.evaluation import metrics as M

from engine.worklist.store import StudyRow

DEFAULT_CLASS_NAMES = ("normal", "pneumonia")
METRIC_NAMES = {"sensitivity": "Sensitivity", "specificity": "Specificity", "ppv": "PPV",
                "npv": "NPV", "f1": "F1", "accuracy": "Accuracy"}
COMPARE_COLUMNS = ("auc", "average_precision", "accuracy", "sensitivity", "specificity", "ppv",
                   "npv", "f1", "threshold", "n")


class LabelledDataError(ValueError):
    """A predictions file or folder that cannot be used as a labelled set (the message says why)."""


@dataclass(frozen=True)
class LabelledSet:
    name: str
    labels: np.ndarray                  # int 0/1
    scores: np.ndarray                  # float probabilities of pneumonia
    files: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()       # "file: reason" for rows/files that were left out
    sha256s: tuple[str, ...] = ()       # per scored file, when known (images, not a predictions CSV)
    subgroups: tuple[dict, ...] = ()    # per scored file, when known: {"modality": "CR", "age band": ...}

    @property
    def n(self) -> int:
        return int(self.labels.size)

    @property
    def n_positive(self) -> int:
        return int(self.labels.sum())

    @property
    def both_classes(self) -> bool:
        return 0 < self.n_positive < self.n


def parse_labels(values: Iterable, class_names: Sequence[str] = DEFAULT_CLASS_NAMES) -> np.ndarray:
    """0/1 (numbers or text) or class names (any case) -> int array; anything else is an error."""
    names = {str(c).strip().lower(): i for i, c in enumerate(class_names)}
    out, bad = [], []
    for v in values:
        text = str(v).strip().lower()
        if text in names:
            out.append(names[text])
            continue
        try:
            num = float(text)
        except ValueError:
            num = float("nan")
        if num in (0.0, 1.0):
            out.append(int(num))
        else:
            bad.append(str(v))
    if bad:
        shown = ", ".join(repr(b) for b in sorted(set(bad))[:5])
        raise LabelledDataError(f"label must be 0/1 or one of {', '.join(class_names)}; "
                                f"got {shown} in {len(bad)} row(s)")
    return np.asarray(out, dtype=np.int64)


def labelled_set_from_csv(source: Union[bytes, str, Path], name: str,
                          class_names: Sequence[str] = DEFAULT_CLASS_NAMES) -> LabelledSet:
    """A CSV with columns ``label`` and ``probability`` (``file`` optional; names any case)."""
    try:
        data = io.BytesIO(source) if isinstance(source, bytes) else source
        df = pd.read_csv(data)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise LabelledDataError(f"{name}: not a readable CSV file ({exc})") from None
    cols = {str(c).strip().lower(): c for c in df.columns}
    missing = [c for c in ("label", "probability") if c not in cols]
    if missing:
        raise LabelledDataError(f"{name}: needs columns 'label' and 'probability'; missing "
                                f"{', '.join(repr(m) for m in missing)} (found: "
                                f"{', '.join(repr(str(c)) for c in df.columns) or 'none'})")
    if df.empty:
        raise LabelledDataError(f"{name}: has a header but no rows")
    try:
        labels = parse_labels(df[cols["label"]], class_names)
    except LabelledDataError as exc:
        raise LabelledDataError(f"{name}: {exc}") from None
    scores = pd.to_numeric(df[cols["probability"]], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(scores) | (scores < 0) | (scores > 1)
    if bad.any():
        raise LabelledDataError(f"{name}: probability must be a number in [0, 1]; "
                                f"{int(bad.sum())} row(s) are not (first at row {int(np.argmax(bad)) + 2})")
    files = tuple(df[cols["file"]].astype(str)) if "file" in cols else ()
    return LabelledSet(name, labels, scores, files)


def val_predictions_set(path: Optional[Path], class_names: Sequence[str] = DEFAULT_CLASS_NAMES
                        ) -> Optional[LabelledSet]:
    """The checkpoint's ``val_predictions.csv`` as a labelled set (None when there is none)."""
    if path is None or not Path(path).is_file():
        return None
    return labelled_set_from_csv(Path(path), "validation predictions of the model", class_names)


def label_from_path(name: str, class_names: Sequence[str] = DEFAULT_CLASS_NAMES) -> Optional[int]:
    """The class of a file from the nearest folder named after a class (``.../PNEUMONIA/x.jpeg``)."""
    names = {str(c).strip().lower(): i for i, c in enumerate(class_names)}
    parts = PurePosixPath(str(name).replace("\\", "/")).parts[:-1]
    for part in reversed(parts):
        if part.lower() in names:
            return names[part.lower()]
    return None


def labelled_set_from_records(records: Iterable[StudyRow], name: str,
                              class_names: Sequence[str] = DEFAULT_CLASS_NAMES) -> LabelledSet:
    """Scored records labelled by their class folder; the others are listed in ``skipped``."""
    labels, scores, files, skipped, shas, groups = [], [], [], [], [], []
    for r in records:
        label = label_from_path(r.name, class_names)
        if label is None:
            skipped.append(f"{r.name}: not inside a folder named {' or '.join(c.upper() for c in class_names)}")
        elif not r.ok:
            skipped.append(r.message or f"{r.name}: {r.status}")
        else:
            labels.append(label)
            scores.append(r.probability)
            files.append(r.name)
            shas.append(r.sha256)
            groups.append(subgroups_of(r, class_names))
    if not labels:
        raise LabelledDataError(f"{name}: no readable image inside class folders "
                                f"({', '.join(c.upper() for c in class_names)}/); {len(skipped)} file(s) skipped")
    return LabelledSet(name, np.asarray(labels, dtype=np.int64), np.asarray(scores, dtype=float),
                       tuple(files), tuple(skipped), tuple(shas), tuple(groups))


SUBGROUP_FIELDS = ("source", "format", "modality", "view", "age band")


def subgroups_of(study: StudyRow, class_names: Sequence[str] = DEFAULT_CLASS_NAMES) -> dict:
    """What a study's subgroups are, from its header and its path: the folder above its class folder
    ("source": a site or a batch, when the labelled set is organised that way), the file format, and
    the DICOM modality, view and age band ("unknown" where the file does not say)."""
    md = study.metadata
    parts = PurePosixPath(str(study.name).replace("\\", "/")).parts[:-1]
    names = {str(c).strip().lower() for c in class_names}
    at = max((i for i, p in enumerate(parts) if p.lower() in names), default=-1)
    return {"source": parts[at - 1] if at >= 1 else "(top level)", "format": md.format or "unknown",
            "modality": md.modality or "unknown", "view": md.view_position or "unknown",
            "age band": md.age_band or "unknown"}


def interval_text(low: float, high: float, digits: int = 3) -> str:
    """A 95% interval as shown ("0.359–0.996"), or "" when there is none to show: not estimable (NaN), or of
    no width at the precision shown (a bootstrap on a handful of cases collapses to one value, and
    "0.800–0.800" would read as certainty)."""
    if not (np.isfinite(low) and np.isfinite(high)) or round(high, digits) <= round(low, digits):
        return ""
    return f"{low:.{digits}f}–{high:.{digits}f}"


def sensitivity_specificity(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Sensitivity and specificity at ``threshold`` with exact (Clopper-Pearson) 95% intervals as text,
    the columns every comparison table shows (NaN and "" for a class that is absent)."""
    conf = M.confusion_at(labels, scores, threshold)
    out = {}
    for name, k, n in (("sensitivity", conf.tp, conf.tp + conf.fn), ("specificity", conf.tn, conf.tn + conf.fp)):
        lo, hi = M.clopper_pearson(k, n) if n else (np.nan, np.nan)
        out[name] = k / n if n else np.nan
        out[f"{name} 95% CI"] = f"{lo:.3f} – {hi:.3f}" if n else ""
    return out


def subgroup_metrics(ls: LabelledSet, threshold: float, min_size: int = 1) -> pd.DataFrame:
    """One row per subgroup value for every field that splits the set (two values or more): counts,
    AUC where both classes are present, and sensitivity and specificity at ``threshold`` with exact
    (Clopper-Pearson) 95% intervals. Empty when the data carry no subgroups (a predictions CSV, or
    a set with one modality, view, age band and source)."""
    rows = []
    if not ls.subgroups:
        return pd.DataFrame(rows)
    for key in SUBGROUP_FIELDS:
        values = np.array([g.get(key, "unknown") for g in ls.subgroups])
        if len(set(values.tolist())) < 2:
            continue
        for value in sorted(set(values.tolist())):
            m = values == value
            y, s = ls.labels[m], ls.scores[m]
            if m.sum() < min_size:
                continue
            pos, neg = int(y.sum()), int((1 - y).sum())
            rows.append({"subgroup": key, "value": value, "n": int(m.sum()), "normal": neg, "pneumonia": pos,
                         "auc": M.roc_auc(y, s) if pos and neg else np.nan,
                         **sensitivity_specificity(y, s, threshold)})
    return pd.DataFrame(rows)


def per_file(ls: LabelledSet, threshold: float) -> pd.DataFrame:
    """One row per scored study: file, label, probability, flagged (yes/no, as every results CSV says it)
    and outcome (TP/FP/FN/TN) at ``threshold``,
    errors (false positives, then false negatives) first, each by how wrong it is."""
    y, s = ls.labels, ls.scores
    flagged = M.flagged(s, threshold)
    outcome = np.where(flagged, np.where(y == 1, "TP", "FP"), np.where(y == 1, "FN", "TN"))
    files = list(ls.files) if len(ls.files) == len(y) else [f"#{i + 1}" for i in range(len(y))]
    shas = list(ls.sha256s) if len(ls.sha256s) == len(y) else [""] * len(y)
    df = pd.DataFrame({"file": files, "label": np.where(y == 1, "pneumonia", "normal"), "probability": s,
                       "flagged": np.where(flagged, "yes", "no"), "outcome": outcome, "sha256": shas})
    rank = df["outcome"].map({"FP": 0, "FN": 1, "TP": 2, "TN": 3})
    wrongness = np.where(df["outcome"] == "FP", -s, s)          # most confident mistakes first
    return df.assign(_r=rank, _w=wrongness).sort_values(["_r", "_w"]).drop(columns=["_r", "_w"]).reset_index(drop=True)


def metrics_table(ls: LabelledSet, threshold: float, n_resamples: int = 1000, seed: int = 0
                  ) -> pd.DataFrame:
    """Metric, value and bootstrap 95% interval at ``threshold`` (engine.evaluation.metrics, vectorised)."""
    ci = M.threshold_metrics_with_ci(ls.labels, ls.scores, threshold, n_resamples=n_resamples, seed=seed)
    return pd.DataFrame([{"metric": METRIC_NAMES[k], "value": v, "ci_low": lo, "ci_high": hi}
                         for k, (v, lo, hi) in ci.items()])


# --------------------------------------------------------------------------- compare

class EvaluationFolderError(ValueError):
    """A folder that is not an evaluation output (the message names the folder and the file)."""


@dataclass(frozen=True)
class EvaluationFolder:
    path: Path
    name: str
    metrics: dict
    labels: np.ndarray
    scores: np.ndarray
    model: str = ""                     # "<name> <version>" from model_card.json, if present
    card: dict = field(default_factory=dict)
    files: tuple[str, ...] = ()         # predictions.csv's file column, when it has one


def find_evaluation_folders(root: Union[str, Path]) -> list[Path]:
    """Sub-folders of ``root`` (one level) that hold a ``metrics.json``, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "metrics.json").is_file())


def load_evaluation_folder(folder: Union[str, Path]) -> EvaluationFolder:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise EvaluationFolderError(f"'{path}' is not a folder")
    mfile = path / "metrics.json"
    if not mfile.is_file():
        raise EvaluationFolderError(f"'{path}' has no metrics.json: not an output folder of "
                                    f"python -m training.evaluate")
    try:
        metrics = json.loads(mfile.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvaluationFolderError(f"{mfile} is not valid JSON ({exc})") from None
    if not isinstance(metrics, dict):
        raise EvaluationFolderError(f"{mfile} must hold a JSON object")
    pfile = path / "predictions.csv"
    if not pfile.is_file():
        raise EvaluationFolderError(f"'{path}' has no predictions.csv (columns file,label,probability)")
    try:
        preds = labelled_set_from_csv(pfile, str(pfile))
    except LabelledDataError as exc:
        raise EvaluationFolderError(str(exc)) from None
    card = {}
    model = f"{metrics.get('model_name') or ''} {metrics.get('model_version') or ''}".strip()
    cfile = path / "model_card.json"
    if cfile.is_file():
        try:
            card = json.loads(cfile.read_text())
            model = f"{card.get('name') or card.get('architecture', '')} {card.get('version', '')}".strip()
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            card, model = {}, "(unreadable model_card.json)"
    return EvaluationFolder(path, path.name, metrics, preds.labels, preds.scores, model, card, preds.files)


def same_data(evals: Sequence[EvaluationFolder]) -> bool:
    """Whether every evaluation scored the same cases: the same files with the same labels in its
    predictions.csv (the rule of the paired tests), whatever path metrics.json gives for the data (one
    manifest copied to two folders is the same data; two splits in one folder are not). Without file
    names, the labels in order and the size must match."""
    if len(evals) < 2:
        return True
    key = lambda e: (sorted(zip(e.files, e.labels.tolist())) if len(e.files) == e.labels.size  # noqa: E731
                     else [("", int(v)) for v in e.labels.tolist()])
    first = key(evals[0])
    return all(key(e) == first for e in evals[1:])


def compare_table(evals: Sequence[EvaluationFolder]) -> pd.DataFrame:
    """One row per evaluation: the metrics.json values, AUC interval, model (its short label, as every page
    names it), data and folder."""
    from dashboard.labels import short_label
    rows = []
    for e in evals:
        m = e.metrics
        ci = m.get("auc_ci_95") or [np.nan, np.nan]
        row = {"evaluation": e.name, "model": short_label(e.model)}
        for c in COMPARE_COLUMNS:
            v = m.get(c)
            row[c] = float(v) if isinstance(v, (int, float)) and c != "n" else v
        row["auc_ci_95"] = (interval_text(float(ci[0]), float(ci[1]))
                            if len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci) else "")
        data = m.get("data_dir")
        row["data"] = (f"{Path(str(data)).name}" + (f" / {m['split']}" if m.get("split") else "")) if data else ""
        row["folder"] = str(e.path)
        rows.append(row)
    cols = ["evaluation", "model", "data", "auc", "auc_ci_95", *COMPARE_COLUMNS[1:], "folder"]
    return pd.DataFrame(rows, columns=cols)
