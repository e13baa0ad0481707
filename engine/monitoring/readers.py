"""Readers against the model: agreement with its flags, the PPV of a flag, and misses found by audit.

A decision in force on a study (a changed one counts once, as changed) says whether the reader agreed
with the flag they saw (probability >= the threshold recorded with the decision):

* **agreement**: decisions that agree, of all decisions, with an exact (Clopper-Pearson) 95% interval.
* **on flagged studies**: agreeing with a flag confirms it, so agreed / decided is the **PPV of a flag**;
  disagreeing makes it a **false positive**, disagreed / decided (both with exact 95% intervals).
* **by group**: the same per model (as recorded with the decision), per reader, per manufacturer, view
  and age band (from the study's safe metadata).
* **audit**: unflagged studies drawn at random into the audit sample (:mod:`engine.monitoring.audit`)
  and reviewed: disagreeing there means the reader sees pneumonia the model missed, so the **miss
  rate** is disagreed / reviewed audited studies, with its exact 95% interval; it estimates
  1 - NPV among unflagged studies. Only a random sample estimates it without bias: unflagged studies a
  reader chose to open are not counted in it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Optional, Sequence

from engine.evaluation.metrics import flagged as flag_rule
from engine.monitoring import stats
from engine.monitoring.drift import UNKNOWN
from engine.monitoring.state import pseudonym
from engine.worklist.store import StudyRow

GROUPS: dict[str, Callable[[dict], Optional[str]]] = {
    "model": lambda d: d["model"],
    "reader": lambda d: d["reviewer"],
    "manufacturer": lambda d: d["metadata"].manufacturer,
    "view": lambda d: d["metadata"].view_position,
    "age band": lambda d: d["metadata"].age_band,
}


def on_flag(decision: dict) -> bool:
    """Whether the study was flagged when the reader decided."""
    return bool(flag_rule(float(decision["probability"]), float(decision["threshold"])))


def summary(decisions: Sequence[dict]) -> dict:
    """Agreement, PPV of a flag and the false-positive share of decided flags, with counts."""
    agreed = sum(d["decision"] == "agree" for d in decisions)
    flags = [d for d in decisions if on_flag(d)]
    flags_agreed = sum(d["decision"] == "agree" for d in flags)
    unflagged = [d for d in decisions if not on_flag(d)]
    return {"decisions": len(decisions), "agreed": agreed, "disagreed": len(decisions) - agreed,
            "agreement": stats.proportion(agreed, len(decisions)).as_dict(),
            "flagged_decided": len(flags), "ppv": stats.proportion(flags_agreed, len(flags)).as_dict(),
            "false_positives": stats.proportion(len(flags) - flags_agreed, len(flags)).as_dict(),
            "unflagged_decided": len(unflagged),
            "unflagged_disagreed": sum(d["decision"] == "disagree" for d in unflagged)}


def by_group(decisions: Sequence[dict], names: bool = False) -> dict[str, list[dict]]:
    """Agreement and PPV of a flag per model, reader, manufacturer, view and age band (readers by a
    pseudonym unless ``names``)."""
    out = {}
    for group, key in GROUPS.items():
        parts: dict[str, list[dict]] = defaultdict(list)
        for d in decisions:
            value = key(d)
            value = str(value).strip() if value not in (None, "") else UNKNOWN
            if group == "reader" and not names and value != UNKNOWN:
                value = pseudonym(value)
            parts[value].append(d)
        out[group] = [{"group": value, **_short(summary(ds))} for value, ds in sorted(parts.items())]
    return out


def _short(s: dict) -> dict:
    return {k: s[k] for k in ("decisions", "agreement", "flagged_decided", "ppv")}


def audit_summary(studies: Sequence[StudyRow], threshold: float, share: float, seed: int) -> dict:
    """The audit sample of the period: how many unflagged studies were drawn (the share honoured, with
    its exact interval), how many are reviewed, and the miss rate they give."""
    unflagged = [r for r in studies if r.ok and not flag_rule(r.probability, threshold)]
    drawn = [r for r in unflagged if r.audit]
    reviewed = [r for r in drawn if r.review_status != "unreviewed"]
    missed = sum(r.review_status == "disagreed" for r in reviewed)
    return {"share": share, "seed": seed, "unflagged": len(unflagged),
            "drawn": stats.proportion(len(drawn), len(unflagged)).as_dict(),
            "reviewed": len(reviewed), "pending": len(drawn) - len(reviewed),
            "miss_rate": stats.proportion(missed, len(reviewed)).as_dict()}
