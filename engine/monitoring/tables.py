"""The monitoring tables, kept in the worklist store's database beside its own tables.

    monitor_periods   one row per monitoring period: a model (checkpoint) and threshold in force, from
                      ``started``; with the audit share and seed, and the accepted reference window
    monitor_state     one row per crossing of the stop rule: since when, why, and who cleared it, when
                      and why (NULL ``cleared_at``: the model is under review)

Times are UTC, ISO 8601 with the offset (as every time in the store). The tables are created when
monitoring first opens a store; nothing here is ever deleted.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from typing import Iterator

from engine.worklist.store import Store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS monitor_periods (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    started        TEXT    NOT NULL,
    model_key      TEXT    NOT NULL,
    model_label    TEXT    NOT NULL DEFAULT '',
    threshold      REAL    NOT NULL,
    reason         TEXT    NOT NULL DEFAULT '',
    audit_share    REAL    NOT NULL,
    audit_seed     INTEGER NOT NULL DEFAULT 0,
    reference_from TEXT,                      -- NULL: the period's first window is the reference
    reference_to   TEXT
);
CREATE TABLE IF NOT EXISTS monitor_state (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    period_id    INTEGER NOT NULL REFERENCES monitor_periods(id),
    kind         TEXT    NOT NULL,            -- 'disagreement' or 'drift'
    since        TEXT    NOT NULL,
    reason       TEXT    NOT NULL,
    cleared_by   TEXT,
    cleared_at   TEXT,
    clear_reason TEXT
);
"""


def now() -> str:
    """The current UTC time as the store writes times."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _connect(store: Store) -> sqlite3.Connection:
    con = sqlite3.connect(store.db_path, timeout=30)
    con.execute("PRAGMA foreign_keys=ON")
    con.executescript(_SCHEMA)        # IF NOT EXISTS: a no-op once the tables are there
    return con


@contextmanager
def transaction(store: Store) -> Iterator[sqlite3.Connection]:
    """One transaction on the store's database: committed at the end, rolled back on an exception."""
    with closing(_connect(store)) as con, con:
        yield con


@contextmanager
def reading(store: Store) -> Iterator[sqlite3.Connection]:
    with closing(_connect(store)) as con:
        yield con
