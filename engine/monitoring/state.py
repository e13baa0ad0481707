"""The stop rule's state: when it was crossed and why, and who cleared it (table ``monitor_state``).

An alert is raised once per kind while it is active ('disagreement': readers disagree with the model
more often; 'drift': more studies carry an out-of-population warning). It stays until a person clears
it, an act recorded with their name, the time and their reason (``python -m engine.monitor --clear
--by NAME --reason TEXT``, or the Monitoring page); clearing restarts the stop rule's sums from that
moment. Raising and clearing each write one log line (counts only, never a patient identifier).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Optional

from engine.errors import StoreError
from engine.monitoring import tables
from engine.worklist.store import Store

log = logging.getLogger("engine.monitor")
_COLUMNS = "id, period_id, kind, since, reason, cleared_by, cleared_at, clear_reason"


@dataclass(frozen=True)
class Alert:
    id: int
    period_id: int
    kind: str
    since: str
    reason: str
    cleared_by: Optional[str] = None
    cleared_at: Optional[str] = None
    clear_reason: Optional[str] = None

    @property
    def active(self) -> bool:
        return self.cleared_at is None

    def as_dict(self, names: bool = False) -> dict:
        """The alert for a report; who cleared it by name only with ``names``, else by a pseudonym."""
        who = self.cleared_by if names or self.cleared_by is None else pseudonym(self.cleared_by)
        return {"kind": self.kind, "since": self.since, "reason": self.reason, "active": self.active,
                "cleared_by": who, "cleared_at": self.cleared_at, "clear_reason": self.clear_reason}


def pseudonym(name: str) -> str:
    """A stable label for a person in a file meant to leave the server: ``person-<6 hex>``."""
    return "person-" + hashlib.sha256(name.strip().lower().encode("utf-8")).hexdigest()[:6]


def active(store: Store) -> list[Alert]:
    """Alerts not yet cleared, oldest first (an empty list: the model is in use)."""
    with tables.reading(store) as con:
        return [Alert(*r) for r in con.execute(
            f"SELECT {_COLUMNS} FROM monitor_state WHERE cleared_at IS NULL ORDER BY id")]


def history(store: Store, limit: int = 50) -> list[Alert]:
    """The latest alerts, cleared or not, newest first."""
    with tables.reading(store) as con:
        return [Alert(*r) for r in con.execute(
            f"SELECT {_COLUMNS} FROM monitor_state ORDER BY id DESC LIMIT ?", (int(limit),))]


def last_cleared(store: Store, period_id: int) -> Optional[str]:
    """When an alert of this period was last cleared (None: never)."""
    with tables.reading(store) as con:
        return con.execute("SELECT MAX(cleared_at) FROM monitor_state WHERE period_id = ?",
                           (int(period_id),)).fetchone()[0]


def raise_alert(store: Store, period_id: int, kind: str, since: str, reason: str) -> Optional[Alert]:
    """Record a crossing of the stop rule, unless an alert of this kind is already active; log it."""
    with tables.transaction(store) as con:
        if con.execute("SELECT 1 FROM monitor_state WHERE kind = ? AND cleared_at IS NULL", (kind,)).fetchone():
            return None
        cur = con.execute("INSERT INTO monitor_state (period_id, kind, since, reason) VALUES (?, ?, ?, ?)",
                          (int(period_id), kind, since, reason))
        row = con.execute(f"SELECT {_COLUMNS} FROM monitor_state WHERE id = ?", (cur.lastrowid,)).fetchone()
    log.warning("stop rule crossed (%s) since %s: %s", kind, since, reason)
    return Alert(*row)


def clear(store: Store, by: str, reason: str) -> int:
    """Clear every active alert, recording who, when and why; return how many were cleared."""
    by, reason = (by or "").strip()[:80], (reason or "").strip()[:2000]
    if not by or not reason:
        raise StoreError("clearing the stop rule needs the name of who clears it and a reason")
    with tables.transaction(store) as con:
        cur = con.execute("UPDATE monitor_state SET cleared_by = ?, cleared_at = ?, clear_reason = ? "
                          "WHERE cleared_at IS NULL", (by, tables.now(), reason))
    if cur.rowcount:
        log.info("stop rule cleared (%d alert(s)) by %s", cur.rowcount, pseudonym(by))
    return int(cur.rowcount)
