"""Site profiles: the operating point re-fitted on a hospital's own labelled cases, saved by name.

A profile is a small JSON file: the threshold, the rule and its target ("sensitivity>=0.95"), the
counts per class, sensitivity and specificity at that threshold with exact (Clopper-Pearson) 95%
intervals, a hash of the data it was fitted on, the date, and the model it belongs to. Fewer than
``MIN_PER_CLASS`` cases of either class marks it unreliable, and says so wherever it is shown.

Profiles live in ``$CXR_PROFILES_DIR``, else ``profiles/`` in the worklist store's folder, so they
survive restarts; the dashboard's sidebar offers them on every page and ``engine.predict --profile
NAME`` uses one.

Reviewer decisions become labels this way (:func:`labels_from_decisions`): agreeing with a flag, or
disagreeing with a non-flag, means pneumonia; disagreeing with a flag, or agreeing with a non-flag,
means normal. The flag is the one the reviewer saw (probability against the threshold recorded with
the decision); the latest decision per study counts.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from engine.errors import ProfileError  # noqa: F401  (part of this module's interface)
from engine.evaluation.metrics import flagged as flag_rule

from engine.evaluation import metrics as M
from engine.settings import settings

MIN_PER_CLASS = 30
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,59}$")


@dataclass(frozen=True)
class SiteProfile:
    name: str
    threshold: float
    rule: str                                   # "sensitivity>=0.95", "specificity>=0.9", "youden", "fixed"
    model: str                                  # "<name> <version>" of the checkpoint it was fitted for
    source: str                                 # what the cases were: "labelled folder", "review decisions", ...
    n_normal: int
    n_pneumonia: int
    sensitivity: tuple[float, float, float]     # value, 95% low, 95% high (Clopper-Pearson)
    specificity: tuple[float, float, float]
    data_sha256: str
    created: str

    @property
    def reliable(self) -> bool:
        return min(self.n_normal, self.n_pneumonia) >= MIN_PER_CLASS

    @property
    def caution(self) -> str:
        if self.reliable:
            return ""
        return (f"unreliable: fitted on {self.n_pneumonia} pneumonia and {self.n_normal} normal cases; "
                f"at least {MIN_PER_CLASS} of each are needed for a stable estimate")

    def summary(self) -> str:
        s, p = self.sensitivity, self.specificity
        text = (f"{self.name}: threshold {self.threshold:.3f} ({self.rule}) on {self.n_pneumonia} pneumonia / "
                f"{self.n_normal} normal {self.source}; sensitivity {s[0]:.3f} ({s[1]:.3f}-{s[2]:.3f}), "
                f"specificity {p[0]:.3f} ({p[1]:.3f}-{p[2]:.3f})")
        return f"{text}; {self.caution}" if self.caution else text


# Example profiles shipped with the product (read-only), found after the user's own by the same name.
SHIPPED_PROFILES_DIR = Path(__file__).resolve().parents[2] / "assets" / "profiles"


def profiles_dir() -> Path:
    return settings().profiles_root


def data_hash(labels: Sequence[int], scores: Sequence[float]) -> str:
    y = np.asarray(labels, np.int64)
    s = np.round(np.asarray(scores, np.float64), 9)
    return hashlib.sha256(y.tobytes() + s.tobytes()).hexdigest()


def fit_profile(name: str, labels, scores, rule: str, *, model: str, source: str) -> SiteProfile:
    """Choose the threshold on these cases by ``rule`` (:func:`engine.evaluation.metrics.parse_rule`: "youden",
    "sensitivity>=0.95", "specificity>=0.9", "fixed:0.5"; the same margin rule as the model card's)
    and describe what it means on them."""
    name = name.strip()
    if not _NAME.match(name):
        raise ProfileError("a profile name is 1-60 letters, digits, spaces, '.', '_' or '-', starting "
                           f"with a letter or digit; got {name!r}")
    y, s = np.asarray(labels, np.int64), np.asarray(scores, np.float64)
    n_pos, n_neg = int(y.sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ProfileError(f"both classes are needed to fit an operating point ({n_pos} pneumonia, {n_neg} normal)")
    try:
        threshold = float(M.choose_threshold(y, s, rule).threshold)
    except ValueError as exc:
        raise ProfileError(str(exc)) from None
    threshold = min(max(threshold, 0.0), 1.0)
    c = M.confusion_at(y, s, threshold)
    return SiteProfile(name, threshold, rule, model, source, n_neg, n_pos,
                       (c.sensitivity, *M.clopper_pearson(c.tp, c.tp + c.fn)),
                       (c.specificity, *M.clopper_pearson(c.tn, c.tn + c.fp)),
                       data_hash(y, s), datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _path(name: str, folder: Optional[Path]) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._") or "profile"
    return (folder or profiles_dir()) / f"{slug}.json"


def save_profile(profile: SiteProfile, folder: Optional[Path] = None) -> Path:
    path = _path(profile.name, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(profile), indent=2) + "\n")
    tmp.replace(path)
    return path


def load_profile(name: str, folder: Optional[Path] = None) -> SiteProfile:
    """A saved profile by name: the user's own folder first, then (without ``folder``) the examples the
    product ships in ``assets/profiles`` (``kermany-test-dev``)."""
    path = _path(name, folder)
    if folder is None and not path.exists() and _path(name, SHIPPED_PROFILES_DIR).exists():
        path = _path(name, SHIPPED_PROFILES_DIR)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        known = ", ".join(p.name for p in list_profiles(folder)) or "none saved yet"
        raise ProfileError(f"no site profile named {name!r} (known: {known})") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ProfileError(f"site profile {name!r} cannot be read ({exc})") from None
    try:
        return _from_dict(d)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProfileError(f"site profile {name!r} ({path}) is not valid: {exc}") from None


def list_profiles(folder: Optional[Path] = None) -> list[SiteProfile]:
    """Saved profiles (the user's, then the shipped examples not shadowed by a user's of the same file name)."""
    root = folder or profiles_dir()
    paths = sorted(root.glob("*.json")) if root.is_dir() else []
    if folder is None and SHIPPED_PROFILES_DIR.is_dir():
        own = {p.name for p in paths}
        paths += [p for p in sorted(SHIPPED_PROFILES_DIR.glob("*.json")) if p.name not in own]
    out = []
    for path in paths:
        try:
            out.append(_from_dict(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError, TypeError):
            continue                      # a damaged file is skipped, never fatal
    return out


def _from_dict(d: dict) -> SiteProfile:
    """A profile from its JSON, checked like a model card: a threshold outside [0, 1] (or NaN) would flag
    everything or nothing, so it is refused (ValueError), as are counts that are not whole numbers."""
    if not isinstance(d, dict):
        raise ValueError(f"a profile is a JSON object, got {type(d).__name__}")
    d = dict(d)
    threshold = d.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
            or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    for key in ("n_normal", "n_pneumonia"):
        if isinstance(d.get(key), bool) or not isinstance(d.get(key), int) or d[key] < 0:
            raise ValueError(f"{key} must be a whole number of cases, got {d.get(key)!r}")
    d["sensitivity"], d["specificity"] = tuple(d["sensitivity"]), tuple(d["specificity"])
    return SiteProfile(**{k: d[k] for k in SiteProfile.__dataclass_fields__})


def labels_from_decisions(decisions: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) from reviewer decisions (dicts with ``study_id``, ``decision``,
    ``probability``, ``threshold``); the latest decision per study counts."""
    latest: dict[int, dict] = {}
    for d in decisions:
        latest[d["study_id"]] = d
    labels, scores = [], []
    for d in latest.values():
        flagged = bool(flag_rule(float(d["probability"]), float(d["threshold"])))
        agree = d["decision"] == "agree"
        labels.append(1 if flagged == agree else 0)
        scores.append(float(d["probability"]))
    return np.asarray(labels, np.int64), np.asarray(scores, np.float64)
