"""The reviewers' log: one row per agree/disagree decision, in a local SQLite file.

Each row records when (UTC, ISO 8601), which file (SHA-256 of its bytes and its base name only),
which model (name and version), the probability and threshold the reviewer saw, the decision and
a free-text note. No patient identifier is ever stored: the file is identified by its content
hash, and a name such as ``archive.zip/patients/DOE_JOHN/img.dcm`` is cut to ``img.dcm``.

The log survives restarts. Every call opens its own connection, so one :class:`ReviewLog` can be
shared by any number of threads (Streamlit sessions). The path defaults to
``review_log.sqlite3`` in the working directory, or ``$CXR_REVIEW_LOG`` when set.
"""

from __future__ import annotations

import csv
import io
import os
import sqlite3
from contextlib import closing
from dataclasses import astuple, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Optional, Union
from engine.csvsafe import csv_safe as _csv_safe

DEFAULT_FILENAME = "review_log.sqlite3"
ENV_VAR = "CXR_REVIEW_LOG"
DECISIONS = ("agree", "disagree")
MAX_NOTE_CHARS = 2000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reviews (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time        TEXT    NOT NULL,
    file_sha256 TEXT    NOT NULL,
    file_name   TEXT    NOT NULL,
    model       TEXT    NOT NULL,
    probability REAL    NOT NULL,
    threshold   REAL    NOT NULL,
    decision    TEXT    NOT NULL CHECK (decision IN ('agree', 'disagree')),
    note        TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS reviews_by_file ON reviews (file_sha256);
"""


class ReviewLogError(ValueError):
    """A review entry with a bad value (the message names the field and what is expected)."""


@dataclass(frozen=True)
class ReviewEntry:
    time: str            # UTC, ISO 8601, e.g. "2025-01-31T09:12:03.123456+00:00"
    file_sha256: str
    file_name: str       # base name only
    model: str           # "<name> <version>"
    probability: float
    threshold: float
    decision: str        # "agree" or "disagree"
    note: str = ""

    @property
    def flagged(self) -> bool:
        """Whether the model flagged the study at the threshold the reviewer saw."""
        return self.probability >= self.threshold


COLUMNS = tuple(f.name for f in fields(ReviewEntry))


def default_path() -> Path:
    return Path(os.environ.get(ENV_VAR) or DEFAULT_FILENAME)


def base_name(name: str) -> str:
    """The last component of a path or archive member label (``/`` or ``\\`` separated)."""
    return PurePosixPath(str(name).replace("\\", "/")).name or str(name)




class ReviewLog:
    """Append-only review decisions in SQLite at ``path`` (default: see :func:`default_path`)."""

    def __init__(self, path: Union[str, Path, None] = None) -> None:
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con, con:
            con.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def record(self, *, file_sha256: str, file_name: str, model: str, probability: float,
               threshold: float, decision: str, note: str = "",
               time: Optional[datetime] = None) -> ReviewEntry:
        """Validate and append one decision; return the entry as stored."""
        if decision not in DECISIONS:
            raise ReviewLogError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
        sha = str(file_sha256).lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ReviewLogError(f"file_sha256 must be 64 hex digits, got {file_sha256!r}")
        for label, value in (("probability", probability), ("threshold", threshold)):
            if not 0.0 <= float(value) <= 1.0:
                raise ReviewLogError(f"{label} must be in [0, 1], got {value}")
        note = str(note or "").strip()
        if len(note) > MAX_NOTE_CHARS:
            raise ReviewLogError(f"note is {len(note)} characters; at most {MAX_NOTE_CHARS} are kept")
        when = (time or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat()
        entry = ReviewEntry(when, sha, base_name(file_name), str(model), float(probability),
                            float(threshold), decision, note)
        with closing(self._connect()) as con, con:
            con.execute(f"INSERT INTO reviews ({', '.join(COLUMNS)}) VALUES "
                        f"({', '.join('?' * len(COLUMNS))})", astuple(entry))
        return entry

    def entries(self, file_sha256: Optional[str] = None) -> list[ReviewEntry]:
        """All decisions in the order they were made, or only those for one file."""
        query = f"SELECT {', '.join(COLUMNS)} FROM reviews"
        args: tuple = ()
        if file_sha256:
            query += " WHERE file_sha256 = ?"
            args = (str(file_sha256).lower(),)
        with closing(self._connect()) as con:
            rows = con.execute(query + " ORDER BY id", args).fetchall()
        return [ReviewEntry(*row) for row in rows]

    def __len__(self) -> int:
        with closing(self._connect()) as con:
            return int(con.execute("SELECT COUNT(*) FROM reviews").fetchone()[0])

    def to_csv(self) -> str:
        """The whole log as CSV text (a header row, then one row per decision)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        for e in self.entries():
            writer.writerow([_csv_safe(v) for v in astuple(e)])
        return buf.getvalue()

    def export_csv(self, path: Union[str, Path]) -> Path:
        out = Path(path)
        out.write_text(self.to_csv(), encoding="utf-8")
        return out
