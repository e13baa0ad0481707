"""Uploads into the worklist store, scoring, and the worklist read back (no Streamlit here).

An upload's bytes go to the store's file cache (read once, hashed once), never into the browser
session; each file (or ZIP member) becomes one study row of the user's worklist, with the reason when
it could not be read. A file is scored once per model whoever uploads it: results live in the store,
keyed by the file's SHA-256 and the model. The worklist shown is read back from the store, so it
survives a browser reload and a server restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import pandas as pd

from engine.inputs import limits
from engine.errors import ImageReadError
from engine.worklist.ingest import (cached_item, ingest, score_files,  # noqa: F401 (re-exported)
                                     score_pending)
from engine.inference.predictor import Predictor
from engine.inputs.sources import InputItem, error_item, is_zip_bytes, iter_zip
from engine.worklist.store import Store, StudyRow, Worklist

MB = limits.MB
MAX_FILE_BYTES = limits.MAX_FILE_BYTES      # one image (or one ZIP member): the engine's limit
MAX_ARCHIVE_BYTES = 200 * MB                # one uploaded file (= server.maxUploadSize)
MAX_FILES = limits.MAX_BATCH_FILES          # studies in one worklist, ZIP members included
fmt_mb = limits.fmt_mb

Progress = Callable[[int, Optional[int]], None]


@dataclass(frozen=True)
class Upload:
    """One uploaded file: ``read`` returns its bytes (Streamlit's ``UploadedFile.getvalue``)."""

    id: object
    name: str
    size: int
    read: Callable[[], bytes]


@dataclass
class Batch:
    """A worklist as read from the store: records in the order they were added, and its DataFrame."""

    model_key: str
    records: list[StudyRow]
    sources: dict[str, InputItem]                  # sha256 -> the cached bytes
    worklist: pd.DataFrame

    def record(self, sha256: str) -> Optional[StudyRow]:
        return next((r for r in self.records if r.sha256 == sha256 and r.ok), None)


# ------------------------------------------------------------------------------------------------
# Uploads into the store

def _upload_items(up: Upload) -> list[InputItem]:
    """The images inside one upload (a refusal item for the upload itself when over the limit)."""
    if up.size > MAX_ARCHIVE_BYTES:
        return [error_item(up.name, f"{fmt_mb(up.size)} is over the {fmt_mb(MAX_ARCHIVE_BYTES)} limit "
                                    "for one upload")]
    data = up.read()
    if is_zip_bytes(data):
        return list(iter_zip(data, up.name))
    if len(data) > MAX_FILE_BYTES:
        return [error_item(up.name, f"{fmt_mb(len(data))} is over the {fmt_mb(MAX_FILE_BYTES)} limit "
                                    "for one image")]
    return [InputItem(up.name, lambda data=data: data)]


def ingest_uploads(store: Store, worklist: Worklist, uploads: Sequence[Upload], *,
                   max_files: int = MAX_FILES) -> int:
    """Every file of every upload (ZIPs expanded) into the worklist; see :func:`ingest`."""
    return ingest(store, worklist, (item for up in uploads for item in _upload_items(up)), max_files=max_files)


# ------------------------------------------------------------------------------------------------
# Scoring

def score_worklist(store: Store, worklist: Worklist, predictor: Predictor, model_key: str, *,
                   progress: Optional[Progress] = None) -> int:
    """Score every study of the worklist (and the inbox) not yet scored with this model."""
    return score_pending(store, worklist, predictor, model_key, progress=progress)


def load_batch(store: Store, worklist: Worklist, model_key: str,
               build_worklist: Callable[[Iterable[StudyRow]], pd.DataFrame]) -> Optional[Batch]:
    """The worklist as stored (None when it is empty)."""
    rows = store.studies(worklist, model_key)
    if not rows:
        return None
    records = list(rows)
    sources = {r.sha256: cached_item(store, r.name, r.sha256) for r in rows if r.sha256}
    return Batch(model_key, records, sources, build_worklist(records))


def score_items(items: Iterable[InputItem], predictor: Predictor, model_key: str, store: Store, *,
                max_files: int, progress: Optional[Progress] = None) -> list[StudyRow]:
    """Records for a labelled set (a folder, a ZIP) without adding them to a worklist.

    Files are cached and scored once per model, like uploads; inputs beyond ``max_files`` are refused.
    """
    named: list[tuple[str, str, str]] = []           # (name, sha256, error)
    for item in items:
        if len(named) >= max_files:
            named.append((item.name, "", f"{item.name}: over the {max_files:,}-file limit"))
            continue
        try:
            named.append((item.name, store.put_file(item.read()), ""))
        except ImageReadError as exc:
            named.append((item.name, "", str(exc)))
        except Exception as exc:
            named.append((item.name, "", f"{item.name}: cannot be read ({type(exc).__name__})"))
    score_files(store, {sha: name for name, sha, _ in named if sha}, predictor, model_key, progress=progress)
    out = []
    for name, sha, error in named:
        result = store.result(sha, model_key) if sha else None
        out.append(StudyRow(0, name, sha, "labelled", "", False, read_error=error, result=result))
    return out
