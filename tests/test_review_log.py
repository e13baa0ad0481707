"""engine.review_log: the reviewers' SQLite log (write, read back, survive a reopen, export)."""

from __future__ import annotations

import csv
import io
import sqlite3
import threading
from datetime import datetime, timezone

import pytest

from engine.review_log import COLUMNS, ReviewLog, ReviewLogError, base_name, default_path

SHA = "ab" * 32


def _record(log: ReviewLog, **kw):
    args = dict(file_sha256=SHA, file_name="batch.zip/DOE^JOHN/img.dcm", model="resnet18_cbam 1.0.0",
                probability=0.81, threshold=0.5, decision="agree", note="")
    return log.record(**(args | kw))


def test_record_and_read_back_survives_reopen(tmp_path):
    path = tmp_path / "log.sqlite3"
    entry = _record(ReviewLog(path), note="consolidation right lower lobe",
                    time=datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    again = ReviewLog(path).entries()          # a new object, as after a restart
    assert again == [entry]
    assert entry.time == "2025-01-02T03:04:05+00:00"
    assert entry.file_name == "img.dcm"         # base name only: no folder, no archive path
    assert entry.flagged
    assert len(ReviewLog(path)) == 1


def test_columns_hold_no_patient_identifiers(tmp_path):
    path = tmp_path / "log.sqlite3"
    _record(ReviewLog(path))
    with sqlite3.connect(path) as con:
        cols = [r[1] for r in con.execute("PRAGMA table_info(reviews)")]
        row = con.execute("SELECT * FROM reviews").fetchone()
    assert cols == ["id", *COLUMNS]
    assert not any("patient" in c or "birth" in c or "accession" in c for c in cols)
    assert "DOE" not in " ".join(map(str, row))


def test_time_is_utc_iso_now_by_default(tmp_path):
    before = datetime.now(timezone.utc)
    entry = _record(ReviewLog(tmp_path / "l.db"))
    t = datetime.fromisoformat(entry.time)
    assert t.utcoffset().total_seconds() == 0
    assert before <= t <= datetime.now(timezone.utc)


@pytest.mark.parametrize("bad, message", [
    (dict(decision="maybe"), "decision"),
    (dict(file_sha256="xyz"), "file_sha256"),
    (dict(probability=1.5), "probability"),
    (dict(threshold=-0.1), "threshold"),
    (dict(note="x" * 2001), "note"),
])
def test_bad_values_are_refused_with_the_field_named(tmp_path, bad, message):
    log = ReviewLog(tmp_path / "l.db")
    with pytest.raises(ReviewLogError, match=message):
        _record(log, **bad)
    assert len(log) == 0


def test_entries_for_one_file_and_order(tmp_path):
    log = ReviewLog(tmp_path / "l.db")
    _record(log, decision="agree")
    _record(log, file_sha256="cd" * 32, decision="disagree")
    _record(log, decision="disagree", note="second look")
    mine = log.entries(SHA)
    assert [e.decision for e in mine] == ["agree", "disagree"]
    assert [e.file_sha256 for e in log.entries()] == [SHA, "cd" * 32, SHA]


def test_csv_export_round_trips_and_defuses_formulas(tmp_path):
    log = ReviewLog(tmp_path / "l.db")
    _record(log, note='=HYPERLINK("http://x")', decision="disagree")
    _record(log, note="fine, with a comma")
    rows = list(csv.DictReader(io.StringIO(log.to_csv())))
    assert list(rows[0]) == list(COLUMNS)
    assert rows[0]["note"].startswith("'=")      # shown as text by a spreadsheet
    assert rows[1]["note"] == "fine, with a comma"
    assert float(rows[0]["probability"]) == pytest.approx(0.81)
    out = log.export_csv(tmp_path / "out.csv")
    assert out.read_text() == log.to_csv()


def test_concurrent_writers(tmp_path):
    log = ReviewLog(tmp_path / "l.db")
    errors = []

    def work(i):
        try:
            for _ in range(10):
                _record(log, note=f"thread {i}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(log) == 40


def test_default_path_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_REVIEW_LOG", str(tmp_path / "env.db"))
    assert default_path() == tmp_path / "env.db"
    assert ReviewLog().path == tmp_path / "env.db"
    monkeypatch.delenv("CXR_REVIEW_LOG")
    assert default_path().name == "review_log.sqlite3"


def test_base_name():
    assert base_name("a.zip/x/y.dcm") == "y.dcm"
    assert base_name("C:\\scans\\b.png") == "b.png"
    assert base_name("plain") == "plain"
