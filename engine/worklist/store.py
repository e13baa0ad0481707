"""The worklist store: studies, scores and review status on disk, so a worklist outlives a browser tab.

One SQLite database (WAL journal, one transaction per change) and a content-addressed cache of the
files beside it, under one folder:

    <root>/store.sqlite3     worklists, studies, results per model, thumbnails, identifiers
    <root>/files/ab/abcdef…  each file's bytes once, named by its SHA-256
    <root>/spool/<pid>/…     the dashboard's uploads in flight (dashboard.upload_spool), deleted once stored

* **Worklists** are reached by a secret token (the dashboard puts it in its link): only the token's
  SHA-256 is stored, so reading the database does not give anyone the links.
* **Studies** are rows of a worklist (or of the shared inbox, ``worklist_id`` NULL, for studies that
  arrive from the network), in the order they were added. A study points at a file by its SHA-256;
  ``audit`` records its draw for the audit sample of unflagged studies (:mod:`engine.monitoring.audit`).
* **Results** are keyed by (file SHA-256, model key): a file is scored once per model, whoever uploads
  it; they carry the probability or the refusal, warnings and safe metadata (JSON).
* **Identifiers** (patient name, ID, birth date, accession number, institution) live in their own
  table, keyed by file, and are read only when asked for.
* **Size** is bounded (``max_bytes``, ``CXR_STORE_MAX_MB``, 2 GB by default). :meth:`Store.evict`
  removes whole files, least recently used first, but never a file still needed: one of a study not
  yet scored by the model (received, acknowledged, waiting), one of a study that is flagged and not
  yet reviewed, or one whose results wait in the outbox. When only those are left over the limit, it
  says so (the dashboard shows it) and nothing is removed silently. A study whose file was evicted
  keeps its row, score and decisions; only "open in Review" needs the file again, and says it was evicted.
* **Outbox**: results to send to a PACS (the receiver's ``--forward-to``), one row per study and
  destination, queued in the transaction that records the result and kept until sent:
  ``pending`` (not tried yet, or due again), ``sent``, ``failed`` (the last try failed; tried again at
  ``next_try``). ``last_error`` never holds an identifier (:mod:`engine.pacs.outbox` scrubs it).
* **Conflicts**: a study row's ``conflict`` says when another image arrived under the same SOP
  Instance UID with other content (the receiver keeps both rows); it is shown with the row's warnings.

The location is ``$CXR_STORE_DIR``, else ``$XDG_DATA_HOME/cxr-triage``, else
``~/.local/share/cxr-triage``: the user's data folder, never the working directory. Every call opens
its own connection, so one :class:`Store` serves every thread (Streamlit sessions).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import tempfile
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, Optional, Sequence

from engine.errors import StoreDamaged, StoreError  # noqa: F401  (part of this module's interface)
from engine.inputs import limits
from engine.image import PatientIdentifiers, StudyMetadata
from engine.settings import settings
from engine.study import Result

DB_NAME = "store.sqlite3"
REVIEW_STATUSES = ("unreviewed", "agreed", "disagreed")
OUTBOX_STATES = ("pending", "sent", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS worklists (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash  TEXT    NOT NULL UNIQUE,
    reviewer    TEXT    NOT NULL DEFAULT '',
    created     TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    sha256      TEXT    PRIMARY KEY,
    size        INTEGER NOT NULL,
    on_disk     INTEGER NOT NULL DEFAULT 1,
    last_used   TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS studies (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    worklist_id INTEGER REFERENCES worklists(id) ON DELETE CASCADE,   -- NULL: the shared inbox
    name        TEXT    NOT NULL,
    sha256      TEXT    NOT NULL DEFAULT '',       -- '' when the file could not even be read
    source      TEXT    NOT NULL DEFAULT 'upload',
    read_error  TEXT    NOT NULL DEFAULT '',       -- a refusal before decoding (limits, ZIP errors)
    added       TEXT    NOT NULL,
    archived    TEXT,                              -- NULL: in the worklist; else when "Clear" archived it
    archive_batch TEXT,                            -- the Clear that archived it (what Undo restores)
    audit       INTEGER,                           -- NULL: not drawn; 1: drawn for the audit sample; 0: not drawn
    conflict    TEXT    NOT NULL DEFAULT ''        -- another image with the same SOP Instance UID, other content
);
CREATE INDEX IF NOT EXISTS studies_by_worklist ON studies (worklist_id, id);
CREATE INDEX IF NOT EXISTS studies_by_file ON studies (sha256);
CREATE INDEX IF NOT EXISTS studies_by_added ON studies (added);
CREATE TABLE IF NOT EXISTS results (
    sha256      TEXT    NOT NULL,
    model_key   TEXT    NOT NULL,
    status      TEXT    NOT NULL,                  -- 'ok' or 'error'
    probability REAL,
    message     TEXT    NOT NULL DEFAULT '',
    warnings    TEXT    NOT NULL DEFAULT '[]',
    metadata    TEXT    NOT NULL DEFAULT '{}',
    scored      TEXT    NOT NULL,
    PRIMARY KEY (sha256, model_key)
);
CREATE TABLE IF NOT EXISTS thumbnails (
    sha256      TEXT    PRIMARY KEY,
    data_uri    TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS identifiers (
    sha256           TEXT PRIMARY KEY,
    patient_name     TEXT,
    patient_id       TEXT,
    birth_date       TEXT,
    accession_number TEXT,
    institution      TEXT
);
CREATE TABLE IF NOT EXISTS decisions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id    INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
    reviewer    TEXT    NOT NULL DEFAULT '',
    decision    TEXT    NOT NULL CHECK (decision IN ('agree', 'disagree')),
    note        TEXT    NOT NULL DEFAULT '',
    probability REAL    NOT NULL,
    threshold   REAL    NOT NULL,
    model       TEXT    NOT NULL,
    time        TEXT    NOT NULL,
    replaces    INTEGER                            -- the earlier decision this one changed (NULL: the first)
);
CREATE INDEX IF NOT EXISTS decisions_by_study ON decisions (study_id, id);
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id    INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
    sha256      TEXT    NOT NULL,
    destination TEXT    NOT NULL,                  -- AET@HOST:PORT or a DICOMweb root
    state       TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT    NOT NULL DEFAULT '',       -- never an identifier
    next_try    TEXT    NOT NULL,
    created     TEXT    NOT NULL,
    sent        TEXT,
    UNIQUE (study_id, destination)
);
CREATE INDEX IF NOT EXISTS outbox_by_due ON outbox (destination, state, next_try);
"""


# Columns added after the first release, with their definitions: added in place to an older database.
_ADDED_COLUMNS = {"studies": {"archived": "TEXT", "archive_batch": "TEXT", "audit": "INTEGER",
                              "conflict": "TEXT NOT NULL DEFAULT ''"},
                  "decisions": {"replaces": "INTEGER"}}


class DecisionExists(StoreError):
    """The study already has a decision: changing it must be asked for explicitly."""

    def __init__(self, study_id: int, earlier: dict) -> None:
        self.study_id, self.earlier = study_id, earlier
        who = earlier.get("reviewer") or "an unnamed reviewer"
        super().__init__(f"this study already has a decision ({earlier.get('decision')} by {who}); "
                         "use 'Change my decision' to change it")


@dataclass(frozen=True)
class ArchiveReceipt:
    """What one "Clear" archived: ``batch`` names it for :meth:`Store.restore_studies`."""

    batch: str
    count: int


@dataclass(frozen=True)
class Worklist:
    id: int
    reviewer: str = ""


@dataclass(frozen=True)
class StudyRow:
    """One study as the worklist, Review, and a scored labelled set show it: the one record of a study
    once it is in the store (no identifiers; those are read apart). ``id`` is 0 for a labelled set's
    file, which belongs to no worklist."""

    id: int
    name: str
    sha256: str
    source: str
    added: str
    inbox: bool
    read_error: str = ""
    result: Optional[Result] = None               # None: not yet scored with this model
    thumbnail: str = ""
    review_status: str = "unreviewed"
    on_disk: bool = True
    audit: bool = False                           # drawn into the audit sample (engine.monitoring.audit)
    conflict: str = ""                            # another image arrived under the same SOP Instance UID

    @property
    def status(self) -> str:
        """"ok", "error" (unreadable), "refused" (over a limit) or "pending" (not yet scored)."""
        if self.read_error:
            return "refused" if "limit" in self.read_error else "error"
        if self.result is None:
            return "pending"
        return "ok" if self.result.status == "ok" else "error"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def probability(self) -> Optional[float]:
        return self.result.probability if self.ok else None

    @property
    def message(self) -> str:
        """Why the study has no probability ("" when it has one)."""
        if self.read_error:
            return self.read_error
        if self.result is not None and self.result.status != "ok":
            return f"{self.name}: {self.result.message}"
        return ""

    @property
    def warnings(self) -> tuple[str, ...]:
        """The result's warnings (when scored), after the row's conflict warning (whatever its status)."""
        return ((self.conflict,) if self.conflict else ()) + (self.result.warnings if self.ok else ())

    @property
    def metadata(self) -> StudyMetadata:
        return self.result.metadata if self.ok else StudyMetadata()



@dataclass(frozen=True)
class EvictionReport:
    removed_files: int
    freed_bytes: int
    used_bytes: int
    max_bytes: int
    blocked_by_unreviewed: int                    # flagged, unreviewed files that were kept over the limit
    blocked_by_unscored: int = 0                  # files not yet scored (or results not yet sent), kept

    @property
    def over_limit(self) -> bool:
        return self.used_bytes > self.max_bytes

    def notice(self) -> str:
        """What keeps the store over its limit, in words ("" when it is not over)."""
        if not self.over_limit:
            return ""
        kept = []
        if self.blocked_by_unreviewed:
            kept.append(f"{self.blocked_by_unreviewed} flagged studies are not yet reviewed")
        if self.blocked_by_unscored:
            kept.append(f"{self.blocked_by_unscored} studies are not yet scored (or their results not yet sent)")
        return (f"The worklist store is over its size limit ({limits.fmt_mb(self.used_bytes)} of "
                f"{limits.fmt_mb(self.max_bytes)}): {' and '.join(kept) or 'nothing more can be removed'}, "
                "and their files are kept until then. Review them, or ask your administrator to raise the "
                "store's size limit (CXR_STORE_MAX_MB).")


@dataclass(frozen=True)
class OutboxEntry:
    """One study's results waiting for (or sent to) one destination."""

    id: int
    study_id: int
    sha256: str
    destination: str
    state: str                                    # "pending", "sent" or "failed"
    attempts: int
    last_error: str
    next_try: str
    created: str
    sent: Optional[str]


def _add_missing_columns(con: sqlite3.Connection) -> None:
    """Bring a database made by an older release up to the schema (new columns only, never a rewrite)."""
    for table, columns in _ADDED_COLUMNS.items():
        have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
        for name, decl in columns.items():
            if name not in have:
                con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
    con.commit()


def _damaged(db_path: Path, problem: str) -> str:
    return (f"The worklist store's database {db_path} {problem}. Nothing was opened, so no worklist is shown "
            "empty by mistake. Restore it from a backup (python -m engine.cli.store backup makes one), or "
            "start a new store explicitly: python -m engine.cli.store new --store " + str(db_path.parent) +
            " (the damaged file is kept beside it).")


def check_database(db_path: Path, files_dir: Path) -> None:
    """Refuse a store whose database is empty, or missing while cached files say it existed
    (:class:`StoreDamaged`); a new, empty folder is a new store."""
    if db_path.exists():
        if db_path.stat().st_size == 0:
            raise StoreDamaged(_damaged(db_path, "is empty (0 bytes)"))
        return
    if files_dir.is_dir() and any(files_dir.iterdir()):
        raise StoreDamaged(_damaged(db_path, f"is missing, while {files_dir} holds cached files"))


def start_new_database(root: Path) -> Optional[Path]:
    """Move a damaged database aside (``store.sqlite3.damaged-<time>``, with its WAL files) so that the
    next :class:`Store` on ``root`` starts a new, empty one; return where it went (None: nothing there)."""
    db_path = root / DB_NAME
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kept = None
    for suffix in ("", "-wal", "-shm"):
        path = root / (DB_NAME + suffix)
        if path.exists():
            target = root / f"{DB_NAME}{suffix}.damaged-{stamp}"
            path.rename(target)
            kept = kept or target
    with closing(sqlite3.connect(db_path)) as con:      # the new, empty database, started on purpose
        con.executescript(_SCHEMA)
    return kept


def default_root() -> Path:
    return settings().store_root


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _at(delay_s: float = 0.0) -> str:
    """UTC time ``delay_s`` from now, always with microseconds (so that the text sorts as the time does)."""
    return (datetime.now(timezone.utc) + timedelta(seconds=delay_s)).isoformat(timespec="microseconds")


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Store:
    """Worklists, studies, results and cached files under one folder (see the module docstring)."""

    def __init__(self, root: Optional[Path | str] = None, max_bytes: Optional[int] = None) -> None:
        self.root = Path(root) if root else default_root()
        self.max_bytes = max_bytes or settings().store_max_mb * limits.MB
        self.db_path = self.root / DB_NAME
        check_database(self.db_path, self.root / "files")
        (self.root / "files").mkdir(parents=True, exist_ok=True)
        try:
            with closing(self._connect()) as con:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(_SCHEMA)
                _add_missing_columns(con)
                verdict = con.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreDamaged(_damaged(self.db_path, f"is not a readable SQLite database ({exc})")) from None
        if verdict != "ok":
            raise StoreDamaged(_damaged(self.db_path, f"fails SQLite's integrity check ({verdict})"))

    def backup(self, destination: Path | str) -> Path:
        """A consistent copy of the database, taken with SQLite's online backup while the store is in
        use (the file cache is content-addressed: copy ``files/`` as it is, before or after)."""
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as src, closing(sqlite3.connect(destination)) as dst:
            src.backup(dst)
        return destination

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db_path, timeout=30)
        con.execute("PRAGMA foreign_keys=ON")
        return con

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction: committed when the block ends, rolled back on any exception."""
        with closing(self._connect()) as con, con:
            yield con

    # -------------------------------------------------------------------------------- worklists

    def create_worklist(self, reviewer: str = "") -> tuple[str, Worklist]:
        """A new worklist and the secret token that reaches it (shown once, never stored)."""
        token = secrets.token_urlsafe(18)
        while token.startswith("-"):          # a command line would read it as an option (--worklist -x...)
            token = secrets.token_urlsafe(18)
        with self._tx() as con:
            cur = con.execute("INSERT INTO worklists (token_hash, reviewer, created) VALUES (?, ?, ?)",
                              (_token_hash(token), reviewer.strip()[:80], _now()))
        return token, Worklist(int(cur.lastrowid), reviewer.strip()[:80])

    def worklist(self, token: str) -> Optional[Worklist]:
        if not token:
            return None
        with closing(self._connect()) as con:
            row = con.execute("SELECT id, reviewer FROM worklists WHERE token_hash = ?",
                              (_token_hash(token),)).fetchone()
        return Worklist(int(row[0]), row[1]) if row else None

    def set_reviewer(self, worklist: Worklist, reviewer: str) -> Worklist:
        name = reviewer.strip()[:80]
        with self._tx() as con:
            con.execute("UPDATE worklists SET reviewer = ? WHERE id = ?", (name, worklist.id))
        return Worklist(worklist.id, name)

    # -------------------------------------------------------------------------------- files

    def _file_path(self, sha256: str) -> Path:
        return self.root / "files" / sha256[:2] / sha256

    def put_file(self, data: bytes, sha256: Optional[str] = None) -> str:
        """Keep ``data`` once (content-addressed, written atomically); return its SHA-256."""
        sha = sha256 or hashlib.sha256(data).hexdigest()
        path = self._file_path(sha)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        with self._tx() as con:
            con.execute("INSERT INTO files (sha256, size, on_disk, last_used) VALUES (?, ?, 1, ?) "
                        "ON CONFLICT(sha256) DO UPDATE SET on_disk = 1, last_used = excluded.last_used",
                        (sha, len(data), _now()))
        return sha

    def read_file(self, sha256: str) -> bytes:
        """The cached bytes of a file; :class:`StoreError` when it was evicted or never kept."""
        try:
            data = self._file_path(sha256).read_bytes()
        except FileNotFoundError:
            raise StoreError("the file is no longer in the local cache (evicted to keep the store under "
                             "its size limit): upload it again to review it") from None
        with self._tx() as con:
            con.execute("UPDATE files SET last_used = ? WHERE sha256 = ?", (_now(), sha256))
        return data

    def has_file(self, sha256: str) -> bool:
        return self._file_path(sha256).exists()

    # -------------------------------------------------------------------------------- studies

    def add_study(self, worklist: Optional[Worklist], name: str, sha256: str = "", *, source: str = "upload",
                  read_error: str = "", conflict: str = "") -> int:
        """A study row in ``worklist`` (None: the shared inbox); return its id."""
        with self._tx() as con:
            cur = con.execute("INSERT INTO studies (worklist_id, name, sha256, source, read_error, added, conflict) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?)",
                              (worklist.id if worklist else None, name, sha256, source, read_error, _now(),
                               conflict))
        return int(cur.lastrowid)

    def study_id(self, worklist: Optional[Worklist], name: str, sha256: str) -> Optional[int]:
        """The newest row of the worklist (None: the shared inbox) listing this file under this name."""
        where = "worklist_id = ?" if worklist is not None else "worklist_id IS NULL"
        args = (worklist.id,) if worklist is not None else ()
        with closing(self._connect()) as con:
            row = con.execute(f"SELECT id FROM studies WHERE {where} AND name = ? AND sha256 = ? "
                              "AND archived IS NULL ORDER BY id DESC LIMIT 1", (*args, name, sha256)).fetchone()
        return int(row[0]) if row else None

    def has_study(self, worklist: Optional[Worklist], name: str, sha256: str) -> bool:
        """Whether the worklist (None: the shared inbox) already lists this file under this name
        (an upload repeated, an image sent twice)."""
        return self.study_id(worklist, name, sha256) is not None

    def inbox_files_named(self, name: str) -> list[tuple[int, str]]:
        """(row id, file SHA-256) of the inbox rows listed under ``name``, oldest first."""
        with closing(self._connect()) as con:
            return [(int(i), sha) for i, sha in con.execute(
                "SELECT id, sha256 FROM studies WHERE worklist_id IS NULL AND name = ? AND sha256 != '' "
                "AND archived IS NULL ORDER BY id", (name,))]

    def add_conflict(self, study_id: int, text: str) -> None:
        """Add ``text`` to a study row's conflict warning."""
        with self._tx() as con:
            con.execute("UPDATE studies SET conflict = CASE WHEN conflict = '' THEN ? ELSE conflict || ' | ' || ? "
                        "END WHERE id = ?", (text, text, int(study_id)))

    def count_studies(self, worklist: Worklist) -> int:
        with closing(self._connect()) as con:
            return int(con.execute("SELECT COUNT(*) FROM studies WHERE worklist_id = ? AND archived IS NULL",
                                   (worklist.id,)).fetchone()[0])

    def remove_studies(self, worklist: Worklist, study_ids: Optional[Sequence[int]] = None) -> int:
        """Remove some (or all) of a worklist's studies, decisions included; return how many."""
        with self._tx() as con:
            if study_ids is None:
                cur = con.execute("DELETE FROM studies WHERE worklist_id = ?", (worklist.id,))
            else:
                cur = con.executemany("DELETE FROM studies WHERE worklist_id = ? AND id = ?",
                                      [(worklist.id, int(i)) for i in study_ids])
        return int(cur.rowcount)

    def archive_studies(self, worklist: Worklist, study_ids: Optional[Sequence[int]] = None) -> ArchiveReceipt:
        """Take some (or all) of a worklist's studies out of it without deleting anything: rows, scores and
        decisions stay, marked archived under one batch that :meth:`restore_studies` brings back."""
        batch = secrets.token_hex(8)
        now = _now()
        with self._tx() as con:
            if study_ids is None:
                cur = con.execute("UPDATE studies SET archived = ?, archive_batch = ? "
                                  "WHERE worklist_id = ? AND archived IS NULL", (now, batch, worklist.id))
            else:
                cur = con.executemany("UPDATE studies SET archived = ?, archive_batch = ? "
                                      "WHERE worklist_id = ? AND id = ? AND archived IS NULL",
                                      [(now, batch, worklist.id, int(i)) for i in study_ids])
        return ArchiveReceipt(batch, int(cur.rowcount))

    def restore_studies(self, worklist: Worklist, batch: str) -> int:
        """Undo one :meth:`archive_studies`: its studies return to the worklist, decisions included."""
        with self._tx() as con:
            cur = con.execute("UPDATE studies SET archived = NULL, archive_batch = NULL "
                              "WHERE worklist_id = ? AND archive_batch = ?", (worklist.id, batch))
        return int(cur.rowcount)

    def studies(self, worklist: Optional[Worklist], model_key: str, *, include_inbox: bool = True
                ) -> list[StudyRow]:
        """The worklist's studies (and the shared inbox's), in the order they were added."""
        where = "(s.worklist_id = ?" + (" OR s.worklist_id IS NULL)" if include_inbox else ")") + \
            " AND s.archived IS NULL"
        args: tuple = (worklist.id if worklist else -1,)
        query = f"""
            SELECT s.id, s.name, s.sha256, s.source, s.added, s.worklist_id IS NULL, s.read_error,
                   r.status, r.probability, r.message, r.warnings, r.metadata, t.data_uri,
                   (SELECT d.decision FROM decisions d WHERE d.study_id = s.id ORDER BY d.id DESC LIMIT 1),
                   COALESCE(f.on_disk, 0), COALESCE(s.audit, 0), s.conflict
            FROM studies s
            LEFT JOIN results r ON r.sha256 = s.sha256 AND r.model_key = ?
            LEFT JOIN thumbnails t ON t.sha256 = s.sha256
            LEFT JOIN files f ON f.sha256 = s.sha256
            WHERE {where} ORDER BY s.id"""
        with closing(self._connect()) as con:
            rows = con.execute(query, (model_key, *args)).fetchall()
        out = []
        for (sid, name, sha, source, added, inbox, read_error, status, prob, message, warnings, metadata,
             thumb, decision, on_disk, audit, conflict) in rows:
            result = None
            if status is not None:
                result = Result(status, prob, message, tuple(json.loads(warnings)),
                                _metadata_from_json(metadata))
            review = {"agree": "agreed", "disagree": "disagreed"}.get(decision or "", "unreviewed")
            out.append(StudyRow(int(sid), name, sha, source, added, bool(inbox), read_error, result,
                                thumb or "", review, bool(on_disk), bool(audit), conflict or ""))
        return out

    def version(self, worklist: Optional[Worklist]) -> tuple:
        """Changes whenever what :meth:`studies` returns for this worklist could change (cheap to ask)."""
        wid = worklist.id if worklist else -1
        with closing(self._connect()) as con:
            return tuple(con.execute("""
                SELECT (SELECT COUNT(*) || ':' || COALESCE(MAX(id), 0) || ':' || COALESCE(SUM(audit), 0)
                        FROM studies WHERE (worklist_id = ? OR worklist_id IS NULL) AND archived IS NULL),
                       (SELECT COALESCE(MAX(id), 0) FROM decisions),
                       (SELECT COUNT(*) FROM results),
                       (SELECT COALESCE(SUM(on_disk), 0) FROM files)""", (wid,)).fetchone())

    # -------------------------------------------------------------------------------- results

    def result(self, sha256: str, model_key: str) -> Optional[Result]:
        with closing(self._connect()) as con:
            row = con.execute("SELECT status, probability, message, warnings, metadata FROM results "
                              "WHERE sha256 = ? AND model_key = ?", (sha256, model_key)).fetchone()
        if row is None:
            return None
        return Result(row[0], row[1], row[2], tuple(json.loads(row[3])), _metadata_from_json(row[4]))

    def put_result(self, sha256: str, model_key: str, result: Result, *, thumbnail: str = "",
                   identifiers: Optional[PatientIdentifiers] = None,
                   outbox: Sequence[tuple[int, str]] = ()) -> None:
        """Keep one file's result for one model, its thumbnail and identifiers (apart); ``outbox``:
        (study id, destination) pairs queued for sending in the same transaction (once per pair)."""
        with self._tx() as con:
            now = _at()
            con.executemany("INSERT OR IGNORE INTO outbox (study_id, sha256, destination, next_try, created) "
                            "VALUES (?, ?, ?, ?, ?)", [(int(sid), sha256, dest, now, now) for sid, dest in outbox])
            con.execute("INSERT OR REPLACE INTO results (sha256, model_key, status, probability, message, "
                        "warnings, metadata, scored) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (sha256, model_key, result.status, result.probability, result.message,
                         json.dumps(list(result.warnings)), json.dumps(result.metadata.as_dict()), _now()))
            if thumbnail:
                con.execute("INSERT OR REPLACE INTO thumbnails (sha256, data_uri) VALUES (?, ?)",
                            (sha256, thumbnail))
            ids = identifiers.as_dict() if identifiers is not None else {}
            if ids:
                con.execute("INSERT OR REPLACE INTO identifiers (sha256, patient_name, patient_id, birth_date, "
                            "accession_number, institution) VALUES (?, ?, ?, ?, ?, ?)",
                            (sha256, ids.get("patient_name"), ids.get("patient_id"), ids.get("birth_date"),
                             ids.get("accession_number"), ids.get("institution")))

    def identifiers(self, sha256: str) -> PatientIdentifiers:
        """Patient identifiers of a file: read only when a user asks for them."""
        with closing(self._connect()) as con:
            row = con.execute("SELECT patient_name, patient_id, birth_date, accession_number, institution "
                              "FROM identifiers WHERE sha256 = ?", (sha256,)).fetchone()
        return PatientIdentifiers(*row) if row else PatientIdentifiers()

    # -------------------------------------------------------------------------------- decisions

    def record_decision(self, study_id: int, *, reviewer: str, decision: str, probability: float,
                        threshold: float, model: str, note: str = "", change: bool = False) -> int:
        """Record a reader's decision on one study; return its id.

        A study's first decision is recorded as is. Once it has one, another is recorded only with
        ``change=True`` (the reader asked to change it): it is then kept as a new row that names the one
        it replaces, so the history stays. Without it, :class:`DecisionExists` is raised and nothing is
        written: a stray key press can never overwrite a decision."""
        if decision not in ("agree", "disagree"):
            raise StoreError(f"decision must be 'agree' or 'disagree', got {decision!r}")
        with self._tx() as con:
            last = con.execute("SELECT id, decision, reviewer, time FROM decisions WHERE study_id = ? "
                               "ORDER BY id DESC LIMIT 1", (int(study_id),)).fetchone()
            if last is not None and not change:
                raise DecisionExists(int(study_id), {"decision": last[1], "reviewer": last[2], "time": last[3]})
            cur = con.execute("INSERT INTO decisions (study_id, reviewer, decision, note, probability, threshold, "
                              "model, time, replaces) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              (int(study_id), reviewer.strip()[:80], decision, str(note or "").strip()[:2000],
                               float(probability), float(threshold), model, _now(),
                               int(last[0]) if last is not None else None))
        return int(cur.lastrowid)

    def decisions(self, study_id: int) -> list[dict]:
        """A study's decisions, oldest first; ``replaces`` names the decision a change replaced and
        ``changed_later`` says whether a later one replaced this."""
        with closing(self._connect()) as con:
            rows = con.execute("SELECT d.id, d.time, d.reviewer, d.decision, d.note, d.probability, d.threshold, "
                               "d.model, d.replaces, EXISTS (SELECT 1 FROM decisions l WHERE l.replaces = d.id) "
                               "FROM decisions d WHERE d.study_id = ? ORDER BY d.id", (int(study_id),)).fetchall()
        keys = ("id", "time", "reviewer", "decision", "note", "probability", "threshold", "model", "replaces",
                "changed_later")
        return [dict(zip(keys, r[:-1] + (bool(r[-1]),))) for r in rows]

    def worklist_decisions(self, worklist: Worklist, model_key: Optional[str] = None) -> list[dict]:
        """The decision in force on each of the worklist's studies (a changed one counts once, as changed),
        oldest first: study id, file name, decision, the probability and threshold the reviewer saw
        (``model_key``: only decisions on that model's scores would need re-scoring, so the recorded
        probability is used as it was), the file's SHA-256, the reviewer and the time (ISO 8601)."""
        with closing(self._connect()) as con:
            rows = con.execute("SELECT d.study_id, s.name, d.decision, d.probability, d.threshold, d.model, "
                               "s.sha256, d.reviewer, d.time "
                               "FROM decisions d JOIN studies s ON s.id = d.study_id "
                               "WHERE (s.worklist_id = ? OR s.worklist_id IS NULL) AND s.archived IS NULL "
                               "AND NOT EXISTS (SELECT 1 FROM decisions l WHERE l.replaces = d.id) ORDER BY d.id",
                               (worklist.id,)).fetchall()
        keys = ("study_id", "name", "decision", "probability", "threshold", "model", "sha256", "reviewer", "time")
        return [dict(zip(keys, r)) for r in rows]

    def decisions_csv(self, worklist: Optional[Worklist]) -> str:
        """Decisions as CSV (one worklist's, or every worklist's with None): no patient identifier,
        the file by its content hash and base name, times in UTC (ISO 8601 with the offset), cells defused
        for spreadsheets; ``status`` marks a decision a later change replaced."""
        from pathlib import PurePosixPath
        from engine.worklist.csvsafe import rows_csv
        columns = ["time", "reviewer", "file_name", "file_sha256", "model", "probability", "threshold",
                   "decision", "note", "status"]
        query = ("SELECT d.time, d.reviewer, s.name, s.sha256, d.model, d.probability, d.threshold, d.decision, "
                 "d.note, CASE WHEN EXISTS (SELECT 1 FROM decisions l WHERE l.replaces = d.id) THEN 'changed later' "
                 "WHEN d.replaces IS NOT NULL THEN 'current (changed)' ELSE 'current' END "
                 "FROM decisions d JOIN studies s ON s.id = d.study_id")
        args: tuple = ()
        if worklist is not None:
            query += " WHERE s.worklist_id = ?"
            args = (worklist.id,)
        with closing(self._connect()) as con:
            rows = con.execute(query + " ORDER BY d.id", args).fetchall()
        records = []
        for row in rows:
            record = dict(zip(columns, row))
            record["file_name"] = PurePosixPath(str(record["file_name"]).replace("\\", "/")).name
            records.append(record)
        return rows_csv(columns, records)

    # -------------------------------------------------------------------------------- monitoring

    def first_added(self) -> Optional[str]:
        """When the store's first study was added (None: no study yet)."""
        with closing(self._connect()) as con:
            return con.execute("SELECT MIN(added) FROM studies").fetchone()[0]

    def monitored_studies(self, model_key: str, since: str, until: Optional[str] = None) -> list[StudyRow]:
        """Every study added at or after ``since`` (ISO time; before ``until`` if given), in every worklist
        and the inbox, archived ones included, oldest first, with its result for ``model_key`` and no
        thumbnail: what :mod:`engine.monitoring` reads."""
        query = """
            SELECT s.id, s.name, s.sha256, s.source, s.added, s.worklist_id IS NULL, s.read_error,
                   r.status, r.probability, r.message, r.warnings, r.metadata, COALESCE(s.audit, 0),
                   (SELECT d.decision FROM decisions d WHERE d.study_id = s.id ORDER BY d.id DESC LIMIT 1)
            FROM studies s LEFT JOIN results r ON r.sha256 = s.sha256 AND r.model_key = ?
            WHERE s.added >= ? AND s.added < ? ORDER BY s.id"""
        with closing(self._connect()) as con:
            rows = con.execute(query, (model_key, since, until or "9999")).fetchall()
        out = []
        for (sid, name, sha, source, added, inbox, read_error, status, prob, message, warnings, metadata,
             audit, decision) in rows:
            result = None if status is None else Result(status, prob, message, tuple(json.loads(warnings)),
                                                        _metadata_from_json(metadata))
            review = {"agree": "agreed", "disagree": "disagreed"}.get(decision or "", "unreviewed")
            out.append(StudyRow(int(sid), name, sha, source, added, bool(inbox), read_error, result, "", review,
                                audit=bool(audit)))
        return out

    def set_audit(self, marks: dict[int, bool]) -> int:
        """Record the audit draw of studies (True: in the audit sample); a study already drawn keeps its
        first draw. Returns how many were recorded now."""
        with self._tx() as con:
            cur = con.executemany("UPDATE studies SET audit = ? WHERE id = ? AND audit IS NULL",
                                  [(int(bool(v)), int(k)) for k, v in marks.items()])
        return int(cur.rowcount)

    def monitored_decisions(self, model_key: str, since: str, until: Optional[str] = None) -> list[dict]:
        """The decision in force on each study, made at or after ``since`` (before ``until``), oldest first:
        study id, time, reviewer, decision, the probability and threshold the reader saw, the model, whether
        the study is in the audit sample, and its safe metadata under ``model_key`` (no file name)."""
        query = """
            SELECT d.study_id, d.time, d.reviewer, d.decision, d.probability, d.threshold, d.model,
                   COALESCE(s.audit, 0), r.metadata
            FROM decisions d JOIN studies s ON s.id = d.study_id
            LEFT JOIN results r ON r.sha256 = s.sha256 AND r.model_key = ?
            WHERE d.time >= ? AND d.time < ?
              AND NOT EXISTS (SELECT 1 FROM decisions l WHERE l.replaces = d.id) ORDER BY d.id"""
        with closing(self._connect()) as con:
            rows = con.execute(query, (model_key, since, until or "9999")).fetchall()
        keys = ("study_id", "time", "reviewer", "decision", "probability", "threshold", "model", "audit")
        return [{**dict(zip(keys, r[:8])), "audit": bool(r[7]), "metadata": _metadata_from_json(r[8] or "{}")}
                for r in rows]

    # -------------------------------------------------------------------------------- size

    def used_bytes(self) -> int:
        with closing(self._connect()) as con:
            return int(con.execute("SELECT COALESCE(SUM(size), 0) FROM files WHERE on_disk = 1").fetchone()[0])

    def _protected(self, con: sqlite3.Connection, protect_threshold: float, model_key: str
                   ) -> tuple[set[str], set[str]]:
        """(flagged and unreviewed, still needed) files: the second are those of studies with no result
        for ``model_key`` yet and those whose results wait in the outbox."""
        flagged = {r[0] for r in con.execute("""
            SELECT s.sha256 FROM studies s JOIN results r ON r.sha256 = s.sha256 AND r.model_key = ?
            WHERE r.status = 'ok' AND r.probability >= ?
              AND NOT EXISTS (SELECT 1 FROM decisions d WHERE d.study_id = s.id)""",
            (model_key, float(protect_threshold)))}
        needed = {r[0] for r in con.execute("""
            SELECT s.sha256 FROM studies s
            WHERE s.sha256 != '' AND s.archived IS NULL AND s.read_error = ''
              AND NOT EXISTS (SELECT 1 FROM results r WHERE r.sha256 = s.sha256 AND r.model_key = ?)
            UNION SELECT sha256 FROM outbox WHERE state != 'sent'""", (model_key,))}
        return flagged, needed - flagged

    def evict(self, protect_threshold: float, model_key: str) -> EvictionReport:
        """Bring the cache under ``max_bytes``: least recently used files first, never a file of a study
        not yet scored by ``model_key``, nor of one flagged at ``protect_threshold`` and not yet reviewed,
        nor one whose results wait in the outbox."""
        used = self.used_bytes()
        if used <= self.max_bytes:
            return EvictionReport(0, 0, used, self.max_bytes, 0)
        with closing(self._connect()) as con:
            flagged, needed = self._protected(con, protect_threshold, model_key)
            candidates = con.execute("SELECT sha256, size FROM files WHERE on_disk = 1 ORDER BY last_used, sha256"
                                     ).fetchall()
        removed = freed = 0
        for sha, size in candidates:
            if used - freed <= self.max_bytes:
                break
            if sha in flagged or sha in needed:
                continue
            self._file_path(sha).unlink(missing_ok=True)
            with self._tx() as con:
                con.execute("UPDATE files SET on_disk = 0 WHERE sha256 = ?", (sha,))
            removed += 1
            freed += int(size)
        if used - freed <= self.max_bytes:
            return EvictionReport(removed, freed, used - freed, self.max_bytes, 0)
        on_disk = {sha for sha, _ in candidates}
        return EvictionReport(removed, freed, used - freed, self.max_bytes, len(flagged & on_disk),
                              len(needed & on_disk))

    # -------------------------------------------------------------------------------- outbox

    _OUTBOX_COLUMNS = "id, study_id, sha256, destination, state, attempts, last_error, next_try, created, sent"

    def outbox(self, states: Sequence[str] = OUTBOX_STATES, limit: int = 1000) -> list[OutboxEntry]:
        """Outbox rows in these states, newest first."""
        marks = ", ".join("?" * len(states))
        with closing(self._connect()) as con:
            rows = con.execute(f"SELECT {self._OUTBOX_COLUMNS} FROM outbox WHERE state IN ({marks}) "
                               "ORDER BY id DESC LIMIT ?", (*states, int(limit))).fetchall()
        return [OutboxEntry(*r) for r in rows]

    def outbox_due(self, destination: str, *, sha256: str = "", limit: int = 100) -> list[OutboxEntry]:
        """Unsent rows for ``destination`` whose next try is due (only ``sha256``'s if given), oldest due first."""
        query = (f"SELECT {self._OUTBOX_COLUMNS} FROM outbox WHERE destination = ? AND state != 'sent' "
                 "AND next_try <= ?" + (" AND sha256 = ?" if sha256 else "") + " ORDER BY next_try, id LIMIT ?")
        args = (destination, _at(), *((sha256,) if sha256 else ()), int(limit))
        with closing(self._connect()) as con:
            return [OutboxEntry(*r) for r in con.execute(query, args).fetchall()]

    def outbox_sent(self, entry_id: int) -> None:
        with self._tx() as con:
            con.execute("UPDATE outbox SET state = 'sent', attempts = attempts + 1, last_error = '', sent = ? "
                        "WHERE id = ?", (_at(), int(entry_id)))

    def outbox_failed(self, entry_id: int, error: str, retry_in_s: float) -> None:
        """Record a failed try (``error`` already free of identifiers) and when to try again."""
        with self._tx() as con:
            con.execute("UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ?, next_try = ? "
                        "WHERE id = ? AND state != 'sent'", (error[:500], _at(retry_in_s), int(entry_id)))

    def outbox_retry(self, destination: str = "") -> int:
        """Make every unsent row (for ``destination``, or all) due now; returns how many."""
        where = "state != 'sent'" + (" AND destination = ?" if destination else "")
        with self._tx() as con:
            cur = con.execute(f"UPDATE outbox SET next_try = ? WHERE {where}",
                              (_at(), *((destination,) if destination else ())))
        return int(cur.rowcount)

    def outbox_counts(self) -> dict[str, int]:
        """Rows per state (every state present, 0 when none)."""
        with closing(self._connect()) as con:
            found = dict(con.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
        return {state: int(found.get(state, 0)) for state in OUTBOX_STATES}

def _metadata_from_json(text: str) -> StudyMetadata:
    data = json.loads(text or "{}")
    if "pixel_spacing" in data and data["pixel_spacing"] is not None:
        data["pixel_spacing"] = tuple(data["pixel_spacing"])
    known = set(StudyMetadata.__dataclass_fields__)
    return StudyMetadata(**{k: v for k, v in data.items() if k in known})
