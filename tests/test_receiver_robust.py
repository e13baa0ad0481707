"""The DICOM receiver on a hostile network (issue 20): it stays available, leaks no data, logs no identifier.

Each test runs the receiver as a user runs it (``python -m engine.receive``, a subprocess with its own
store) and talks to it over real sockets: pynetdicom as a real sender, raw sockets as a hostile one.
No Orthanc is needed. Times in the assertions are wait bounds, not measurements.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from pydicom import uid

from test_pacs import PY, ROOT, _free_port, _stop, _wait

IDLE_TIMEOUT_S = 3          # the receivers here close silent connections after this
MAX_FILE_MB = 2             # ... and refuse datasets over this
VERIFICATION = "1.2.840.10008.1.1"
DX = uid.DigitalXRayImageStorageForPresentation


@dataclass
class Running:
    proc: subprocess.Popen
    port: int
    store: Path
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def spool_files(self) -> list[Path]:
        return [p for p in (self.store / "spool" / "receive").glob("*/*") if p.name != ".lock"]


def start_receiver(folder: Path, *extra: str, env: Optional[dict] = None, store: Optional[Path] = None) -> Running:
    """``python -m engine.receive`` on a free port, waited for until it listens."""
    folder.mkdir(parents=True, exist_ok=True)
    store = store or folder / "store"
    port = _free_port()
    log = folder / f"receiver-{port}.log"
    full_env = {**os.environ, "CXR_STORE_DIR": str(store), "CXR_RECEIVE_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S),
                "CXR_MAX_FILE_MB": str(MAX_FILE_MB), "CXR_STORE_MIN_FREE_MB": "0", **(env or {})}
    proc = subprocess.Popen([PY, "-m", "engine.receive", "--store", str(store), "--port", str(port), *extra],
                            cwd=ROOT, env=full_env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    running = Running(proc, port, store, log)

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the receiver exited ({proc.returncode}): {running.text()[-3000:]}")
        return "listening on" in running.text()
    _wait(listening, 180, "the receiver to listen")
    return running


def stop_receiver(running: Running) -> int:
    rc = _stop(running.proc)
    assert "Traceback" not in running.text(), running.text()[-3000:]
    return rc


def _ae(calling: str = "PYTEST", *contexts: str):
    from pynetdicom import AE
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 30
    ae.add_requested_context(VERIFICATION)
    for cx in contexts:                         # one context per transfer syntax: the sender picks
        for syntax in (uid.ExplicitVRLittleEndian, uid.JPEG2000Lossless):
            ae.add_requested_context(cx, [syntax])
    return ae


def echo(port: int, bind: str = "127.0.0.1") -> bool:
    """A real C-ECHO, association to release."""
    assoc = _ae().associate("127.0.0.1", port, ae_title="TRIAGE", bind_address=(bind, 0))
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def store(port: int, datasets, contexts: tuple[str, ...] = (DX,)) -> list[int]:
    """C-STORE each dataset over one association; the statuses (-1: no response)."""
    assoc = _ae("PYTEST", *contexts).associate("127.0.0.1", port, ae_title="TRIAGE")
    assert assoc.is_established
    statuses = []
    for ds in datasets:
        status = assoc.send_c_store(ds)
        statuses.append(int(status.Status) if status and "Status" in status else -1)
    if assoc.is_established:
        assoc.release()
    return statuses


def radiograph(dcm, xray, size: int = 224, seed: int = 0):
    """A DX radiograph (with the factory's patient identifiers and fresh UIDs), ``size`` pixels a side."""
    pixels = xray if size == xray.shape[0] else \
        np.random.default_rng(seed).integers(0, 4096, (size, size), dtype=np.uint16)
    return dcm.dataset(pixels, modality="DX", sop_class=DX)


def pdata_pdus(assoc, ds) -> list[bytes]:
    """The encoded P-DATA-TF PDUs of a C-STORE request for ``ds`` on ``assoc``, as a sender sends them."""
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dsutils import encode
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.pdu import P_DATA_TF
    req = C_STORE()
    req.MessageID, req.Priority = 1, 2
    req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    req.DataSet = BytesIO(encode(ds, False, True))       # explicit VR little endian, no file meta
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    cx = next(c for c in assoc.accepted_contexts
              if c.abstract_syntax == ds.SOPClassUID and c.transfer_syntax[0] == uid.ExplicitVRLittleEndian)
    pdus = []
    for primitive in msg.encode_msg(cx.context_id, assoc.acceptor.maximum_length):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        pdus.append(pdu.encode())
    return pdus


def inbox_rows(store_dir: Path):
    from engine.worklist.ingest import model_key
    from engine.worklist.store import Store
    return [r for r in Store(store_dir).studies(None, model_key()) if r.inbox]


# ------------------------------------------------------------------------------------------------

LEFTOVER = ("999999/incoming-left.dcm", "stray.dcm")


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    """One receiver for the network tests, started over a spool left by an earlier one."""
    folder = tmp_path_factory.mktemp("robust")
    spool = folder / "store" / "spool"
    for name in LEFTOVER:
        (spool / "receive" / name).parent.mkdir(parents=True, exist_ok=True)
        (spool / "receive" / name).write_bytes(b"part of a dataset")
    (spool / "4242").mkdir()                    # the dashboard's upload spool: not ours to clean
    running = start_receiver(folder)
    yield running
    assert stop_receiver(running) == 0


def test_a_leftover_spool_is_deleted_at_start_and_ours_is_in_the_store(receiver):
    root = receiver.store / "spool" / "receive"
    assert not any((root / name).exists() for name in LEFTOVER)
    assert (root / str(receiver.proc.pid) / ".lock").exists()
    assert (receiver.store / "spool" / "4242").is_dir()
    assert "deleted 2 leftover(s) of an earlier receiver from the spool" in receiver.text()


def test_idle_connections_do_not_lock_out_a_real_sender(receiver):
    """8, then 20 connections that never send a byte: a C-ECHO is still served, and the idle ones are
    closed by the receiver (the oldest at once, beyond the per-address bound; the rest at the timeout)."""
    idle = [socket.create_connection(("127.0.0.1", receiver.port)) for _ in range(8)]
    try:
        assert echo(receiver.port)
        idle += [socket.create_connection(("127.0.0.1", receiver.port)) for _ in range(12)]
        assert echo(receiver.port)
        for s in idle:                          # every one is closed by the server, none by us
            s.settimeout(IDLE_TIMEOUT_S + 20)
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
        assert echo(receiver.port)
    finally:
        for s in idle:
            s.close()
    assert "closed before it asked to associate" in receiver.text()
    assert receiver.proc.poll() is None


def test_one_address_cannot_take_every_association(receiver):
    """Associations from one address beyond CXR_RECEIVE_MAX_PER_HOST (4) are rejected; another address
    is still served."""
    held = [_ae().associate("127.0.0.1", receiver.port, ae_title="TRIAGE", bind_address=("127.0.0.2", 0))
            for _ in range(4)]
    try:
        assert all(a.is_established for a in held)
        assert all(a.send_c_echo().Status == 0 for a in held)      # not idle: the timeout is not what ends them
        extra = _ae().associate("127.0.0.1", receiver.port, ae_title="TRIAGE", bind_address=("127.0.0.2", 0))
        assert extra.is_rejected
        assert echo(receiver.port, bind="127.0.0.1")
    finally:
        for a in held:
            a.release()
    assert "4 associations from 127.0.0.2 are open" in receiver.text()
    assert echo(receiver.port, bind="127.0.0.2")


@pytest.mark.parametrize("how", ["abort", "drop"])
def test_a_c_store_cut_short_leaves_nothing_in_the_spool(receiver, dcm, xray, how):
    """Half a dataset streams into the store's spool (not the system temporary folder); the sender
    aborts, or the connection drops: the part received is deleted and nothing is stored."""
    before = len(inbox_rows(receiver.store))
    assoc = _ae("PYTEST", DX).associate("127.0.0.1", receiver.port, ae_title="TRIAGE")
    assert assoc.is_established
    pdus = pdata_pdus(assoc, radiograph(dcm, xray, size=900))         # 1.6 MB, under the limit
    raw = assoc.dul.socket.socket
    for pdu in pdus[: len(pdus) // 2]:
        raw.sendall(pdu)
    partial = _wait(receiver.spool_files, 30, "the partial dataset in the store's spool")
    assert all(p.parent.parent == receiver.store / "spool" / "receive" for p in partial)
    if how == "abort":
        assoc.abort()
    else:
        raw.shutdown(socket.SHUT_RDWR)
    _wait(lambda: not receiver.spool_files(), 30, "the partial dataset to be deleted")
    assert len(inbox_rows(receiver.store)) == before
    assert "ended in the middle of a dataset" in receiver.text()
    if how == "drop":
        assoc.abort()
    assert echo(receiver.port)


def test_a_dataset_over_the_limit_is_aborted_while_it_arrives(receiver, dcm, xray):
    """Over CXR_MAX_FILE_MB the association is aborted mid-stream (no status comes back: the receiver
    did not wait for the whole dataset), and nothing stays in the spool."""
    before = len(inbox_rows(receiver.store))
    assert store(receiver.port, [radiograph(dcm, xray, size=1600)]) == [-1]     # 5 MB, over 2 MB
    _wait(lambda: "passed the 2.0 MB limit" in receiver.text(), 30, "the size refusal in the log")
    _wait(lambda: not receiver.spool_files(), 30, "the spool to be empty")
    assert len(inbox_rows(receiver.store)) == before
    assert echo(receiver.port)


def test_a_pdu_over_the_bound_is_refused_before_it_is_read(receiver):
    with socket.create_connection(("127.0.0.1", receiver.port)) as s:
        s.sendall(bytes([0x01, 0x00]) + (200 * 1024 * 1024).to_bytes(4, "big") + b"\x00" * 1000)
        s.settimeout(IDLE_TIMEOUT_S + 20)
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass
    assert "announced a PDU of 200.0 MB" in receiver.text()
    assert echo(receiver.port)


def _identifiers(dcm, ds) -> list[str]:
    values = [str(v) for v in dcm.IDENTIFIERS.values() if len(str(v)) > 3]
    return values + [str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)]


def test_the_log_quotes_no_identifier_from_any_library(receiver, dcm, xray, tmp_path):
    ds = radiograph(dcm, xray)
    assert store(receiver.port, [ds]) == [0]
    _wait(lambda: "scored " in receiver.text(), 120, "the image to be scored")
    text = receiver.text()
    assert not [v for v in _identifiers(dcm, ds) if v in text], "an identifier reached the receiver's log"

    # The control: with --debug the libraries' lines do quote them (so the check above can fail).
    debug = start_receiver(tmp_path / "debug", "--debug")
    try:
        ds = radiograph(dcm, xray)
        assert store(debug.port, [ds]) == [0]
        _wait(lambda: str(ds.SOPInstanceUID) in debug.text(), 60, "a UID in the --debug log")
        # stopped once its image is scored: SIGTERM lets the batch in hand finish, which on a loaded
        # machine (the model's first load included) can outlast the stop's patience
        _wait(lambda: "scored " in debug.text(), 120, "the image to be scored")
    finally:
        assert stop_receiver(debug) == 0


def test_under_the_free_space_floor_a_c_store_is_refused_with_a700(tmp_path, dcm, xray):
    running = start_receiver(tmp_path, env={"CXR_STORE_MIN_FREE_MB": str(10 ** 9)})
    try:
        assert store(running.port, [radiograph(dcm, xray)]) == [0xA700]
        assert echo(running.port)
    finally:
        assert stop_receiver(running) == 0
    assert inbox_rows(running.store) == []
    assert not [p for p in (running.store / "files").rglob("*") if p.is_file()]
    assert "refused (0xA700): the store's file system has" in running.text()
    assert "CXR_STORE_MIN_FREE_MB" in running.text()


def slow_radiographs(dcm, xray, n: int) -> list:
    """``n`` radiographs that take about a second each to decode (2000 x 2000, JPEG 2000) but little
    to send: one compressed once, then copied with fresh UIDs."""
    import copy

    import cv2
    pixels = cv2.resize(xray, (2000, 2000), interpolation=cv2.INTER_CUBIC).astype(np.uint16) * 16
    first = dcm.compressed(dcm.dataset(pixels, modality="DX", sop_class=DX, bits_stored=12), uid.JPEG2000Lossless)
    copies = []
    for _ in range(n):
        ds = copy.deepcopy(first)
        ds.StudyInstanceUID, ds.SOPInstanceUID = uid.generate_uid(), uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        copies.append(ds)
    return copies


def test_sigterm_finishes_the_batch_being_scored_and_leaves_the_rest_queued(tmp_path, dcm, xray):
    n = 24
    images = slow_radiographs(dcm, xray, n)
    env = {"CXR_MAX_FILE_MB": "128"}
    running = start_receiver(tmp_path / "first", env=env)
    try:
        assert store(running.port, images) == [0] * n
        t = time.monotonic()
        os.kill(running.proc.pid, signal.SIGTERM)
        running.proc.wait(120)
        took = time.monotonic() - t
    finally:
        rc = stop_receiver(running)
    assert rc == 0
    rows = inbox_rows(running.store)
    unscored = [r for r in rows if r.result is None]
    assert len(rows) == n
    assert unscored, "every image was scored before SIGTERM: send more, or slower to decode"
    assert running.text().count("engine.receive: scored ") == n - len(unscored)
    assert f"{len(unscored)} received image(s) not scored yet" in running.text()
    print(f"SIGTERM to exit: {took:.1f} s; {n - len(unscored)} scored, {len(unscored)} left queued")

    again = start_receiver(tmp_path / "second", env=env, store=running.store)
    try:
        _wait(lambda: all(r.result is not None for r in inbox_rows(running.store)), 300,
              "the queued images to be scored after the restart")
    finally:
        assert stop_receiver(again) == 0
    assert not list((running.store / "spool" / "receive").glob("*/*"))


# ------------------------------------------------------------------------------------------------
# The same SOP Instance UID again, and our own results sent back (issue 20)

def _named(store_dir: Path, ds) -> list:
    from engine.pacs.send import study_name
    name = study_name("PYTEST", str(ds.StudyInstanceUID), str(ds.SOPInstanceUID))
    return [r for r in inbox_rows(store_dir) if r.name == name]


def _other_pixels(ds):
    import copy
    changed = copy.deepcopy(ds)
    pixels = ds.pixel_array.copy()
    pixels[:20] = 255 - pixels[:20]
    changed.PixelData = pixels.tobytes()
    return changed


def test_the_same_sop_instance_uid_with_other_pixels_is_its_own_row_with_a_conflict_warning(receiver, dcm, xray):
    first = radiograph(dcm, xray)
    second = _other_pixels(first)                         # the same UIDs, other pixel data
    assert store(receiver.port, [first, second, first]) == [0, 0, 0]    # the first again adds nothing
    rows = _wait(lambda: (lambda r: r if len(r) == 2 else None)(_named(receiver.store, first)), 30,
                 "two rows under one SOP Instance UID")
    old, new = sorted(rows, key=lambda r: r.id)
    assert old.sha256 != new.sha256
    assert new.warnings[0].startswith("conflict: an image with the same SOP Instance UID and different pixel data")
    assert f"(row {old.id})" in new.warnings[0]
    assert old.warnings[0] == f"conflict: a later image with the same SOP Instance UID has different pixel data (row {new.id})"
    assert "again with different pixel data" in receiver.text()

    header_only = radiograph(dcm, xray)
    edited = __import__("copy").deepcopy(header_only)
    edited.StudyDescription = "corrected"                # the same pixels, another header
    assert store(receiver.port, [header_only, edited]) == [0, 0]
    rows = sorted(_wait(lambda: (lambda r: r if len(r) == 2 else None)(_named(receiver.store, header_only)), 30,
                        "two rows"), key=lambda r: r.id)
    assert rows[0].conflict == "" and rows[1].warnings[0].startswith("the same image (SOP Instance UID and pixel data)")
    text = receiver.text()
    assert not [v for v in _identifiers(dcm, first) if v in text]


def test_our_own_results_are_known_by_their_series_not_by_the_manufacturer(receiver, dcm, xray):
    from engine.model.checkpoint import DEFAULT_MODEL_DIR, read_card
    from engine.pacs.dicom_out import MANUFACTURER, Finding, heatmap_capture, source_header, structured_report
    from engine.pacs.dicom_out import to_bytes as result_bytes
    card = read_card(DEFAULT_MODEL_DIR)
    source = radiograph(dcm, xray)
    header = source_header(dcm.to_bytes(source))
    ours = Finding(0.7, 0.5, "test", card.name, str(card.version))
    capture = heatmap_capture(header, np.zeros((32, 64, 3), np.uint8), ours)
    del capture.SeriesDescription                         # a PACS may drop it: the series UID still says ours
    capture.SeriesNumber = 1
    other_model = structured_report(header, Finding(0.7, 0.5, "test", "Another model", "9.9"))
    for ds in (capture, other_model):                     # as received over the network
        ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
        assert source_header(result_bytes(ds)).Manufacturer == MANUFACTURER
    sc, sr = uid.SecondaryCaptureImageStorage, "1.2.840.10008.5.1.4.1.1.88.33"
    assert store(receiver.port, [capture, other_model], (sc, sr)) == [0, 0]
    assert receiver.text().count("is one of our own result objects; acknowledged, not kept") >= 2

    namesake_dx = radiograph(dcm, xray)
    namesake_dx.Manufacturer = MANUFACTURER               # merely the product's name: an image like any
    namesake_sc = dcm.dataset(xray, modality="OT", sop_class=sc, Manufacturer=MANUFACTURER)
    assert store(receiver.port, [namesake_dx, namesake_sc], (DX, sc)) == [0, 0]
    for ds in (namesake_dx, namesake_sc):
        row = _wait(lambda ds=ds: next((r for r in _named(receiver.store, ds) if r.result is not None), None),
                    120, "the namesake image scored")
        assert row.result.status == "ok"
    for ds in (capture, other_model):
        assert _named(receiver.store, ds) == []


def test_headers_kept_for_forwarding_are_bounded_in_number_and_size(real_dicoms):
    """The receiver keeps each arrival's parsed header until its results are forwarded (so the file is
    not read and parsed again), never more than its bound, and never a header bloated by large values."""
    from engine.pacs.dicom_out import source_header_sized
    from engine.pacs.receive import HEADER_KEPT_MAX_BYTES, HeaderCache
    data = next(iter(real_dicoms.values())).read_bytes()
    header, size = source_header_sized(data)
    assert 0 < size < len(data)                                    # the header only, not the pixels
    cache = HeaderCache(2)
    for sha in ("a", "b", "c"):
        cache.keep(sha, header, size)
    assert cache.take("a") is None                                 # the oldest went
    assert cache.take("c") is header and cache.take("c") is None   # taken once
    cache.keep("big", header, HEADER_KEPT_MAX_BYTES + 1)
    assert cache.take("big") is None
    assert HeaderCache(0).take("x") is None
