"""engine.worklist.store: worklists behind secret tokens, studies, results, identifiers apart, decisions, eviction."""

from __future__ import annotations

import csv
import io
import sqlite3

import pytest

from engine.image import PatientIdentifiers, StudyMetadata
from engine.worklist.store import Result, Store, StoreError
from helpers import JPEGS

MODEL = "model@1"


def _scored(store, wl, name, data, probability, *, ids=None):
    sha = store.put_file(data)
    sid = store.add_study(wl, name, sha)
    store.put_result(sha, MODEL, Result("ok", probability, "", ("a warning",), StudyMetadata(format="jpeg",
                                                                                          study_date="20261130")),
                     identifiers=ids)
    return sid, sha


def test_a_worklist_survives_a_restart_and_only_its_token_reaches_it(tmp_path):
    store = Store(tmp_path)
    token, wl = store.create_worklist("Dr A")
    sid, sha = _scored(store, wl, "a.jpeg", JPEGS[0].read_bytes(), 0.8)
    again = Store(tmp_path)                                  # a new process: only the disk is shared
    found = again.worklist(token)
    assert found == wl and again.worklist("guess") is None and again.worklist("") is None
    (row,) = again.studies(found, MODEL)
    assert (row.name, row.sha256, row.result.probability, row.result.warnings) == ("a.jpeg", sha, 0.8, ("a warning",))
    assert row.result.metadata.study_date == "20261130" and row.review_status == "unreviewed"
    assert again.read_file(sha) == JPEGS[0].read_bytes()
    with sqlite3.connect(tmp_path / "store.sqlite3") as con:           # the token itself is never stored
        assert token not in repr(con.execute("SELECT * FROM worklists").fetchall())
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_two_worklists_see_their_own_studies_and_the_shared_inbox(tmp_path):
    store = Store(tmp_path)
    _, alice = store.create_worklist()
    _, bob = store.create_worklist()
    _scored(store, alice, "alice.jpeg", JPEGS[0].read_bytes(), 0.1)
    _scored(store, bob, "bob.jpeg", JPEGS[1].read_bytes(), 0.2)
    inbox_sha = store.put_file(JPEGS[2].read_bytes())
    store.add_study(None, "from-pacs.dcm", inbox_sha, source="dicom-receiver")
    assert [r.name for r in store.studies(alice, MODEL)] == ["alice.jpeg", "from-pacs.dcm"]
    assert [r.name for r in store.studies(bob, MODEL, include_inbox=False)] == ["bob.jpeg"]
    assert [r.inbox for r in store.studies(alice, MODEL)] == [False, True]


def test_identifiers_are_kept_apart_and_read_only_on_request(tmp_path):
    store = Store(tmp_path)
    _, wl = store.create_worklist()
    ids = PatientIdentifiers(patient_name="DOE^JANE", patient_id="P123")
    _, sha = _scored(store, wl, "a.dcm", JPEGS[0].read_bytes(), 0.5, ids=ids)
    assert store.identifiers(sha) == ids
    (row,) = store.studies(wl, MODEL)
    assert "DOE" not in repr(row)
    with sqlite3.connect(tmp_path / "store.sqlite3") as con:
        tables = {t: repr(con.execute(f"SELECT * FROM {t}").fetchall())
                  for t in ("studies", "results", "decisions", "worklists")}
    assert not any("DOE" in text or "P123" in text for text in tables.values())


def test_a_failed_transaction_leaves_nothing_behind(tmp_path):
    store = Store(tmp_path)
    _, wl = store.create_worklist()
    sid, _ = _scored(store, wl, "a.jpeg", JPEGS[0].read_bytes(), 0.9)
    with pytest.raises(sqlite3.IntegrityError):
        store.record_decision(sid + 999, reviewer="x", decision="agree", probability=0.9, threshold=0.5, model=MODEL)
    with pytest.raises(StoreError, match="decision must be 'agree' or 'disagree'"):
        store.record_decision(sid, reviewer="x", decision="maybe", probability=0.9, threshold=0.5, model=MODEL)
    assert store.decisions(sid) == []


def test_the_worklist_export_names_who_decided_and_when_in_utc(tmp_path):
    """The decision in force on each study (a changed one by its change) reaches the worklist CSV with its
    reviewer and UTC time; an undecided study has neither; another worklist's decision is not there."""
    from datetime import datetime, timezone

    from dashboard import worklist as W
    store = Store(tmp_path)
    _, alice = store.create_worklist("Dr A")
    _, bob = store.create_worklist("Dr B")
    a, sha_a = _scored(store, alice, "a.jpeg", JPEGS[0].read_bytes(), 0.9)
    _scored(store, alice, "b.jpeg", JPEGS[1].read_bytes(), 0.8)
    c, _ = _scored(store, bob, "c.jpeg", JPEGS[2].read_bytes(), 0.7)
    store.record_decision(a, reviewer="Dr A", decision="agree", probability=0.9, threshold=0.5, model=MODEL)
    store.record_decision(a, reviewer="Dr C", decision="disagree", probability=0.9, threshold=0.5, model=MODEL,
                          change=True)
    store.record_decision(c, reviewer="Dr B", decision="agree", probability=0.7, threshold=0.5, model=MODEL)
    decided = W.decisions_by_sha(store.worklist_decisions(alice))
    [current] = [d for d in store.decisions(a) if not d["changed_later"]]
    at = datetime.fromisoformat(current["time"]).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert decided == {sha_a: ("Dr C", at)}
    df = W.build_worklist(store.studies(alice, MODEL))
    rows = {r["file"]: r for r in csv.DictReader(io.StringIO(W.export_csv(df, 0.5, "m 1.0", decisions=decided)))}
    assert set(rows) == {"a.jpeg", "b.jpeg"}
    assert (rows["a.jpeg"]["reviewer"], rows["a.jpeg"]["decided_at_utc"]) == ("Dr C", at)
    assert (rows["b.jpeg"]["review"], rows["b.jpeg"]["reviewer"], rows["b.jpeg"]["decided_at_utc"]) == \
        ("unreviewed", "", "")


def test_decisions_set_the_review_status_and_export_per_worklist(tmp_path):
    store = Store(tmp_path)
    _, alice = store.create_worklist("Dr A")
    _, bob = store.create_worklist("Dr B")
    a, _ = _scored(store, alice, "x/DOE_JANE/a.jpeg", JPEGS[0].read_bytes(), 0.9)
    b, _ = _scored(store, bob, "b.jpeg", JPEGS[1].read_bytes(), 0.9)
    store.record_decision(a, reviewer="Dr A", decision="agree", probability=0.9, threshold=0.5, model=MODEL,
                          note="=HYPERLINK()")
    store.record_decision(b, reviewer="Dr B", decision="disagree", probability=0.9, threshold=0.5, model=MODEL)
    assert [r.review_status for r in store.studies(alice, MODEL)] == ["agreed"]
    mine = list(csv.DictReader(io.StringIO(store.decisions_csv(alice))))
    assert [(r["reviewer"], r["file_name"], r["note"]) for r in mine] == [("Dr A", "a.jpeg", "'=HYPERLINK()")]
    assert len(list(csv.DictReader(io.StringIO(store.decisions_csv(None))))) == 2


def test_eviction_frees_the_oldest_files_but_never_an_unreviewed_flagged_one(tmp_path):
    store = Store(tmp_path, max_bytes=10)
    _, wl = store.create_worklist()
    flagged, flagged_sha = _scored(store, wl, "flagged.jpeg", b"f" * 8, 0.9)
    _, low_sha = _scored(store, wl, "low.jpeg", b"l" * 8, 0.1)
    report = store.evict(protect_threshold=0.5, model_key=MODEL)
    assert report.removed_files == 1 and not report.over_limit
    assert store.has_file(flagged_sha) and not store.has_file(low_sha)
    with pytest.raises(StoreError, match="no longer in the local cache"):
        store.read_file(low_sha)
    (low_row,) = [r for r in store.studies(wl, MODEL) if r.name == "low.jpeg"]
    assert low_row.result.probability == 0.1 and not low_row.on_disk      # the row and its score stay
    _scored(store, wl, "flagged2.jpeg", b"g" * 8, 0.95)
    report = store.evict(protect_threshold=0.5, model_key=MODEL)
    assert report.removed_files == 0 and report.over_limit and report.blocked_by_unreviewed == 2
    store.record_decision(flagged, reviewer="r", decision="agree", probability=0.9, threshold=0.5, model=MODEL)
    report = store.evict(protect_threshold=0.5, model_key=MODEL)        # reviewed: may go now
    assert report.removed_files == 1 and not store.has_file(flagged_sha)


def test_files_are_content_addressed_and_written_once(tmp_path):
    store = Store(tmp_path)
    sha = store.put_file(b"abc")
    assert store.put_file(b"abc") == sha
    assert sorted(p.name for p in (tmp_path / "files").rglob("*") if p.is_file()) == [sha]
    assert store.used_bytes() == 3


def test_eviction_never_removes_a_file_not_yet_scored_nor_one_waiting_in_the_outbox(tmp_path):
    """Issue 20: the receiver acknowledged images the dashboard's eviction then removed before they were
    scored. Unscored studies' files stay (the report says so); once scored, they may go."""
    store = Store(tmp_path, max_bytes=10)
    shas = [store.put_file(bytes([65 + i]) * 8) for i in range(5)]
    ids = [store.add_study(None, f"inbox/{i}.dcm", sha, source="dicom-receiver") for i, sha in enumerate(shas)]
    report = store.evict(protect_threshold=0.5, model_key=MODEL)
    assert report.removed_files == 0 and all(store.has_file(s) for s in shas)
    assert report.over_limit and report.blocked_by_unscored == 5 and report.blocked_by_unreviewed == 0
    assert "5 studies are not yet scored" in report.notice()
    for sha in shas[:4]:                                  # scored, not flagged; the first waits in the outbox
        store.put_result(sha, MODEL, Result("ok", 0.1), outbox=[(ids[0], "PACS@h:1")] if sha == shas[0] else ())
    report = store.evict(protect_threshold=0.5, model_key=MODEL)
    assert [store.has_file(s) for s in shas] == [True, False, False, False, True]
    assert report.removed_files == 3 and report.blocked_by_unscored == 2
    (entry,) = store.outbox_due("PACS@h:1")
    store.outbox_sent(entry.id)
    store.put_result(shas[4], MODEL, Result("error", None, "cannot be decoded"))   # refused counts as scored
    report = store.evict(protect_threshold=0.5, model_key=MODEL)
    assert report.removed_files == 1 and not report.over_limit and report.notice() == ""
