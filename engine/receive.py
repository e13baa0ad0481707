"""A DICOM receiver: C-STORE and C-ECHO service that scores radiographs into the worklist store.

    python -m engine.receive --store DIR [--aet TRIAGE] [--port 11112] [--host 127.0.0.1]
                             [--checkpoint DIR] [--allow-aet AET ...] [--forward-to DEST]
                             [--threshold T]

Every image received is kept in the store's file cache and listed in the store's shared inbox (which
every dashboard worklist shows) under a name that groups it by study without quoting a UID
(``AET/study-<hash>/image-<hash>.dcm``), then scored by a single background thread through the
predictor's decoding workers (a decoder that crashes costs that image only). With ``--forward-to``
(``AET@HOST:PORT`` for C-STORE, or an ``http(s)://`` DICOMweb root for STOW-RS), the structured
report and the heatmap capture of each scored image (:mod:`engine.dicom_out`) go there.

* Only radiograph storage SOP classes are kept (CR, DX for presentation and for processing, Secondary
  Capture). Every storage class is negotiated, so that a PACS sending a whole study gets an answer per
  object: anything else (CT, MR, ...) is refused with DIMSE status 0x0122 (SOP class not supported) and
  a log line naming the class. A dataset whose SOP class does not match the request is refused with
  0xA900, one that cannot be parsed with 0xC210, one over the size limit (``CXR_MAX_FILE_MB``) with
  0xA700 (datasets stream to a temporary file, so memory stays flat); a decoder failure is reported on
  the study's row (the image was received and kept). Our own result objects sent back to us (a
  routing loop) are acknowledged and dropped.
* ``--allow-aet`` (repeatable, or ``$CXR_RECEIVE_ALLOW_AETS``, comma-separated): only these calling AE
  titles may associate; others are rejected (and logged). The called AE title must be ours.
* Identifiers (patient name, ID, birth date, accession number, institution) are stored apart by the
  store and never written to the log: log lines name images by the same hashed names.
* Images received while the model was busy or before a restart are scored (and forwarded) at start.

SIGTERM or Ctrl-C stops accepting, lets the image being scored finish, and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import sys
import threading
from typing import Optional, Sequence

from engine import limits
from engine.backends import CHOICES as BACKEND_CHOICES
from engine.pacs import SOURCE_RECEIVER, Destination, PacsError, parse_destination, send, study_name
from engine.metrics import flagged as flag_rule

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


class Receiver:
    """The C-STORE/C-ECHO service and its scoring thread (one store, one model)."""

    def __init__(self, store, predictor, model_key: str, *, aet: str = "TRIAGE",
                 allowed_aets: Sequence[str] = (), forward: Optional[Destination] = None,
                 threshold: Optional[float] = None, batch_size: int = 8) -> None:
        from engine.dicom_out import RADIOGRAPH_STORAGE
        self.store = store
        self.predictor = predictor
        self.model_key = model_key
        self.aet = aet
        self.allowed_aets = [a.strip() for a in allowed_aets if a.strip()]
        self.forward = forward
        self.threshold = threshold
        self.batch_size = batch_size
        self.storage_classes = dict(RADIOGRAPH_STORAGE)
        self._queue: "queue.Queue[Optional[tuple[str, str]]]" = queue.Queue()
        self._writer = None
        self._server = None
        self._worker: Optional[threading.Thread] = None
        self.stats = {"received": 0, "refused": 0, "scored": 0, "forwarded": 0, "forward_failed": 0}

    # -------------------------------------------------------------------------------- DIMSE side

    def _ae(self):
        from pynetdicom import AE, AllStoragePresentationContexts, _config
        # Datasets stream to a temporary file as they arrive (memory stays flat whatever their size);
        # the handler checks the size before reading one.
        _config.STORE_RECV_CHUNKED_DATASET = True
        ae = AE(ae_title=self.aet)
        ae.require_called_aet = True
        if self.allowed_aets:
            ae.require_calling_aet = list(self.allowed_aets)
        ae.maximum_associations = 8
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 60
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
                (evt.EVT_ABORTED, self._on_aborted)]

    @staticmethod
    def _peer(event) -> str:
        req = event.assoc.requestor
        return f"{req.ae_title or '?'} ({req.address})"

    def _on_accepted(self, event) -> None:
        rejected = event.assoc.rejected_contexts
        if rejected:
            from pydicom.uid import UID
            names = sorted({UID(c.abstract_syntax).name for c in rejected})
            log.debug("association from %s: presentation context(s) not accepted: %s", self._peer(event),
                      ", ".join(names))

    def _on_rejected(self, event) -> None:
        log.warning("association from %s rejected (calling AE title not allowed, or called AE title is not %s)",
                    self._peer(event), self.aet)

    def _on_aborted(self, event) -> None:
        log.warning("association from %s aborted", self._peer(event))

    def handle_echo(self, event) -> int:
        return SUCCESS

    def handle_store(self, event) -> int:
        """Keep the dataset as sent (no re-encoding), list it in the inbox, queue it for scoring."""
        from engine.dicom_out import MANUFACTURER, NotDicomError, source_header
        peer = self._peer(event)
        try:
            requested = str(event.request.AffectedSOPClassUID)
            if requested not in self.storage_classes:
                from pydicom.uid import UID
                log.warning("C-STORE from %s refused (0x0122): %s is not a radiograph storage class", peer,
                            UID(requested).name)
                self.stats["refused"] += 1
                return REFUSED_SOP_CLASS
            size = self._size(event)
            if size > limits.MAX_FILE_BYTES:
                log.warning("C-STORE from %s refused: %s is over the %s limit for one image", peer,
                            limits.fmt_mb(size), limits.fmt_mb(limits.MAX_FILE_BYTES))
                self.stats["refused"] += 1
                return OUT_OF_RESOURCES
            data = self._read(event)
            try:
                header = source_header(data, "the dataset")
            except NotDicomError as exc:
                log.warning("C-STORE from %s refused: %s", peer, str(exc).replace("the dataset: ", ""))
                self.stats["refused"] += 1
                return CANNOT_UNDERSTAND
            if str(header.SOPClassUID) != requested:
                log.warning("C-STORE from %s refused: the dataset's SOP class does not match the request", peer)
                self.stats["refused"] += 1
                return DATASET_MISMATCH
            name = study_name(self._calling(event), str(header.StudyInstanceUID), str(header.SOPInstanceUID))
            if str(header.get("Manufacturer", "")) == MANUFACTURER:
                log.info("C-STORE from %s: %s is one of our own result objects; acknowledged, not scored",
                         peer, name)
                return SUCCESS
            sha = self.store.put_file(data)
            if not self.store.has_study(None, name, sha):
                self.store.add_study(None, name, sha, source=SOURCE_RECEIVER)
            self.stats["received"] += 1
            log.info("received %s from %s (%s, %s)", name, peer, header.get("Modality", "?"),
                     limits.fmt_mb(len(data)))
            self._queue.put((sha, name))
            return SUCCESS
        except OSError as exc:
            log.error("C-STORE from %s failed: cannot keep the file (%s)", peer, type(exc).__name__)
            return OUT_OF_RESOURCES
        except Exception as exc:           # never take the service down for one dataset
            log.error("C-STORE from %s failed: %s", peer, type(exc).__name__)
            return PROCESSING_FAILURE

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
            from engine.dicom_out import ResultWriter
            self._writer = ResultWriter(self.predictor, self.threshold,
                                        None if self.threshold is None else "--threshold given to the receiver")
        return self._writer

    def _score(self, batch: dict[str, str]) -> None:
        from engine.ingest import score_files

        def after(sha: str, pred) -> None:
            name = batch[sha]
            self.stats["scored"] += 1
            if pred.ok:
                thr = self.writer.threshold
                log.info("scored %s: P(pneumonia) %.3f (%s at %.3f)", name, pred.probability,
                         "flagged" if flag_rule(pred.probability, thr) else "not flagged", thr)
            else:
                log.warning("scored %s: refused by the decoder (%s)", name,
                            pred.message.replace(pred.name + ": ", "")[:300])
            if self.forward is not None and pred.ok:
                self._forward(sha, name, pred)

        score_files(self.store, batch, self.predictor, self.model_key, batch_size=self.batch_size,
                    on_prediction=after, rescore=self.forward is not None)

    def _forward(self, sha: str, name: str, pred) -> None:
        from engine.dicom_out import NotDicomError
        try:
            objects = self.writer.objects(self.store.read_file(sha), pred)
            send(objects, self.forward, self.aet)
            self.stats["forwarded"] += len(objects)
            log.info("results of %s sent to %s (%d object(s))", name, self.forward, len(objects))
        except (PacsError, NotDicomError) as exc:
            self.stats["forward_failed"] += 1
            log.error("results of %s not sent: %s", name, exc)
        except Exception as exc:
            self.stats["forward_failed"] += 1
            log.error("results of %s not sent: %s", name, type(exc).__name__)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = {item[0]: item[1]}
            while len(batch) < self.batch_size:     # take what else has arrived meanwhile
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch[nxt[0]] = nxt[1]
            try:
                self._score(batch)
            except Exception:                      # a bug here must not stop the service
                log.exception("scoring a batch of %d image(s) failed", len(batch))

    def backlog(self) -> dict[str, str]:
        """Received images with no result for this model yet (a restart, a crash)."""
        return {r.sha256: r.name for r in self.store.studies(None, self.model_key)
                if r.inbox and r.source == SOURCE_RECEIVER and r.sha256 and r.result is None}

    # -------------------------------------------------------------------------------- life cycle

    def start(self, host: str = "127.0.0.1", port: int = 11112):
        """Start the scoring thread and the server (non-blocking); returns the server."""
        self._worker = threading.Thread(target=self._work, name="receiver-scoring", daemon=True)
        self._worker.start()
        for sha, name in self.backlog().items():
            self._queue.put((sha, name))
        self._server = self._ae().start_server((host, port), block=False, evt_handlers=self._handlers())
        return self._server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=120)
            self._worker = None


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
    p.add_argument("--threshold", type=float, help="decision threshold in the reports (default: the model card's)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pynetdicom's debug dumps would print datasets, highdicom's INFO lines quote source UIDs: warnings only.
    for name in ("pynetdicom", "highdicom"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not 0 < args.port < 65536:
        print(f"error: --port must be 1-65535, got {args.port}", file=sys.stderr)
        return 2
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        print(f"error: --threshold must be between 0 and 1, got {args.threshold}", file=sys.stderr)
        return 2
    if not 0 < len(args.aet) <= 16:
        print("error: --aet must be 1-16 characters", file=sys.stderr)
        return 2
    forward = None
    if args.forward_to:
        try:
            forward = parse_destination(args.forward_to)
        except ValueError as exc:
            print(f"error: --forward-to: {exc}", file=sys.stderr)
            return 2
    allowed = args.allow_aet if args.allow_aet is not None else \
        [a for a in os.environ.get("CXR_RECEIVE_ALLOW_AETS", "").split(",") if a.strip()]

    from engine.errors import CheckpointError
    from engine.ingest import model_key
    from engine.predictor import Predictor
    from engine.store import Store
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
    log.info("listening on %s:%d as %s; store %s; model %s %s (%s); calling AE titles allowed: %s; results to: %s",
             args.host, args.port, args.aet, store.root, predictor.card.name, predictor.card.version,
             predictor.backend_label, ", ".join(allowed) if allowed else "any", forward or "nowhere")
    stop.wait()
    log.info("stopping")
    receiver.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
