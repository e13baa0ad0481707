"""The PACS side: DICOMweb query and pull into the worklist store, results sent back.

    python -m engine.pacs query --url URL [--date-from YYYYMMDD] [--date-to YYYYMMDD] [--modality CR]
                                [--accession A] [--include-identifiers]
    python -m engine.pacs pull  --url URL --store DIR [the same filters] [--study UID] [--checkpoint DIR]
    python -m engine.pacs send  --store DIR --to DEST [--study-row ID ...] [--checkpoint DIR] [--threshold T]
    python -m engine.pacs outbox --store DIR [--retry]

* ``query`` asks a DICOMweb server (QIDO-RS) for studies by date range, modality and accession
  number and prints one line per study (the study UID, date, modalities, number of instances; patient
  identifiers only with ``--include-identifiers``).
* ``pull`` retrieves (WADO-RS, in the stored transfer syntax) the radiograph instances (CR, DX by
  default, or ``--modality``) of the matching studies into the store's shared inbox, which every
  dashboard worklist lists, and scores them (unless ``--no-score``) through the same decoding
  workers as every other source. Each instance streams in; one past ``CXR_MAX_FILE_MB`` is refused
  while it arrives (a row says so, nothing is kept) and the others are still pulled.
* ``send`` writes the structured report and the heatmap capture (:mod:`engine.pacs.dicom_out`) of scored
  inbox studies and sends them to a destination: ``AET@HOST:PORT`` (C-STORE, pynetdicom) or an
  ``http(s)://`` DICOMweb root (STOW-RS). With the reviewer's decision when there is one.
* ``outbox`` lists the results the receiver forwards (:mod:`engine.pacs.outbox`): pending, sent and
  failed, with the reason of the last failure and the next try (no identifier); ``--retry`` makes every
  unsent one due now (the running receiver sends it within seconds, else the next one at its start).

Exit codes: 0 done, 2 usage error, 3 model cannot be loaded, 4 the server could not be reached or
refused (the message says which). Nothing identifying is printed unless asked.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import sys
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

from pydicom.dataset import Dataset
from engine.errors import EngineError, ImageTooLargeError, PacsError, PacsUnreachable  # noqa: F401  (this module's interface)
from engine.inputs import limits
from engine.inputs import arguments

log = logging.getLogger(__name__)

DEFAULT_MODALITIES = ("CR", "DX")
SOURCE_DICOMWEB = "dicomweb"
SOURCE_RECEIVER = "dicom-receiver"
_DEST = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")


# ------------------------------------------------------------------------------------------------
# Destinations

@dataclass(frozen=True)
class Destination:
    """Where results go: a DICOM node (C-STORE) or a DICOMweb root (STOW-RS)."""

    kind: str                      # "dimse" or "dicomweb"
    aet: str = ""
    host: str = ""
    port: int = 0
    url: str = ""

    def __str__(self) -> str:
        return self.url if self.kind == "dicomweb" else f"{self.aet}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """``AET@HOST:PORT`` or ``http(s)://host/dicom-web``; ValueError otherwise."""
    text = (text or "").strip()
    if text.startswith(("http://", "https://")):
        return Destination("dicomweb", url=text.rstrip("/"))
    m = _DEST.match(text)
    if not m or not 0 < int(m["port"]) < 65536:
        raise ValueError(f"'{text}' is neither AET@HOST:PORT nor an http(s):// DICOMweb URL")
    return Destination("dimse", aet=m["aet"], host=m["host"], port=int(m["port"]))


def c_store(datasets: Sequence[Dataset], dest: Destination, calling_aet: str = "TRIAGE",
            timeout: float = 30) -> None:
    """Send ``datasets`` by C-STORE in one association; PacsError on refusal or failure."""
    from pynetdicom import AE
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for ds in datasets:
        ts = ds.file_meta.TransferSyntaxUID if getattr(ds, "file_meta", None) else None
        ae.add_requested_context(ds.SOPClassUID, [ts] if ts else None)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.aet)
    if not assoc.is_established:
        raise PacsUnreachable(f"{dest}: association refused or not reachable")
    failures = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(getattr(status, "Status", -1)) if status else -1
            if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                failures.append(f"0x{code & 0xFFFF:04X}" if code >= 0 else "no response")
    finally:
        assoc.release()
    if failures:
        raise PacsError(f"{dest}: C-STORE failed for {len(failures)} of {len(datasets)} object(s) "
                        f"(status {', '.join(failures)})")


def _client(url: str, timeout: float = 30):
    from dicomweb_client.api import DICOMwebClient
    return DICOMwebClient(url.rstrip("/"), timeout=timeout)


def stow(datasets: Sequence[Dataset], url: str) -> None:
    """Send ``datasets`` by STOW-RS; PacsError on refusal or failure."""
    import requests
    try:
        _client(url).store_instances(list(datasets))
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise PacsUnreachable(f"{url}: STOW-RS failed, not reachable ({type(exc).__name__})") from None
    except Exception as exc:
        raise PacsError(f"{url}: STOW-RS failed ({type(exc).__name__}: {_short(exc)})") from None


def send(datasets: Sequence[Dataset], dest: Destination, calling_aet: str = "TRIAGE") -> None:
    if not datasets:
        return
    if dest.kind == "dicomweb":
        stow(datasets, dest.url)
    else:
        c_store(datasets, dest, calling_aet)


def _short(exc: Exception) -> str:
    """An exception's first line, without URLs' query strings (they may hold an accession number)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return re.sub(r"\?\S*", "?…", text)[:200]


# ------------------------------------------------------------------------------------------------
# DICOMweb query and pull

@dataclass(frozen=True)
class StudyHit:
    study_uid: str
    date: str
    modalities: str
    instances: str
    patient_name: str = ""
    patient_id: str = ""
    accession: str = ""


def _value(item: dict, tag: str) -> str:
    v = (item.get(tag) or {}).get("Value") or [""]
    v = v[0]
    if isinstance(v, dict):             # a person name
        return str(v.get("Alphabetic", ""))
    return str(v)


def _values(item: dict, tag: str) -> str:
    return "\\".join(str(v) for v in ((item.get(tag) or {}).get("Value") or []))


def query(url: str, *, date_from: str = "", date_to: str = "", modality: str = "", accession: str = "",
          study_uid: str = "", limit: int = 200) -> list[StudyHit]:
    """Studies matching the filters (QIDO-RS); PacsError when the server cannot be asked."""
    filters: dict[str, str] = {}
    if date_from or date_to:
        filters["StudyDate"] = f"{date_from}-{date_to}"
    if modality:
        filters["ModalitiesInStudy"] = modality
    if accession:
        filters["AccessionNumber"] = accession
    if study_uid:
        filters["StudyInstanceUID"] = study_uid
    try:
        found = _client(url).search_for_studies(search_filters=filters, limit=limit,
                                                fields=["ModalitiesInStudy", "NumberOfStudyRelatedInstances"])
    except Exception as exc:
        raise PacsError(f"{url}: QIDO-RS query failed ({type(exc).__name__}: {_short(exc)})") from None
    return [StudyHit(_value(s, "0020000D"), _value(s, "00080020"), _values(s, "00080061"),
                     _value(s, "00201208"), _value(s, "00100010"), _value(s, "00100020"), _value(s, "00080050"))
            for s in found]


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def study_name(prefix: str, study_uid: str, sop_uid: str) -> str:
    """A row name that groups images by study without quoting a UID (UIDs can identify)."""
    return f"{prefix}/study-{_short_hash(study_uid)}/image-{_short_hash(sop_uid)}.dcm"


# Headers and boundaries around one instance in a multipart/related response: read past the limit by
# at most this much before the instance is refused.
MULTIPART_SLACK = 64 * 1024
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _too_large(name: str, size: int, max_bytes: int, more: bool = False) -> ImageTooLargeError:
    """The refusal of one instance of ``size`` bytes (``more``: at least) over ``max_bytes``."""
    what, limit = limits.fmt_mb(size), limits.fmt_mb(max_bytes)
    if what == limit:                          # just over: the bytes say it
        what, limit = f"{size:,} bytes", f"{max_bytes:,}-byte"
    return ImageTooLargeError(name, f"{'more than ' if more else ''}{what} is over the {limit} limit for one "
                                    "image (CXR_MAX_FILE_MB): not retrieved, nothing kept")


def _read_bounded(chunks: Iterable[bytes], bound: int) -> Optional[bytearray]:
    """The chunks joined, or None as soon as they pass ``bound`` bytes (the rest is never read)."""
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) > bound:
            return None
    return body


def _first_part(body: bytearray, content_type: str) -> bytes:
    """The first part of a multipart/related body (the body itself when it is not multipart)."""
    media, _, params = content_type.partition(";")
    found = re.search(r'boundary="?([^";]+)"?', params, re.IGNORECASE)
    if media.strip().lower() != "multipart/related" or not found:
        return bytes(body)
    delimiter = b"--" + found[1].strip().encode("ascii", "replace")
    start = body.find(delimiter)
    head_end = body.find(b"\r\n\r\n", start) if start >= 0 else -1
    if head_end < 0:
        raise ValueError("the multipart response has no part")
    end = body.find(b"\r\n" + delimiter, head_end + 4)
    return bytes(body[head_end + 4: end if end >= 0 else len(body)])


def retrieve_bounded(session, url: str, uids: tuple[str, str, str], name: str, max_bytes: int,
                     timeout: float = 30) -> bytes:
    """One instance (study, series, SOP instance UIDs) by WADO-RS in its stored transfer syntax, streamed:
    :class:`ImageTooLargeError` once it passes ``max_bytes`` (memory stays within the limit)."""
    from urllib.parse import quote
    target = url.rstrip("/") + "/studies/{}/series/{}/instances/{}".format(*(quote(u, safe="") for u in uids))
    with session.get(target, headers={"Accept": WADO_ACCEPT}, stream=True, timeout=timeout) as response:
        response.raise_for_status()
        declared = int(response.headers.get("Content-Length") or 0)
        if declared > max_bytes + MULTIPART_SLACK:
            raise _too_large(name, declared - MULTIPART_SLACK, max_bytes, more=True)
        body = _read_bounded(response.iter_content(chunk_size=1 << 20), max_bytes + MULTIPART_SLACK)
        content_type = response.headers.get("Content-Type", "")
    if body is None:
        raise _too_large(name, max_bytes, max_bytes, more=True)
    data = _first_part(body, content_type)
    if len(data) > max_bytes:
        raise _too_large(name, len(data), max_bytes)
    return data


def _instances(client, url: str, study_uid: str, modalities: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(series UID, SOP instance UID) of the study's instances of these modalities (QIDO-RS)."""
    try:
        series = [s for m in modalities for s in client.search_for_series(study_uid, search_filters={"Modality": m})]
    except Exception as exc:
        raise PacsError(f"{url}: series query failed ({type(exc).__name__}: {_short(exc)})") from None
    for se in series:
        seuid = _value(se, "0020000E")
        try:
            instances = client.search_for_instances(study_uid, seuid)
        except Exception as exc:
            raise PacsError(f"{url}: instance query failed ({type(exc).__name__}: {_short(exc)})") from None
        for inst in instances:
            yield seuid, _value(inst, "00080018")


def _pull_one(session, url: str, store, uids: tuple[str, str, str], max_bytes: int) -> Optional[str]:
    """Retrieve one instance into the inbox; its SHA-256, or None when it was refused (a row says why)."""
    from engine.worklist.ingest import ingest
    from engine.inputs.sources import InputItem
    name = study_name(SOURCE_DICOMWEB, uids[0], uids[2])
    try:
        data = retrieve_bounded(session, url, uids, name, max_bytes)
    except ImageTooLargeError as exc:
        log.warning("%s", exc)
        store.add_study(None, name, source=SOURCE_DICOMWEB, read_error=str(exc))
        return None
    except Exception as exc:
        store.add_study(None, name, source=SOURCE_DICOMWEB,
                        read_error=f"{name}: WADO-RS retrieve failed ({type(exc).__name__})")
        return None
    ingest(store, None, [InputItem(name, lambda data=data: data)], source=SOURCE_DICOMWEB)
    return hashlib.sha256(data).hexdigest()


def pull(url: str, store, *, modalities: Sequence[str] = DEFAULT_MODALITIES, date_from: str = "",
         date_to: str = "", accession: str = "", study_uid: str = "", limit: int = 200,
         max_bytes: Optional[int] = None) -> list[str]:
    """Retrieve the radiograph instances of matching studies into the store's inbox.

    Each instance streams and is refused past ``max_bytes`` (``CXR_MAX_FILE_MB``), a row saying so.
    Returns the SHA-256 of each instance added (already-present files are not added twice).
    """
    import requests
    max_bytes = limits.MAX_FILE_BYTES if max_bytes is None else max_bytes
    client = _client(url)
    studies: dict[str, None] = {}
    for modality in modalities:
        for hit in query(url, date_from=date_from, date_to=date_to, modality=modality, accession=accession,
                         study_uid=study_uid, limit=limit):
            studies.setdefault(hit.study_uid)
    shas: list[str] = []
    with requests.Session() as session:
        for suid in studies:
            for seuid, sop in _instances(client, url, suid, modalities):
                sha = _pull_one(session, url, store, (suid, seuid, sop), max_bytes)
                if sha is not None:
                    shas.append(sha)
    return shas


# ------------------------------------------------------------------------------------------------
# Results of stored studies

def latest_review(store, study_id: int):
    """The study's latest decision as a :class:`engine.pacs.dicom_out.Review` (None when unreviewed)."""
    from engine.pacs.dicom_out import Review
    decisions = store.decisions(study_id)
    if not decisions:
        return None
    d = decisions[-1]
    return Review(d["decision"], d.get("reviewer", ""), d.get("time", ""))


def results_for_study(store, row, writer, *, review=None, heat=None) -> list[Dataset]:
    """SR, heatmap capture and map for one stored study row, its file read once from the store.

    ``row`` comes from the store under the writer's model key (as every caller fetches it), so a stored
    "ok" result is this model's score: it is reused and the file is decoded for its images only, without
    the network; a row without one is scored. ``review`` None: the row's latest decision, if any.
    ``heat``: the study's Grad-CAM map when the caller has it cached (Review), so it is not computed
    again. NotDicomError for a non-DICOM file; [] when the file could not be scored."""
    from engine.inputs.sources import InputItem
    from engine.pacs.dicom_out import source_header
    data = store.read_file(row.sha256)
    source_header(data, row.name)
    item = InputItem(row.name, lambda: data, sha256=row.sha256)
    stored = row.result
    if stored is not None and stored.status == "ok" and stored.probability is not None:
        pred = writer.predictor.recall(item, stored.probability, stored.warnings)
    else:
        pred = next(iter(writer.predictor.predict_stream([item], keep_images=True)))
    if review is None:
        review = latest_review(store, row.id)
    return writer.objects(data, pred, review, heat=heat)


def send_study_results(store, row, writer, dest: Destination, *, calling_aet: str = "TRIAGE",
                       review=None, heat=None) -> int:
    """Write and send one study's results; returns the number of objects sent."""
    objects = results_for_study(store, row, writer, review=review, heat=heat)
    send(objects, dest, calling_aet)
    return len(objects)


# ------------------------------------------------------------------------------------------------
# Command line

def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="DICOMweb root, e.g. http://pacs:8042/dicom-web")
    p.add_argument("--date-from", default="", help="study date from (YYYYMMDD)")
    p.add_argument("--date-to", default="", help="study date to (YYYYMMDD)")
    p.add_argument("--modality", action="append", help="modality in study (repeatable; pull default: CR and DX)")
    p.add_argument("--accession", default="", help="accession number")
    p.add_argument("--study", default="", help="one Study Instance UID")
    p.add_argument("--limit", type=int, default=200, help="at most this many studies per query")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.pacs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("query", help="list matching studies (QIDO-RS)")
    _filters(q)
    q.add_argument("--include-identifiers", action="store_true", help="print patient name, ID and accession")
    pl = sub.add_parser("pull", help="retrieve radiographs of matching studies into the store and score them")
    _filters(pl)
    pl.add_argument("--store", help="store folder (default: $CXR_STORE_DIR or the user's data folder)")
    pl.add_argument("--checkpoint", help="checkpoint folder (default: the shipped model)")
    pl.add_argument("--no-score", action="store_true", help="only retrieve; the dashboard scores on opening")
    s = sub.add_parser("send", help="send the SR and heatmap capture of scored inbox studies")
    s.add_argument("--store", help="store folder (default: $CXR_STORE_DIR or the user's data folder)")
    s.add_argument("--to", required=True, help="AET@HOST:PORT (C-STORE) or an http(s):// DICOMweb root (STOW-RS)")
    s.add_argument("--study-row", type=int, action="append", help="inbox study row id (repeatable; default: all scored)")
    s.add_argument("--checkpoint", help="checkpoint folder (default: the shipped model)")
    s.add_argument("--threshold", type=arguments.threshold, help="decision threshold (default: the model card's)")
    s.add_argument("--calling-aet", default="TRIAGE", help="our AE title for C-STORE")
    o = sub.add_parser("outbox", help="list the results the receiver forwards: pending, sent, failed")
    o.add_argument("--store", help="store folder (default: $CXR_STORE_DIR or the user's data folder)")
    o.add_argument("--retry", action="store_true", help="make every unsent result due now")
    o.add_argument("--limit", type=int, default=200, help="list at most this many rows, newest first")
    return p


def _outbox(args) -> int:
    """``outbox``: the rows, newest first (``--retry``: every unsent one due now first)."""
    from engine.pacs.outbox import listing
    from engine.worklist.store import Store
    store = Store(args.store)
    if args.retry:
        n = store.outbox_retry()
        print(f"{n} unsent result(s) due now: the running receiver sends them within seconds "
              "(or the next one, at its start)", file=sys.stderr)
    print("\n".join(listing(store.outbox(limit=args.limit), store.outbox_counts())))
    return 0


def _load(checkpoint: Optional[str]):
    from engine.worklist.ingest import model_key
    from engine.inference.predictor import Predictor
    return Predictor.from_checkpoint(checkpoint), model_key(checkpoint)


def _query(args: argparse.Namespace) -> int:
    """``query``: one line per matching study (identifiers only when asked)."""
    for hit in query(args.url, date_from=args.date_from, date_to=args.date_to,
                     modality=(args.modality or [""])[0], accession=args.accession,
                     study_uid=args.study, limit=args.limit):
        line = f"{hit.study_uid}\t{hit.date}\t{hit.modalities}\t{hit.instances}"
        if args.include_identifiers:
            line += f"\t{hit.patient_name}\t{hit.patient_id}\t{hit.accession}"
        print(line)
    return 0


def _load_or_say(checkpoint: Optional[str]):
    """:func:`_load`, or None after saying why the model cannot be loaded (exit code 3)."""
    from engine.errors import CheckpointError
    try:
        return _load(checkpoint)
    except CheckpointError as exc:
        print(f"error: cannot load the model: {exc}", file=sys.stderr)
        return None


def _pull(args: argparse.Namespace) -> int:
    """``pull``: retrieve into the store, then score what came (unless ``--no-score``)."""
    from engine.worklist.store import Store
    store = Store(args.store)
    shas = pull(args.url, store, modalities=tuple(args.modality or DEFAULT_MODALITIES),
                date_from=args.date_from, date_to=args.date_to, accession=args.accession,
                study_uid=args.study, limit=args.limit)
    print(f"{len(shas)} instance(s) retrieved into {store.root}", file=sys.stderr)
    if shas and not args.no_score:
        from engine.worklist.ingest import score_files
        loaded = _load_or_say(args.checkpoint)
        if loaded is None:
            return 3
        predictor, key = loaded
        n = score_files(store, {s: s[:12] for s in shas}, predictor, key)
        print(f"{n} scored", file=sys.stderr)
    return 0


def _send_rows(store, rows: list, writer, dest: Destination, calling_aet: str) -> tuple[int, int]:
    """Send each row's results: (objects sent, rows that failed). One row's failure is said and never
    stops the others; PacsUnreachable (the destination is down: the others would fail alike) does."""
    from engine.pacs.dicom_out import NotDicomError
    sent, failed = 0, 0
    for row in rows:
        try:
            sent += send_study_results(store, row, writer, dest, calling_aet=calling_aet)
        except NotDicomError:
            print(f"study row {row.id}: not DICOM, nothing to send", file=sys.stderr)
        except PacsUnreachable:
            raise                          # main says so (exit code 4)
        except (EngineError, OSError) as exc:
            failed += 1
            print(f"study row {row.id}: not sent: {exc}", file=sys.stderr)
        except Exception as exc:           # a bug in one row's objects: said, and the next row goes on
            failed += 1
            print(f"study row {row.id}: not sent: the result objects could not be written "
                  f"({type(exc).__name__})", file=sys.stderr)
    return sent, failed


def _send(args: argparse.Namespace) -> int:
    """``send``: the results of the chosen scored inbox studies to ``--to``; 1 when a row failed."""
    from engine.worklist.store import Store
    try:
        dest = parse_destination(args.to)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    store = Store(args.store)
    from engine.pacs.dicom_out import ResultWriter
    loaded = _load_or_say(args.checkpoint)
    if loaded is None:
        return 3
    predictor, key = loaded
    writer = ResultWriter(predictor, args.threshold,
                          None if args.threshold is None else "--threshold on the command line")
    wanted = set(args.study_row or [])
    rows = [r for r in store.studies(None, key) if r.inbox and r.sha256 and r.result is not None
            and r.result.status == "ok" and (not wanted or r.id in wanted)]
    sent, failed = _send_rows(store, rows, writer, dest, args.calling_aet)
    print(f"{sent} object(s) sent to {dest} for {len(rows) - failed} of {len(rows)} study row(s)"
          + (f"; {failed} not sent (above)" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one subcommand; the exit code (see the module docstring)."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "outbox":
        return _outbox(args)
    command = {"query": _query, "pull": _pull, "send": _send}.get(args.command)
    if command is None:
        return 2
    try:
        return command(args)
    except PacsError as exc:               # PacsUnreachable included: the server is down or refused
        print(f"error: {exc}", file=sys.stderr)
        return 4

if __name__ == "__main__":
    sys.exit(main())
