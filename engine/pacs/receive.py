"""A DICOM receiver: C-STORE and C-ECHO service that scores radiographs into the worklist store.

    python -m engine.receive --store DIR [--aet TRIAGE] [--port 11112] [--host 127.0.0.1]
                             [--checkpoint DIR] [--allow-aet AET ...] [--forward-to DEST]
                             [--threshold T] [--debug]

Every image received is kept in the store's file cache and listed in the store's shared inbox (which
every dashboard worklist shows) under a name that groups it by study without quoting a UID
(``AET/study-<hash>/image-<hash>.dcm``), then scored by a single background thread through the
predictor's decoding workers (a decoder that crashes costs that image only). With ``--forward-to``
(``AET@HOST:PORT`` for C-STORE, or an ``http(s)://`` DICOMweb root for STOW-RS), the structured
report and the heatmap capture of each scored image (:mod:`engine.pacs.dicom_out`) go there through
the store's outbox (:mod:`engine.pacs.outbox`): queued with the result in one transaction, sent, and
retried with back-off (and after a restart, a crash or a kill included) until the destination has them;
``python -m engine.pacs outbox --store DIR`` lists them.

* Only radiograph storage SOP classes are kept (CR, DX for presentation and for processing, Secondary
  Capture). Every storage class is negotiated, so that a PACS sending a whole study gets an answer per
  object: anything else (CT, MR, ...) is refused with DIMSE status 0x0122 (SOP class not supported) and
  a log line naming the class. A dataset whose SOP class does not match the request is refused with
  0xA900, one that cannot be parsed with 0xC210, one over the size limit (``CXR_MAX_FILE_MB``) with
  0xA700, and so is one that would leave the store's file system with less free space than
  ``CXR_STORE_MIN_FREE_MB``; a decoder failure is reported on the study's row (the image was received
  and kept). Our own result objects sent back to us (a routing loop) are acknowledged and dropped: they
  are known by the series our writers file them in (series UID, or series number and description), not
  by the Manufacturer, which any image may carry.
* Datasets stream to ``<store>/spool/receive/<pid>/`` as they arrive (memory stays flat, nothing goes
  to the system temporary folder). An association whose message passes the size limit while arriving
  is aborted then and there; the part of a dataset cut short (abort, dropped connection) is deleted at
  once, and a spool left by a receiver that was killed is deleted when the next one starts.
* A hostile or broken network cannot hold the service: a connection that does not ask to associate,
  or an association that goes silent, is closed after ``CXR_RECEIVE_IDLE_TIMEOUT_S``; at most
  ``CXR_RECEIVE_MAX_ASSOCIATIONS`` associations are open at once, at most ``CXR_RECEIVE_MAX_PER_HOST``
  from one address (more are rejected, "local limit exceeded"), and of the connections from one address
  that have not yet asked to associate only the newest ``CXR_RECEIVE_MAX_PER_HOST`` are kept (the
  oldest is closed), so idle connections never lock a real sender out. A PDU over 4 MB is refused
  before it is read.
* ``--allow-aet`` (repeatable, or ``$CXR_RECEIVE_ALLOW_AETS``, comma-separated): only these calling AE
  titles may associate; others are rejected (and logged). The called AE title must be ours.
* Identifiers (patient name, ID, birth date, accession number, institution) are stored apart by the
  store and never written to the log: log lines name images by the same hashed names, and the DICOM
  and DICOMweb libraries log warnings only (their INFO and DEBUG lines quote UIDs), unless ``--debug``.
* The same SOP Instance UID arriving again with other content is kept as its own row, with a warning
  on both rows (a conflict when the pixel data differ); the same bytes again add nothing.
* Images received while the model was busy or before a restart are scored (and forwarded) at start.

SIGTERM or Ctrl-C stops accepting, lets the images being scored finish (the batch in flight, at most
8) and exits 0; images received but not yet scored stay in the inbox and are scored at the next start.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from engine.inputs import limits
from engine.inference.backends import CHOICES as BACKEND_CHOICES
from engine.pacs.send import SOURCE_RECEIVER, Destination, parse_destination, send, study_name
from engine.evaluation.metrics import flagged as flag_rule
from engine.settings import settings
from engine.inputs import arguments

log = logging.getLogger("engine.receive")

# Transfer syntaxes the decoders read (README "Reading images"); others are not negotiated.
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",        # Explicit VR Little Endian
    "1.2.840.10008.1.2",          # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",     # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",        # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.4.50",     # JPEG Baseline
    "1.2.840.10008.1.2.4.51",     # JPEG Extended (8-bit read; 12-bit refused per file with a message)
    "1.2.840.10008.1.2.4.57",     # JPEG Lossless
    "1.2.840.10008.1.2.4.70",     # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",     # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",     # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",     # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",     # JPEG 2000
    "1.2.840.10008.1.2.4.201",    # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",    # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",    # HTJ2K
    "1.2.840.10008.1.2.5",        # RLE Lossless
]
VERIFICATION = "1.2.840.10008.1.1"

# DIMSE statuses (PS3.4 Annex B, PS3.7 Annex C)
SUCCESS = 0x0000
REFUSED_SOP_CLASS = 0x0122
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC210
PROCESSING_FAILURE = 0xC001

# A-ASSOCIATE-RJ: rejected-transient, by the service provider (presentation), local limit exceeded (PS3.8 9.3.4).
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)
# Upper-layer state of a connection open but not yet asking to associate (PS3.8 9.2, Sta2).
AWAITING_REQUEST = "Sta2"
# pynetdicom reads each PDU whole into memory: a longer one is refused before it is read. We offer
# 16 KB PDUs; an association request proposing every storage class is far below this.
MAX_PDU_BYTES = 4 * limits.MB
# At stop, how long associations still open may take to finish before they are aborted.
STOP_GRACE_S = 5.0
# How often the scoring thread, when idle, tries the outbox rows that are due.
OUTBOX_POLL_S = 5.0
# Libraries whose INFO and DEBUG lines quote UIDs, patient names, or URLs holding UIDs.
CHATTY_LIBRARIES = ("pynetdicom", "dicomweb_client", "highdicom", "pydicom", "urllib3", "requests")


def own_series() -> dict[str, tuple[int, str, str]]:
    """SOP class -> (series number, series description, seed of the series UID) of each result object
    our writers make (:mod:`engine.pacs.dicom_out`), the parametric map included where it is written."""
    from engine.pacs import dicom_out as out
    series = {out.COMPREHENSIVE_SR: (out.SR_SERIES_NUMBER, out.SR_SERIES_DESCRIPTION, "cxr-triage-sr-series"),
              out.SECONDARY_CAPTURE: (out.SC_SERIES_NUMBER, out.SC_SERIES_DESCRIPTION, "cxr-triage-sc-series")}
    if hasattr(out, "PARAMETRIC_MAP"):
        series[out.PARAMETRIC_MAP] = (out.PM_SERIES_NUMBER, out.PM_SERIES_DESCRIPTION, "cxr-triage-pm-series")
    return series


def own_result(header, model: str) -> bool:
    """Whether ``header`` is one of our own result objects (a routing loop sent it back): one in the
    series our writers file results in, known by its series UID (derived from the study and the model as
    :mod:`engine.pacs.dicom_out` derives it) or by that series' number and description (another model's
    results). The Manufacturer is not looked at: an image may carry any."""
    from pydicom.uid import generate_uid
    found = own_series().get(str(header.get("SOPClassUID", "")))
    if found is None:
        return False
    number, description, seed = found
    if str(header.SeriesInstanceUID) == generate_uid(entropy_srcs=[seed, str(header.StudyInstanceUID), model]):
        return True
    return str(header.get("SeriesNumber", "")) == str(number) and \
        str(header.get("SeriesDescription", "")) == description


def pixel_digest(data: bytes) -> str:
    """SHA-256 of a dataset's pixel data as stored (of the whole file when it cannot be parsed)."""
    import hashlib
    import io

    import pydicom
    try:
        ds = pydicom.dcmread(io.BytesIO(data), specific_tags=["PixelData"])
        return hashlib.sha256(bytes(ds.get("PixelData") or b"")).hexdigest()
    except Exception:
        return "file-" + hashlib.sha256(data).hexdigest()


def _address(assoc) -> str:
    try:
        return assoc.requestor.address
    except ValueError:                         # no address information (not from a socket)
        return "?"


def _peer(assoc) -> str:
    """``AET (address)`` of the requestor, for log lines (neither is a patient identifier)."""
    req = assoc.requestor
    aet = req.ae_title or getattr(getattr(req, "primitive", None), "calling_ae_title", "") or "?"
    return f"{str(aet).strip() or '?'} ({_address(assoc)})"


# ------------------------------------------------------------------------------------------------
# The network: timeouts, caps, and what one peer can make us buffer

@dataclass(frozen=True)
class NetworkLimits:
    """What one peer, or all of them together, may hold of the receiver."""

    idle_timeout_s: float = 10.0
    max_associations: int = 32
    max_per_host: int = 4
    max_message_bytes: int = limits.MAX_FILE_BYTES
    max_pdu_bytes: int = MAX_PDU_BYTES

    @classmethod
    def from_settings(cls) -> "NetworkLimits":
        s = settings()
        return cls(idle_timeout_s=s.receive_idle_timeout_s, max_associations=s.receive_max_associations,
                   max_per_host=s.receive_max_per_host)


class Gatekeeper:
    """The pynetdicom event handlers that keep connections within :class:`NetworkLimits`.

    pynetdicom counts every connection, asked to associate or not, against ``maximum_associations``;
    here only associations that asked count against the caps, and idle connections are bounded apart
    (closed after the idle timeout, and the oldest of one address's closed when it opens too many)."""

    def __init__(self, net: NetworkLimits) -> None:
        self.net = net
        self._lock = threading.Lock()
        self._opened: "weakref.WeakKeyDictionary[object, float]" = weakref.WeakKeyDictionary()
        self._admitted: "weakref.WeakSet[object]" = weakref.WeakSet()
        self._message_bytes: "weakref.WeakKeyDictionary[object, int]" = weakref.WeakKeyDictionary()
        self._closed: "weakref.WeakSet[object]" = weakref.WeakSet()    # closed by us before they asked

    def configure(self, ae) -> None:
        """Timeouts of a few seconds; pynetdicom's own cap set above ours (a backstop only)."""
        ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = self.net.idle_timeout_s
        ae.maximum_associations = 2 * self.net.max_associations + 16

    def handlers(self) -> list:
        from pynetdicom import evt
        return [(evt.EVT_CONN_OPEN, self.on_open), (evt.EVT_REQUESTED, self.on_requested),
                (evt.EVT_PDU_RECV, self.on_pdu), (evt.EVT_CONN_CLOSE, self.on_close)]

    # -- a new connection

    def on_open(self, event) -> None:
        """Bound the new connection's reads, then make room among those still waiting to associate."""
        assoc = event.assoc
        assoc.dul.socket.socket.settimeout(self.net.idle_timeout_s)    # a read stalled mid-PDU ends too
        self._bound_pdu_size(assoc)
        with self._lock:
            self._opened[assoc] = time.monotonic()
            host = assoc.requestor.address
            self._close_oldest([a for a in self._waiting(assoc.ae) if a.requestor.address == host],
                               self.net.max_per_host - 1,
                               f"newer connections from {host} are waiting (CXR_RECEIVE_MAX_PER_HOST)")
            self._close_oldest(self._waiting(assoc.ae), self.net.max_associations - 1,
                               "newer connections are waiting (CXR_RECEIVE_MAX_ASSOCIATIONS)")

    def _waiting(self, ae) -> list:
        """Connections open that have not asked to associate yet, oldest first."""
        found = [a for a in ae.active_associations if a.is_acceptor and a in self._opened
                 and a not in self._closed and a.dul.state_machine.current_state == AWAITING_REQUEST]
        return sorted(found, key=lambda a: self._opened.get(a, 0.0))

    def _close_oldest(self, waiting: list, keep: int, reason: str) -> None:
        """Close all but the newest ``keep`` of ``waiting`` (oldest first)."""
        for assoc in waiting[:max(len(waiting) - keep, 0)]:
            log.warning("connection from %s closed before it asked to associate: %s", _address(assoc), reason)
            self._closed.add(assoc)
            close_waiting(assoc)

    def _bound_pdu_size(self, assoc) -> None:
        """Refuse a PDU longer than the bound before reading it (pynetdicom would read it whole)."""
        sock = assoc.dul.socket
        read = sock.recv
        bound = self.net.max_pdu_bytes
        refused = threading.Event()

        def recv(nr_bytes: int) -> bytearray:
            if nr_bytes > bound and not refused.is_set():
                log.warning("connection from %s closed: it announced a PDU of %s, over the %s limit",
                            _address(assoc), limits.fmt_mb(nr_bytes), limits.fmt_mb(bound))
                refused.set()
                _shutdown_socket(assoc)
            if refused.is_set():               # read by pynetdicom as a connection closed mid-PDU
                return bytearray()
            return read(nr_bytes)
        sock.recv = recv

    def on_close(self, event) -> None:
        """Say so when a connection is closed for not asking to associate in time."""
        assoc = event.assoc
        opened = self._opened.get(assoc)
        if opened is None or assoc.requestor.primitive is not None or assoc in self._closed:
            return
        if time.monotonic() - opened >= 0.9 * self.net.idle_timeout_s:   # else the peer closed it
            log.warning("connection from %s closed: it did not ask to associate within %g s "
                        "(CXR_RECEIVE_IDLE_TIMEOUT_S)", _address(assoc), self.net.idle_timeout_s)

    # -- an association request

    def on_requested(self, event) -> None:
        """Admit the request, or reject it (transient, local limit exceeded) when a cap is reached."""
        assoc = event.assoc
        with self._lock:
            reason = self._over_cap(assoc)
            if reason is None:
                self._admitted.add(assoc)
        if reason is not None:
            log.warning("association from %s rejected: %s", _peer(assoc), reason)
            assoc.acse.send_reject(*REJECT_LOCAL_LIMIT)
            assoc.kill()                       # as pynetdicom does after its own rejections

    def _over_cap(self, assoc) -> Optional[str]:
        others = [a for a in self.admitted(assoc.ae) if a is not assoc]
        if len(others) >= self.net.max_associations:
            return f"{len(others)} associations are open, the limit (CXR_RECEIVE_MAX_ASSOCIATIONS)"
        host = assoc.requestor.address
        same = sum(1 for a in others if a.requestor.address == host)
        if same >= self.net.max_per_host:
            return f"{same} associations from {host} are open, the limit for one address (CXR_RECEIVE_MAX_PER_HOST)"
        return None

    def admitted(self, ae) -> list:
        """Associations that asked and were admitted, still running."""
        return [a for a in ae.active_associations if a in self._admitted]

    # -- data arriving

    def on_pdu(self, event) -> None:
        """Abort an association as soon as the message arriving passes the size limit for one image."""
        items = getattr(event.pdu, "presentation_data_value_items", None)
        if not items:
            return
        assoc = event.assoc
        with self._lock:
            total = self._message_bytes.get(assoc, 0)
            if total < 0:                      # already aborted: PDUs still in flight
                return
            for item in items:
                value = item.presentation_data_value or b""
                total += max(len(value) - 1, 0)             # less the message control header
                if total > self.net.max_message_bytes:
                    break
                if value and value[0] & 0x02:               # the last fragment of a command or a data set
                    total = 0
            over = total > self.net.max_message_bytes
            self._message_bytes[assoc] = -1 if over else total
        if over:
            log.warning("association from %s aborted: the dataset arriving passed the %s limit for one image "
                        "(CXR_MAX_FILE_MB)", _peer(assoc), limits.fmt_mb(self.net.max_message_bytes))
            assoc.abort()                      # non-blocking inside an event handler

    def cut_short(self, assoc) -> bool:
        """Whether :meth:`on_pdu` aborted ``assoc`` (and logged why)."""
        return self._message_bytes.get(assoc, 0) < 0

    # -- stop

    def close_all(self, ae, grace_s: float) -> None:
        """Wait up to ``grace_s`` for admitted associations to end, then abort what is left."""
        deadline = time.monotonic() + grace_s
        while self.admitted(ae) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [a for a in ae.active_associations if a.is_acceptor]
        for assoc in left:
            if assoc.dul.state_machine.current_state == AWAITING_REQUEST:
                close_waiting(assoc)
            elif assoc.is_established:
                assoc.abort(block=False)
        time.sleep(0.2)                        # the A-ABORTs go out; then no peer can hold a thread
        for assoc in left:
            _shutdown_socket(assoc)


def _shutdown_socket(assoc) -> None:
    try:
        assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)
    except (AttributeError, OSError):          # already closed
        pass


def close_waiting(assoc) -> None:
    """Close a connection that has not asked to associate, and end its thread now (not at the timeout)."""
    _shutdown_socket(assoc)
    # The association thread is blocked waiting for an A-ASSOCIATE-RQ primitive: None reads as "timed
    # out", so it stops the upper layer (which saw the socket close) and ends.
    assoc.dul.to_user_queue.put(None)


# ------------------------------------------------------------------------------------------------
# The spool: datasets while they arrive

class Spool:
    """``<store>/spool/receive/<pid>/``: datasets being received, one folder per running receiver.

    A receiver holds an exclusive lock on its folder's ``.lock`` while it runs; at start, every
    folder nobody holds (left by a receiver that was killed or crashed, whatever its PID) is deleted."""

    def __init__(self, store_root: Path) -> None:
        self.root = Path(store_root) / "spool" / "receive"
        self.folder = self.root / str(os.getpid())
        self._lock_fd: Optional[int] = None

    def open(self) -> int:
        """Delete leftover spools, create and lock ours; return how many leftovers were deleted."""
        import fcntl
        self.root.mkdir(parents=True, exist_ok=True)
        removed = self._sweep()
        self.folder.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_fd = fd
        return removed

    def _sweep(self) -> int:
        removed = 0
        for child in self.root.iterdir():
            if child.is_dir() and not child.is_symlink():
                if _lock_held(child / ".lock"):
                    continue
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            removed += 1
        return removed

    def new_file(self, **kwargs):
        """A ``NamedTemporaryFile`` in our folder (pynetdicom's call, redirected here)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return tempfile.NamedTemporaryFile(dir=self.folder, prefix="incoming-", **kwargs)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _lock_held(path: Path) -> bool:
    """Whether a running process holds the lock on ``path`` (a missing lock file is not held)."""
    import fcntl
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)                           # releases the lock if we took it


def _spool_incoming(new_file: Callable) -> None:
    """Make pynetdicom write incoming C-STORE datasets with ``new_file`` (process-wide).

    pynetdicom (``_config.STORE_RECV_CHUNKED_DATASET``) streams each dataset to a
    ``NamedTemporaryFile`` of the system temporary folder and has no setting for where."""
    from pynetdicom import _config, dimse_messages
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = new_file


def discard_partial(event) -> None:
    """Delete the spooled part of a dataset cut short (run when the connection closes)."""
    message = getattr(event.assoc.dimse, "message", None)
    part = getattr(message, "_data_set_file", None)   # pynetdicom's file for the message being received
    if part is None:
        return
    try:
        size = part.tell()
        part.close()
        Path(part.name).unlink(missing_ok=True)
    except (OSError, ValueError):
        return
    message._data_set_file = None
    log.warning("association from %s ended in the middle of a dataset: the %s received were deleted",
                _peer(event.assoc), limits.fmt_mb(size))


# ------------------------------------------------------------------------------------------------
# The receiver

HEADERS_KEPT = 512                   # source headers kept between arrival and forwarding
HEADER_KEPT_MAX_BYTES = 256 * 1024   # a larger header (a few kB is usual) is read again from the store instead


class HeaderCache:
    """The headers parsed when images arrive, kept (at most ``size``, oldest dropped; none over
    ``HEADER_KEPT_MAX_BYTES``, so memory stays bounded) until their results are forwarded, so that
    forwarding neither reads nor parses the file again. A header not kept, or one from before a
    restart, is read from the store instead."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._headers: "OrderedDict[str, Any]" = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, sha256: str, header, header_bytes: int) -> None:
        if self.size <= 0 or header_bytes > HEADER_KEPT_MAX_BYTES:
            return
        with self._lock:
            self._headers[sha256] = header
            self._headers.move_to_end(sha256)
            while len(self._headers) > self.size:
                self._headers.popitem(last=False)

    def take(self, sha256: str):
        with self._lock:
            return self._headers.pop(sha256, None)


class Receiver:
    """The C-STORE/C-ECHO service and its scoring thread (one store, one model)."""

    def __init__(self, store, predictor, model_key: str, *, aet: str = "TRIAGE",
                 allowed_aets: Sequence[str] = (), forward: Optional[Destination] = None,
                 threshold: Optional[float] = None, batch_size: int = 8,
                 network: Optional[NetworkLimits] = None, min_free_bytes: Optional[int] = None) -> None:
        from engine.pacs.dicom_out import RADIOGRAPH_STORAGE
        self.store = store
        self.predictor = predictor
        self.model_key = model_key
        self.aet = aet
        self.allowed_aets = [a.strip() for a in allowed_aets if a.strip()]
        self.forward = forward
        self.threshold = threshold
        self.batch_size = batch_size
        self.network = network or NetworkLimits.from_settings()
        self.min_free_bytes = settings().store_min_free_mb * limits.MB if min_free_bytes is None \
            else min_free_bytes
        self.gate = Gatekeeper(self.network)
        self.spool = Spool(store.root)
        self.storage_classes = dict(RADIOGRAPH_STORAGE)
        self._queue: "queue.Queue[Optional[tuple[str, str]]]" = queue.Queue()
        self._stopping = threading.Event()
        self._writer = None
        self._server = None
        self._worker: Optional[threading.Thread] = None
        self.model_label = predictor.card.label
        self.courier = self._courier() if forward is not None else None
        self.stats = {"received": 0, "refused": 0, "scored": 0, "forwarded": 0}
        self._headers = HeaderCache(HEADERS_KEPT if forward is not None else 0)

    def _courier(self):
        """The outbox's courier to ``self.forward``: objects written again from the store when retried."""
        from engine.pacs.outbox import Courier, rebuild
        return Courier(self.store, str(self.forward),
                       lambda entry: rebuild(self.store, self.writer, entry, self.model_key),
                       lambda objects: send(objects, self.forward, self.aet))

    # -------------------------------------------------------------------------------- DIMSE side

    def _ae(self):
        from pynetdicom import AE, AllStoragePresentationContexts
        _spool_incoming(self.spool.new_file)
        ae = AE(ae_title=self.aet)
        ae.require_called_aet = True
        if self.allowed_aets:
            ae.require_calling_aet = list(self.allowed_aets)
        self.gate.configure(ae)
        # Every storage class is negotiated so that a PACS sending a whole study (a CT scout, a report
        # beside the radiographs) gets a DIMSE status per object instead of a failed association;
        # only radiographs are kept (handle_store answers 0x0122 for the rest).
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION)
        return ae

    def _handlers(self):
        from pynetdicom import evt
        return [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_C_ECHO, self.handle_echo),
                (evt.EVT_ACCEPTED, self._on_accepted), (evt.EVT_REJECTED, self._on_rejected),
                (evt.EVT_ABORTED, self._on_aborted), (evt.EVT_CONN_CLOSE, discard_partial),
                *self.gate.handlers()]

    def _on_accepted(self, event) -> None:
        rejected = event.assoc.rejected_contexts
        if rejected:
            from pydicom.uid import UID
            names = sorted({UID(c.abstract_syntax).name for c in rejected})
            log.debug("association from %s: presentation context(s) not accepted: %s", _peer(event.assoc),
                      ", ".join(names))

    def _on_rejected(self, event) -> None:
        """pynetdicom's own rejections (ours are logged where they are made)."""
        rj = event.assoc.acceptor.primitive
        reason = {(0x01, 0x03): "calling AE title not allowed (--allow-aet)",
                  (0x01, 0x07): f"called AE title is not {self.aet}",
                  (0x03, 0x02): "too many connections open (local limit exceeded)",
                  }.get((getattr(rj, "result_source", None), getattr(rj, "diagnostic", None)), "refused")
        log.warning("association from %s rejected: %s", _peer(event.assoc), reason)

    def _on_aborted(self, event) -> None:
        if self.gate.cut_short(event.assoc):
            return                                 # logged with its reason already
        why = ""
        if self._stopping.is_set():
            why = ": the receiver is stopping"
        elif event.assoc.dul.idle_timer_expired():
            why = f": silent for {self.network.idle_timeout_s:g} s (CXR_RECEIVE_IDLE_TIMEOUT_S)"
        log.warning("association from %s aborted%s", _peer(event.assoc), why)

    def handle_echo(self, event) -> int:
        return SUCCESS

    def handle_store(self, event) -> int:
        """Keep the dataset as sent (no re-encoding), list it in the inbox, queue it for scoring."""
        peer = _peer(event.assoc)
        try:
            return self._store(event, peer)
        except OSError as exc:
            log.error("C-STORE from %s failed: cannot keep the file (%s)", peer, type(exc).__name__)
            return OUT_OF_RESOURCES
        except Exception as exc:           # never take the service down for one dataset
            log.error("C-STORE from %s failed: %s", peer, type(exc).__name__)
            return PROCESSING_FAILURE

    def _refuse(self, peer: str, status: int, reason: str) -> int:
        log.warning("C-STORE from %s refused (0x%04X): %s", peer, status, reason)
        self.stats["refused"] += 1
        return status

    def _store(self, event, peer: str) -> int:
        from engine.pacs.dicom_out import NotDicomError, source_header_sized
        from pydicom.uid import UID
        requested = str(event.request.AffectedSOPClassUID)
        not_kept = f"{UID(requested).name} is not a radiograph storage class"
        if requested not in self.storage_classes and requested not in own_series():   # an SR may be ours
            return self._refuse(peer, REFUSED_SOP_CLASS, not_kept)
        size = self._size(event)
        if size > limits.MAX_FILE_BYTES:
            return self._refuse(peer, OUT_OF_RESOURCES, f"{limits.fmt_mb(size)} is over the "
                                f"{limits.fmt_mb(limits.MAX_FILE_BYTES)} limit for one image")
        short = self._free_space_short(size)
        if short:
            return self._refuse(peer, OUT_OF_RESOURCES, short)
        data = self._read(event)
        try:
            header, header_bytes = source_header_sized(data, "the dataset")
        except NotDicomError as exc:
            return self._refuse(peer, CANNOT_UNDERSTAND, str(exc).replace("the dataset: ", ""))
        if str(header.SOPClassUID) != requested:
            return self._refuse(peer, DATASET_MISMATCH, "the dataset's SOP class does not match the request")
        name = study_name(self._calling(event), str(header.StudyInstanceUID), str(header.SOPInstanceUID))
        if own_result(header, self.model_label):
            log.info("C-STORE from %s: %s is one of our own result objects; acknowledged, not kept", peer, name)
            return SUCCESS
        if requested not in self.storage_classes:
            return self._refuse(peer, REFUSED_SOP_CLASS, not_kept)
        sha = self._keep(data, name)
        self._headers.keep(sha, header, header_bytes)
        log.info("received %s from %s (%s, %s)", name, peer, header.get("Modality", "?"), limits.fmt_mb(len(data)))
        return SUCCESS

    def _keep(self, data: bytes, name: str) -> str:
        sha = self.store.put_file(data)
        if not self.store.has_study(None, name, sha):
            self._add_row(data, name, sha)
        self.stats["received"] += 1
        self._queue.put((sha, name))
        return sha

    def _add_row(self, data: bytes, name: str, sha: str) -> None:
        """A new inbox row; when other content arrived under the same name (SOP Instance UID) before,
        both rows say so in their warnings."""
        earlier = [(i, s) for i, s in self.store.inbox_files_named(name) if s != sha]
        if not earlier:
            self.store.add_study(None, name, sha, source=SOURCE_RECEIVER)
            return
        mine = pixel_digest(data)
        differ = [i for i, s in earlier if self._digest(s) != mine]
        rows = ", ".join(str(i) for i, _ in earlier)
        if differ:
            note = (f"conflict: an image with the same SOP Instance UID and different pixel data arrived earlier "
                    f"(row {rows}); check which one is right before relying on either")
        else:
            note = f"the same image (SOP Instance UID and pixel data) arrived earlier with another header (row {rows})"
        new_id = self.store.add_study(None, name, sha, source=SOURCE_RECEIVER, conflict=note)
        for i in differ:
            self.store.add_conflict(i, f"conflict: a later image with the same SOP Instance UID has different "
                                       f"pixel data (row {new_id})")
        log.warning("received %s again with %s: kept as its own row, with a warning", name,
                    "different pixel data" if differ else "the same pixel data and another header")

    def _digest(self, sha: str) -> str:
        try:
            return pixel_digest(self.store.read_file(sha))
        except Exception:                      # evicted: cannot be compared, so it counts as different
            return ""

    def _free_space_short(self, size: int) -> str:
        """Why keeping ``size`` more bytes would take the store under its free-space floor ("" if not)."""
        free = shutil.disk_usage(self.store.root).free
        if free - size >= self.min_free_bytes:
            return ""
        return (f"the store's file system has {limits.fmt_mb(free)} free; keeping {limits.fmt_mb(size)} would "
                f"leave less than the {limits.fmt_mb(self.min_free_bytes)} floor (CXR_STORE_MIN_FREE_MB)")

    @staticmethod
    def _size(event) -> int:
        try:
            return event.dataset_path.stat().st_size
        except AttributeError:                 # not chunked (a caller that turned it off)
            return len(event.encoded_dataset(include_meta=False))

    @staticmethod
    def _read(event) -> bytes:
        try:
            return event.dataset_path.read_bytes()
        except AttributeError:
            return event.encoded_dataset(include_meta=True)

    @staticmethod
    def _calling(event) -> str:
        import re
        aet = (event.assoc.requestor.ae_title or "unknown").strip()
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", aet) or "unknown"

    # -------------------------------------------------------------------------------- scoring side

    @property
    def writer(self):
        if self._writer is None:
            from engine.pacs.dicom_out import ResultWriter
            self._writer = ResultWriter(self.predictor, self.threshold,
                                        None if self.threshold is None else "--threshold given to the receiver")
        return self._writer

    def _outbox_rows(self, batch: dict[str, str]) -> dict[str, list[tuple[int, str]]]:
        """(study row, destination) to queue with each file's result."""
        rows: dict[str, list[tuple[int, str]]] = {}
        for sha, name in batch.items():
            sid = self.store.study_id(None, name, sha)
            if sid is not None:
                rows[sha] = [(sid, str(self.forward))]
        return rows

    def _score(self, batch: dict[str, str]) -> None:
        from engine.worklist.ingest import score_files

        def after(sha: str, pred) -> None:
            name = batch[sha]
            self.stats["scored"] += 1
            if pred.ok:
                thr = self.writer.threshold
                log.info("scored %s: P(pneumonia) %.3f (%s at %.3f)", name, pred.probability,
                         "flagged" if flag_rule(pred.probability, thr) else "not flagged", thr)
            else:
                log.warning("scored %s: refused by the decoder (%s)", name, pred.result.message[:300])
            if self.forward is not None and pred.ok:
                self._forward(sha, name, pred)

        score_files(self.store, batch, self.predictor, self.model_key, batch_size=self.batch_size,
                    on_prediction=after, rescore=self.forward is not None,
                    outbox=self._outbox_rows(batch) if self.forward is not None else None)

    def _forward(self, sha: str, name: str, pred) -> None:
        """Send the results just queued in the outbox for ``sha``; a failure is recorded there, and retried."""
        header = self._headers.take(sha)      # parsed on arrival: the file is not read again to forward it
        sent = self.courier.send_now(sha, lambda: self.writer.objects(
            header if header is not None else self.store.read_file(sha), pred))
        if sent:
            self.stats["forwarded"] += sent
            log.info("results of %s sent to %s", name, self.forward)
        else:
            log.info("results of %s are in the outbox for %s (sent before, or to be retried)", name, self.forward)

    def _next_batch(self) -> Optional[dict[str, str]]:
        """The next item and what else has arrived meanwhile; {} when nothing arrived within the outbox's
        poll; None once stopping (the rest stay queued in the store, unscored, for the next start)."""
        try:
            item = self._queue.get(timeout=OUTBOX_POLL_S if self.courier is not None else None)
        except queue.Empty:
            return None if self._stopping.is_set() else {}
        batch: dict[str, str] = {}
        while item is not None and not self._stopping.is_set():
            batch[item[0]] = item[1]
            if len(batch) >= self.batch_size:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        return None if self._stopping.is_set() or not batch else batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                if batch:
                    self._score(batch)
                if self.courier is not None:
                    self.courier.send_due(self._stopping.is_set)
            except Exception:                      # a bug here must not stop the service
                log.exception("scoring a batch of %d image(s), or sending the outbox, failed", len(batch))

    def backlog(self) -> dict[str, str]:
        """Received images with no result for this model yet (a restart, a crash)."""
        return {r.sha256: r.name for r in self.store.studies(None, self.model_key)
                if r.inbox and r.source == SOURCE_RECEIVER and r.sha256 and r.result is None}

    # -------------------------------------------------------------------------------- life cycle

    def start(self, host: str = "127.0.0.1", port: int = 11112):
        """Clean the spool, start the scoring thread and the server (non-blocking); returns the server."""
        removed = self.spool.open()
        if removed:
            log.info("deleted %d leftover(s) of an earlier receiver from the spool (%s)", removed, self.spool.root)
        if self.forward is not None:
            due = self.store.outbox_retry(str(self.forward))
            if due:
                log.info("%d result(s) in the outbox not yet sent to %s: sending them", due, self.forward)
        self._worker = threading.Thread(target=self._work, name="receiver-scoring", daemon=True)
        self._worker.start()
        for sha, name in self.backlog().items():
            self._queue.put((sha, name))
        self._server = self._ae().start_server((host, port), block=False, evt_handlers=self._handlers())
        return self._server

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop accepting, end the associations, let the batch being scored finish; queued images stay
        in the store unscored."""
        self._stopping.set()
        if self._server is not None:
            ae = self._server.ae
            self._server.shutdown()
            self.gate.close_all(ae, grace_s)
            self._server = None
        if self._worker is not None:
            self._queue.put(None)                  # wakes the worker if it waits for an image
            self._worker.join(timeout=120)
            if self._worker.is_alive():
                log.error("the images being scored did not finish in 120 s; exiting without them")
            self._worker = None
        unscored = len(self.backlog())
        if unscored:
            log.info("%d received image(s) not scored yet: they will be scored at the next start", unscored)
        counts = self.store.outbox_counts()
        if self.forward is not None and counts["pending"] + counts["failed"]:
            log.info("%d result(s) in the outbox not sent yet: they will be sent at the next start",
                     counts["pending"] + counts["failed"])
        self.spool.close()


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.receive", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", help="store folder (default: $CXR_STORE_DIR or the user's data folder)")
    p.add_argument("--aet", default="TRIAGE", help="our AE title (default TRIAGE)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=11112, help="port (default 11112)")
    p.add_argument("--checkpoint", help="checkpoint folder (default: the shipped model)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default=None,
                   help="inference backend (default: $CXR_BACKEND or auto)")
    p.add_argument("--allow-aet", action="append", default=None,
                   help="calling AE title allowed to send (repeatable; default: $CXR_RECEIVE_ALLOW_AETS, else any)")
    p.add_argument("--forward-to", help="send each result (SR + heatmap capture) to AET@HOST:PORT (C-STORE) "
                                        "or an http(s):// DICOMweb root (STOW-RS)")
    p.add_argument("--threshold", type=arguments.threshold, help="decision threshold in the reports (default: the model card's)")
    p.add_argument("--debug", action="store_true",
                   help="debug logging, the DICOM libraries' included: their lines quote UIDs and patient "
                        "names, so the log then holds identifiers")
    return p


def configure_logging(debug: bool = False) -> None:
    """Our INFO lines (which never quote an identifier); the libraries' warnings only, unless ``debug``."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)
    from pynetdicom import _config
    _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = debug
    if debug:
        log.warning("--debug: the DICOM libraries' lines in this log quote UIDs and patient identifiers")


def _usage_error(args) -> Optional[str]:
    if not 0 < args.port < 65536:
        return f"--port must be 1-65535, got {args.port}"
    if not 0 < len(args.aet) <= 16:
        return "--aet must be 1-16 characters"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging(args.debug)
    problem = _usage_error(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    forward = None
    if args.forward_to:
        try:
            forward = parse_destination(args.forward_to)
        except ValueError as exc:
            print(f"error: --forward-to: {exc}", file=sys.stderr)
            return 2
    allowed = args.allow_aet if args.allow_aet is not None else \
        list(settings().receive_allow_aets)

    from engine.errors import CheckpointError
    from engine.worklist.ingest import model_key
    from engine.inference.predictor import Predictor
    from engine.worklist.store import Store
    try:
        predictor = Predictor.from_checkpoint(args.checkpoint, backend=args.backend)
        key = model_key(args.checkpoint)
    except CheckpointError as exc:
        print(f"error: cannot load the model: {exc}", file=sys.stderr)
        return 3
    store = Store(args.store)
    receiver = Receiver(store, predictor, key, aet=args.aet, allowed_aets=allowed, forward=forward,
                        threshold=args.threshold)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        receiver.start(args.host, args.port)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    net = receiver.network
    log.info("listening on %s:%d as %s; store %s; model %s %s (%s); calling AE titles allowed: %s; results to: %s",
             args.host, args.port, args.aet, store.root, predictor.card.name, predictor.card.version,
             predictor.backend_label, ", ".join(allowed) if allowed else "any", forward or "nowhere")
    log.info("limits: idle connections closed after %g s; %d associations at once, %d from one address; "
             "%s per image; %s kept free on the store's file system", net.idle_timeout_s, net.max_associations,
             net.max_per_host, limits.fmt_mb(limits.MAX_FILE_BYTES), limits.fmt_mb(receiver.min_free_bytes))
    stop.wait()
    log.info("stopping")
    receiver.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
