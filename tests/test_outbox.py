"""The outbox (issue 20): results to send are kept in the store until the destination has them.

The courier's rules on a real store (back-off, one failing row never holds the others, a dead link
costs one try, no identifier in a reason), the ``python -m engine.pacs outbox`` listing, and end to
end: the receiver as a user runs it, forwarding to a destination that is down, killed with SIGKILL
with its results unsent, then restarted once the destination (a real Orthanc) is up: every result
arrives, once.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
from datetime import datetime, timezone

import pytest

from engine.errors import PacsError, PacsUnreachable
from engine.pacs.outbox import MAX_BACKOFF_S, Courier, backoff_s, scrub
from engine.worklist.store import Result, Store
from test_pacs import Orthanc, _free_port, _stop, _wait, needs_orthanc
from test_receiver_robust import inbox_rows, radiograph, start_receiver, stop_receiver, store as c_store

MODEL = "model@1"
DEST = "PACS@127.0.0.1:4242"
A_UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"


def _queued(store: Store, n: int, dest: str = DEST) -> list[int]:
    """``n`` inbox studies, scored, their results queued for ``dest`` with the result; their row ids."""
    ids = []
    for i in range(n):
        sha = store.put_file(f"image {i} to {dest}".encode())
        sid = store.add_study(None, f"inbox/{i}.dcm", sha, source="dicom-receiver")
        store.put_result(sha, MODEL, Result("ok", 0.2), outbox=[(sid, dest)])
        ids.append(sid)
    return ids


def _seconds_until(iso: str) -> float:
    return (datetime.fromisoformat(iso) - datetime.now(timezone.utc)).total_seconds()


def test_back_off_doubles_to_a_cap():
    assert [backoff_s(n) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert backoff_s(50) == MAX_BACKOFF_S == 600


def test_a_row_queued_twice_is_one_row(tmp_path):
    store = Store(tmp_path)
    (sid,) = _queued(store, 1)
    sha = store.outbox()[0].sha256
    store.put_result(sha, MODEL, Result("ok", 0.2), outbox=[(sid, DEST)])      # scored again, queued again
    assert len(store.outbox()) == 1


def test_one_failing_row_never_stops_the_others_and_its_reason_has_no_identifier(tmp_path):
    store = Store(tmp_path)
    ids = _queued(store, 3)
    sent: list[int] = []

    def send(objects):
        if objects == [ids[1]]:
            raise PacsError(f"{DEST}: C-STORE failed for 1 of 1 object(s) (status 0xA700) for {A_UID}?PatientID=X")
        sent.extend(objects)
    courier = Courier(store, DEST, lambda entry: [entry.study_id], send)
    assert courier.send_due() == 2 and sent == [ids[0], ids[2]]
    by_study = {e.study_id: e for e in store.outbox()}
    failed = by_study[ids[1]]
    assert (failed.state, failed.attempts) == ("failed", 1)
    assert A_UID not in failed.last_error and "PatientID" not in failed.last_error
    assert "<UID>" in failed.last_error and "0xA700" in failed.last_error
    assert 3 < _seconds_until(failed.next_try) <= 5
    assert all(by_study[i].state == "sent" and by_study[i].sent for i in (ids[0], ids[2]))
    assert courier.reachable                              # refused by the destination, which answered
    assert store.outbox_due(DEST) == []                   # not due before its back-off
    assert store.outbox_retry(DEST) == 1                  # --retry: due now
    courier.send_due()
    again = store.outbox(("failed",))[0]
    assert again.attempts == 2 and 8 < _seconds_until(again.next_try) <= 10
    assert store.outbox_counts() == {"pending": 0, "sent": 2, "failed": 1}


def test_a_destination_that_does_not_answer_costs_one_try_not_one_per_row(tmp_path):
    store = Store(tmp_path)
    _queued(store, 4)
    tries = []

    def send(objects):
        tries.append(objects)
        raise PacsUnreachable(f"{DEST}: association refused or not reachable")
    courier = Courier(store, DEST, lambda entry: [entry.id], send)
    assert courier.send_due() == 0 and len(tries) == 1
    assert not courier.reachable
    assert courier.send_now(store.outbox()[0].sha256, lambda: ["x"]) == 0 and len(tries) == 1
    assert [e.attempts for e in store.outbox()].count(0) == 3          # the others untouched, still due
    assert scrub(store.outbox(("failed",))[0].last_error).startswith(DEST)   # an address is not a UID


def test_the_outbox_command_lists_rows_without_identifiers_and_retries(tmp_path, capsys):
    from engine.pacs.send import main
    store = Store(tmp_path)
    ids = _queued(store, 2)
    courier = Courier(store, DEST, lambda e: [e.study_id], lambda objects: (_ for _ in ()).throw(
        PacsError(f"refused {A_UID}")) if objects == [ids[0]] else None)
    courier.send_due()
    assert main(["outbox", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "outbox: 0 pending, 1 sent, 1 failed"
    assert f"study row {ids[0]}\tfailed\t1 try" in out and "refused <UID>" in out and A_UID not in out
    assert "inbox/" not in out                            # no row names
    assert main(["outbox", "--store", str(tmp_path), "--retry"]) == 0
    assert "1 unsent result(s) due now" in capsys.readouterr().err
    assert len(store.outbox_due(DEST)) == 1


def test_an_older_database_gains_the_outbox_and_the_conflict_column(tmp_path):
    Store(tmp_path)
    with sqlite3.connect(tmp_path / "store.sqlite3") as con:
        con.execute("DROP TABLE outbox")
        con.execute("ALTER TABLE studies DROP COLUMN conflict")
    store = Store(tmp_path)
    _queued(store, 1)
    assert store.studies(None, MODEL)[0].conflict == "" and store.outbox_counts()["pending"] == 1


# ------------------------------------------------------------------------------------------------
# End to end: SIGKILL with results unsent, restart once the destination is up

def _orthanc_study_series(orthanc: Orthanc) -> dict[str, list[tuple[str, int]]]:
    """Orthanc's studies: (modality, number of instances) of each series."""
    out = {}
    for study in orthanc.http.get(f"{orthanc.url}/studies", timeout=10).json():
        series = orthanc.http.get(f"{orthanc.url}/studies/{study}/series", timeout=10).json()
        out[study] = sorted((s["MainDicomTags"].get("Modality", ""), len(s["Instances"])) for s in series)
    return out


@needs_orthanc
def test_results_unsent_at_a_sigkill_are_sent_after_the_restart_once(tmp_path, dcm, xray):
    http_port, dicom_port = _free_port(), _free_port()
    forward = ["--forward-to", f"ORTHANC@127.0.0.1:{dicom_port}"]
    first = start_receiver(tmp_path / "first", *forward)
    images = [radiograph(dcm, xray) for _ in range(3)]
    try:
        assert c_store(first.port, images) == [0, 0, 0]

        def all_queued_one_tried():
            entries = Store(first.store).outbox()
            return len(entries) == 3 and any(e.state == "failed" for e in entries)
        _wait(all_queued_one_tried, 300, "three results queued, one try failed (destination down)")
        os.kill(first.proc.pid, signal.SIGKILL)             # killed with its results unsent
        first.proc.wait(30)
    finally:
        _stop(first.proc)
    entries = Store(first.store).outbox()
    assert all(e.state != "sent" for e in entries)
    assert "refused or not reachable" in next(e.last_error for e in entries if e.state == "failed")

    orthanc = Orthanc(tmp_path / "orthanc", 1, http_port=http_port, dicom_port=dicom_port)
    again = start_receiver(tmp_path / "second", *forward, store=first.store)
    try:
        _wait(lambda: all(e.state == "sent" for e in Store(first.store).outbox()), 300,
              "every result in the outbox sent after the restart")
        assert "3 result(s) in the outbox not yet sent" in again.text()
        # The same image sent again is scored again, but its results are not sent twice.
        assert c_store(again.port, images[:1]) == [0]
        _wait(lambda: "(sent before, or to be retried)" in again.text(), 300, "the repeated image to be scored")
        series = _orthanc_study_series(orthanc)
    finally:
        assert stop_receiver(again) == 0
        _stop(orthanc.proc)
    # Each study: one series per result object (SR, capture, and the parametric map where written), each
    # holding one instance: sent once, however often tried.
    assert len(series) == 3 and len({tuple(s) for s in series.values()}) == 1, series
    kinds = next(iter(series.values()))
    assert ("SR", 1) in kinds and ("OT", 1) in kinds and all(n == 1 for _, n in kinds), kinds
    entries = Store(first.store).outbox()
    assert len(entries) == 3 and all(e.state == "sent" and e.attempts >= 1 and not e.last_error for e in entries)
    rows = inbox_rows(first.store)
    assert len(rows) == 3 and all(r.result is not None and r.result.status == "ok" for r in rows)
    assert again.text().count("engine.receive: scored ") == 1        # only the repeated image
    assert len(re.findall(r"outbox row \d+ sent to", again.text())) == 3     # each result sent once


def test_a_row_whose_objects_cannot_be_written_waits_for_retry_and_never_holds_the_others(tmp_path):
    from engine.errors import ResultNotWritable
    store = Store(tmp_path)
    ids = _queued(store, 3)
    sent: list[int] = []

    def build(entry):
        if entry.study_id == ids[0]:
            raise ResultNotWritable("inbox/0.dcm: its PatientName holds control characters (line breaks or "
                                    "other), which its value representation forbids: no result object written")
        return [entry.study_id]
    courier = Courier(store, DEST, build, sent.extend)
    assert courier.send_due() == 2 and sent == ids[1:]
    (bad,) = store.outbox(("failed",))
    assert bad.study_id == ids[0] and "control characters" in bad.last_error
    assert _seconds_until(bad.next_try) > 365 * 86400           # not retried on a timer: the same file fails alike
    assert courier.reachable and store.outbox_due(DEST) == []
    assert store.outbox_retry(DEST) == 1                        # an operator's --retry tries it again
