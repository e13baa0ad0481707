"""The audit sample: a share of unflagged studies drawn at random for a reader to review.

A reader reviews what the model flags; what it does not flag is seldom opened, so its misses go
unseen. Each scored study that is not flagged at the period's threshold is drawn once, independently,
with probability ``share`` (the period's audit share): the draw is the uniform number made of the
SHA-256 of ``"<seed>:<study id>"``, so it is reproducible from the seed and does not depend on when or
in which order studies are drawn. The draw is recorded on the study row (``studies.audit``: 1 in the
sample, 0 not), never drawn again, and marked "audit" in the worklist.
"""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence

from engine.evaluation.metrics import flagged as flag_rule
from engine.monitoring.periods import Period
from engine.worklist.store import Store, StudyRow


def draw_value(seed: int, study_id: int) -> float:
    """A uniform number in [0, 1) for this study and seed."""
    digest = hashlib.sha256(f"{int(seed)}:{int(study_id)}".encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def in_sample(seed: int, study_id: int, share: float) -> bool:
    return draw_value(seed, study_id) < share


def draw(store: Store, period: Period, studies: Optional[Sequence[StudyRow]] = None) -> int:
    """Draw every scored, unflagged study of the period not drawn yet; return how many were drawn now."""
    rows = studies if studies is not None else store.monitored_studies(period.model_key, period.started)
    marks = {r.id: in_sample(period.audit_seed, r.id, period.audit_share)
             for r in rows if r.ok and not flag_rule(r.probability, period.threshold)}
    return store.set_audit(marks) if marks else 0
