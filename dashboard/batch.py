"""Running a batch of uploads through the model, once per file content (no Streamlit here).

Every uploaded file (or ZIP member) becomes one :class:`StudyRecord`: a probability, or the reason
it could not be read. Files over the size limit and files beyond the count limit are refused with
a message and still listed. Content is identified by its SHA-256: a file whose bytes were already
scored by the same model (in this session or another) comes from the :class:`PredictionCache`, so
the model only ever sees new content. Uploads already processed in this session are not even
re-read (:func:`sync_batch` keeps their records by upload id in a :class:`BatchStore`).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Callable, Hashable, Iterable, Optional, Sequence

import pandas as pd

from engine import limits
from engine.errors import ImageReadError
from engine.image import PatientIdentifiers, StudyMetadata
from engine.predictor import Prediction, Predictor
from engine.sources import InputItem, is_zip_bytes, iter_zip

from dashboard.imaging import thumbnail_data_uri

MB = limits.MB
MAX_FILE_BYTES = limits.MAX_FILE_BYTES      # one image (or one ZIP member): the engine's limit
MAX_ARCHIVE_BYTES = 200 * MB                # one uploaded file (= server.maxUploadSize)
MAX_FILES = limits.MAX_BATCH_FILES          # images in one batch, ZIP members included

Progress = Callable[[int, Optional[int]], None]


@dataclass(frozen=True)
class StudyRecord:
    """What the worklist knows about one file. ``probability`` is None when it was not scored."""

    name: str
    sha256: str
    status: str                                   # "ok", "error" (unreadable) or "refused" (a limit)
    probability: Optional[float] = None
    message: str = ""
    warnings: tuple[str, ...] = ()
    metadata: StudyMetadata = field(default_factory=StudyMetadata)
    identifiers: PatientIdentifiers = field(default_factory=PatientIdentifiers)
    thumbnail: str = ""                           # data-URI PNG, "" when none

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Upload:
    """One uploaded file: ``read`` returns its bytes (Streamlit's ``UploadedFile.getvalue``)."""

    id: Hashable
    name: str
    size: int
    read: Callable[[], bytes]


class PredictionCache:
    """A thread-safe LRU of records keyed by (model key, file SHA-256), shared by all sessions.

    Only content that hashes the same is ever returned, so one user's cache hits are files they
    uploaded themselves.
    """

    def __init__(self, max_entries: int = 20_000) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[tuple[str, str], StudyRecord] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, model_key: str, sha256: str) -> Optional[StudyRecord]:
        with self._lock:
            rec = self._data.get((model_key, sha256))
            if rec is None:
                self.misses += 1
                return None
            self._data.move_to_end((model_key, sha256))
            self.hits += 1
            return rec

    def put(self, model_key: str, record: StudyRecord) -> None:
        if not record.sha256 or record.status == "refused":
            return
        with self._lock:
            self._data[(model_key, record.sha256)] = record
            self._data.move_to_end((model_key, record.sha256))
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


@dataclass
class UploadResult:
    records: list[StudyRecord]
    sources: dict[str, InputItem]                  # sha256 -> a way to read the bytes again


@dataclass
class Batch:
    """The worklist of one session: records in upload order plus the DataFrame built once."""

    model_key: str
    upload_ids: tuple
    records: list[StudyRecord]
    sources: dict[str, InputItem]
    worklist: pd.DataFrame
    origin: str = "upload"

    def record(self, sha256: str) -> Optional[StudyRecord]:
        return next((r for r in self.records if r.sha256 == sha256 and r.ok), None)


fmt_mb = limits.fmt_mb


def refused(name: str, reason: str, sha256: str = "") -> StudyRecord:
    return StudyRecord(name=name, sha256=sha256, status="refused", message=f"{name}: {reason}")


def record_from_prediction(p: Prediction, thumbnail_px: int = 64) -> StudyRecord:
    """A record (with a thumbnail when the prediction kept its image); the image is dropped."""
    if not p.ok:
        return StudyRecord(p.name, p.sha256, "error", None, p.message)
    thumb = thumbnail_data_uri(p.image.pixels, thumbnail_px) if p.image is not None else ""
    return StudyRecord(p.name, p.sha256, "ok", float(p.probability), "", tuple(p.warnings),
                       p.metadata, p.identifiers, thumb)


def _upload_items(up: Upload) -> tuple[list[InputItem], Optional[str]]:
    """The images inside one upload, or a refusal reason for the upload itself."""
    if up.size > MAX_ARCHIVE_BYTES:
        return [], f"{fmt_mb(up.size)} is over the {fmt_mb(MAX_ARCHIVE_BYTES)} limit for one upload"
    data = up.read()
    if is_zip_bytes(data):
        return list(iter_zip(data, up.name)), None
    if len(data) > MAX_FILE_BYTES:
        return [], f"{fmt_mb(len(data))} is over the {fmt_mb(MAX_FILE_BYTES)} limit for one image"
    return [InputItem(up.name, up.read)], None


def _score(to_score: dict[str, InputItem], predictor: Predictor, model_key: str,
           cache: PredictionCache, *, progress: Optional[Progress], batch_size: int,
           keep_images: bool) -> dict[str, StudyRecord]:
    """Run the model on items not in the cache (one per content hash); cache the records."""
    scored: dict[str, StudyRecord] = {}
    shas = list(to_score)
    stream = predictor.predict_stream((to_score[s] for s in shas), batch_size=batch_size,
                                      keep_images=keep_images, progress=progress, total=len(shas))
    for sha, pred in zip(shas, stream):
        rec = record_from_prediction(pred)
        rec = replace(rec, sha256=rec.sha256 or sha)
        scored[sha] = rec
        cache.put(model_key, rec)
    return scored


def score_items(items: Iterable[InputItem], predictor: Predictor, model_key: str,
                cache: PredictionCache, *, max_files: int, progress: Optional[Progress] = None,
                batch_size: int = 32) -> list[StudyRecord]:
    """Records for local inputs (a folder, a ZIP), in order; the model sees only new content.

    Files beyond ``max_files`` or over the size limit are refused; records carry no thumbnails
    unless an upload of the same content already made one.
    """
    records: list[Optional[StudyRecord]] = []
    slots: list[tuple[int, str, str]] = []
    to_score: dict[str, InputItem] = {}
    for item in items:
        if len(records) >= max_files:
            records.append(refused(item.name, f"over the {max_files:,}-file limit"))
            continue
        rec, sha, _ = _read_and_hash(item)
        if rec is not None:
            records.append(rec)
            continue
        hit = cache.get(model_key, sha)
        if hit is not None:
            records.append(replace(hit, name=item.name))
            continue
        to_score.setdefault(sha, item)
        records.append(None)
        slots.append((len(records) - 1, sha, item.name))
    if to_score:
        scored = _score(to_score, predictor, model_key, cache, progress=progress,
                        batch_size=batch_size, keep_images=False)
        for index, sha, name in slots:
            records[index] = replace(scored[sha], name=name)
    return [r for r in records if r is not None]


def _read_and_hash(item: InputItem) -> tuple[Optional[StudyRecord], str, int]:
    """(a refusal/error record or None, sha256, size) for one input."""
    if item.error:
        return StudyRecord(item.name, "", "error", message=item.error), "", 0
    try:
        data = item.read()
    except ImageReadError as exc:     # a ZIP member with a bad CRC, a broken stream, ...
        return StudyRecord(item.name, "", "error", message=str(exc)), "", 0
    except Exception as exc:          # never a traceback in place of the worklist
        return StudyRecord(item.name, "", "error", message=f"{item.name}: cannot be read ({type(exc).__name__})"), "", 0
    if len(data) > MAX_FILE_BYTES:
        return refused(item.name, f"{fmt_mb(len(data))} is over the {fmt_mb(MAX_FILE_BYTES)} limit "
                                  f"for one image"), "", len(data)
    return None, hashlib.sha256(data).hexdigest(), len(data)


def process_uploads(uploads: Sequence[Upload], predictor: Predictor, model_key: str,
                    cache: PredictionCache, *, already: int = 0, max_files: int = MAX_FILES,
                    progress: Optional[Progress] = None, batch_size: int = 16
                    ) -> dict[Hashable, UploadResult]:
    """Score the images in ``uploads``; the model sees only content not yet in ``cache``.

    ``already`` is the number of images already in the batch (for the count limit). Returns one
    :class:`UploadResult` per upload id, records in the order of the files inside each upload.
    """
    results: dict[Hashable, UploadResult] = {}
    slots: list[tuple[UploadResult, int, str]] = []     # where each model result goes
    to_score: dict[str, InputItem] = {}                 # sha256 -> item, first occurrence
    count = already
    for up in uploads:
        res = results[up.id] = UploadResult([], {})
        items, reason = _upload_items(up)
        if reason:
            res.records.append(refused(up.name, reason))
            continue
        for item in items:
            if count >= max_files:
                res.records.append(refused(item.name, f"over the {max_files:,}-file limit for one "
                                                      f"worklist (clear the worklist to start a new batch)"))
                continue
            count += 1
            rec, sha, _ = _read_and_hash(item)
            if rec is not None:
                res.records.append(rec)
                continue
            res.sources[sha] = item
            hit = cache.get(model_key, sha)
            if hit is not None:
                res.records.append(replace(hit, name=item.name))
                continue
            to_score.setdefault(sha, item)
            res.records.append(StudyRecord(item.name, sha, "pending"))
            slots.append((res, len(res.records) - 1, sha))

    if to_score:
        scored = _score(to_score, predictor, model_key, cache, progress=progress,
                        batch_size=batch_size, keep_images=True)
        for res, index, sha in slots:
            res.records[index] = replace(scored[sha], name=res.records[index].name)
    return results


@dataclass
class BatchStore:
    """One session's triage state (kept in ``st.session_state``)."""

    model_key: str = ""
    results: dict[Hashable, UploadResult] = field(default_factory=dict)   # upload id -> result, in order
    live: tuple = ()                      # upload ids the uploader showed at the last Triage run
    ignored: set = field(default_factory=set)   # uploads still in the uploader after "Clear"
    batch: Optional[Batch] = None

    def clear(self) -> None:
        """Empty the worklist; files still in the uploader are not added back."""
        self.results.clear()
        self.ignored = set(self.live)
        self.batch = None


def _rescore(store: BatchStore, predictor: Predictor, model_key: str, cache: PredictionCache,
             progress: Optional[Progress]) -> None:
    """Score every kept study with another model (content read again from its source)."""
    to_score: dict[str, InputItem] = {}
    for res in store.results.values():
        for sha, item in res.sources.items():
            if cache.get(model_key, sha) is None:
                to_score.setdefault(sha, item)
    scored = _score(to_score, predictor, model_key, cache, progress=progress, batch_size=16,
                    keep_images=True) if to_score else {}
    def fresh(r: StudyRecord) -> StudyRecord:
        new = scored.get(r.sha256) or cache.get(model_key, r.sha256)
        return replace(new, name=r.name) if new is not None and r.sha256 in res.sources else r

    for res in store.results.values():
        res.records = [fresh(r) for r in res.records]


def sync_batch(store: BatchStore, uploads: Sequence[Upload], predictor: Predictor, model_key: str,
               cache: PredictionCache, build_worklist: Callable[[Iterable[StudyRecord]], pd.DataFrame],
               *, uploader_fresh: bool = False, progress: Optional[Progress] = None,
               max_files: int = MAX_FILES) -> Optional[Batch]:
    """Bring the session's worklist in line with the uploader; return it (None when empty).

    The worklist holds every file uploaded in the session until it is cleared: Streamlit empties
    the uploader when the user visits another page (``uploader_fresh``), and that must not empty
    the worklist. A file removed from the uploader while the user stays on the page is removed
    from the worklist. Only new uploads are read and only new content is scored; the worklist
    DataFrame is rebuilt when the set of files or the model changes, never for a threshold.
    A batch injected with another origin (a benchmark) is kept while nothing is uploaded.
    """
    ids = tuple(up.id for up in uploads)
    before = () if uploader_fresh else store.live
    store.ignored &= set(ids)
    changed = False
    for gone in set(before) - set(ids):
        if store.results.pop(gone, None) is not None:
            changed = True
    if store.model_key != model_key:
        if store.results:
            _rescore(store, predictor, model_key, cache, progress)
            changed = True
        store.model_key = model_key
    new = [up for up in uploads if up.id not in store.results and up.id not in store.ignored]
    if new:
        kept = sum(len(res.records) for res in store.results.values())
        store.results.update(process_uploads(new, predictor, model_key, cache, already=kept,
                                             max_files=max_files, progress=progress))
        changed = True
    store.live = ids
    if not store.results:
        if store.batch is not None and store.batch.origin != "upload":
            return store.batch
        store.batch = None
        return None
    if changed or store.batch is None or store.batch.origin != "upload":
        records, seen = [], set()
        for res in store.results.values():      # the same file uploaded again is listed once
            for r in res.records:
                if r.sha256 and (r.name, r.sha256) in seen:
                    continue
                seen.add((r.name, r.sha256))
                records.append(r)
        sources = {sha: item for res in store.results.values() for sha, item in res.sources.items()}
        store.batch = Batch(model_key, tuple(store.results), records, sources, build_worklist(records))
    return store.batch
