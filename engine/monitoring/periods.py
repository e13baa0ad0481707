"""Monitoring periods: which model (checkpoint) and threshold are monitored, since when.

A period starts when monitoring first sees a store (from its first study), and again whenever the
model monitored changes: another checkpoint (its resolved folder and the fingerprint of its files,
the store's model key), or another threshold given to ``python -m engine.monitor`` or
``python -m engine.ingest``. Everything monitoring reports is for the current period; a new period
starts its own reference window and its own stop-rule runs, and says that its threshold should be
checked against the audit sample. The audit share and seed are the period's
(``$CXR_AUDIT_SHARE``, default 0.05, and ``$CXR_AUDIT_SEED``, default 0, for a new period).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from engine.settings import settings
from engine.errors import StoreError
from engine.model.checkpoint import read_card
from engine.monitoring import tables
from engine.worklist.ingest import checkpoint_fingerprint
from engine.worklist.store import Store

DEFAULT_AUDIT_SHARE = 0.05
_COLUMNS = ("id", "started", "model_key", "model_label", "threshold", "reason", "audit_share", "audit_seed",
            "reference_from", "reference_to")


@dataclass(frozen=True)
class ModelInfo:
    """A checkpoint as monitoring names it, read without loading the network."""

    key: str                 # the store's model key: "<folder>@<fingerprint>"
    label: str               # "<name> <version>" from the model card
    card_threshold: float

    @property
    def folder(self) -> Path:
        return Path(self.key.rsplit("@", 1)[0])


def model_info(checkpoint: Optional[str | Path] = None) -> ModelInfo:
    """The checkpoint folder's key, label and card threshold (default: the shipped model)."""
    folder, fingerprint = checkpoint_fingerprint(checkpoint)
    card = read_card(folder)
    return ModelInfo(f"{folder}@{fingerprint}", f"{card.name or card.architecture} {card.version}".strip(),
                     float(card.threshold))


@dataclass(frozen=True)
class Period:
    id: int
    started: str
    model_key: str
    model_label: str
    threshold: float
    reason: str
    audit_share: float
    audit_seed: int
    reference_from: Optional[str] = None
    reference_to: Optional[str] = None

    @property
    def folder(self) -> Path:
        return Path(self.model_key.rsplit("@", 1)[0])

    def as_dict(self) -> dict:
        """What a report says of the period (the model by its label and fingerprint, not its path)."""
        return {"id": self.id, "started": self.started, "reason": self.reason, "model": self.model_label,
                "model_fingerprint": self.model_key.rsplit("@", 1)[-1], "threshold": round(self.threshold, 4),
                "audit_share": self.audit_share, "audit_seed": self.audit_seed,
                "reference_accepted": None if self.reference_from is None else
                {"from": self.reference_from, "to": self.reference_to}}


def default_audit_share() -> float:
    """``CXR_AUDIT_SHARE`` (engine.settings) when it is a share in (0, 1], else 0.05."""
    share = settings().audit_share
    return share if 0.0 < share <= 1.0 else DEFAULT_AUDIT_SHARE


def default_audit_seed() -> int:
    return settings().audit_seed


def current(store: Store) -> Optional[Period]:
    """The period in force (the latest), None before monitoring first saw this store."""
    with tables.reading(store) as con:
        row = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM monitor_periods ORDER BY id DESC LIMIT 1").fetchone()
    return Period(*row) if row else None


def history(store: Store) -> list[Period]:
    """Every period, oldest first."""
    with tables.reading(store) as con:
        return [Period(*r) for r in con.execute(f"SELECT {', '.join(_COLUMNS)} FROM monitor_periods ORDER BY id")]


def ensure(store: Store, model: ModelInfo, threshold: Optional[float] = None,
           audit_share: Optional[float] = None) -> Period:
    """The current period for ``model`` at ``threshold`` (None: the current period's, else the card's):
    the one in force when it matches, else a new one, started now (the first from the store's first study)."""
    if audit_share is not None and not 0.0 < audit_share <= 1.0:
        raise StoreError(f"the audit share must be in (0, 1], got {audit_share}")
    cur = current(store)
    if cur is not None and cur.model_key == model.key and (threshold is None or abs(threshold - cur.threshold) < 1e-9):
        if audit_share is not None and audit_share != cur.audit_share:
            with tables.transaction(store) as con:
                con.execute("UPDATE monitor_periods SET audit_share = ? WHERE id = ?", (float(audit_share), cur.id))
            return current(store)
        return cur
    if cur is None:
        reason, started = "first period", store.first_added() or tables.now()
    else:
        reason = ("new threshold" if cur.model_key == model.key else
                  "new model version" if cur.model_label != model.label else "new checkpoint")
        started = tables.now()
    thr = float(threshold if threshold is not None else model.card_threshold)
    share = audit_share if audit_share is not None else cur.audit_share if cur else default_audit_share()
    seed = cur.audit_seed if cur else default_audit_seed()
    with tables.transaction(store) as con:
        con.execute("INSERT INTO monitor_periods (started, model_key, model_label, threshold, reason, audit_share, "
                    "audit_seed) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (started, model.key, model.label, thr, reason, float(share), int(seed)))
    return current(store)


def accept_reference(store: Store, period: Period, start: str, end: str) -> Period:
    """Record a window of the period (``start`` to ``end``, ISO times) as its reference."""
    if end <= start:
        raise StoreError(f"the reference window must end after it starts ({start} .. {end})")
    with tables.transaction(store) as con:
        con.execute("UPDATE monitor_periods SET reference_from = ?, reference_to = ? WHERE id = ?",
                    (start, end, period.id))
    return current(store)
