"""Files into the worklist store and their scores back: the one pipeline every source uses.

Uploads (the dashboard), the DICOM receiver (:mod:`engine.receive`) and DICOMweb pulls
(:mod:`engine.pacs`) all go through :func:`ingest` (bytes read once, hashed once, cached once) and
:func:`score_files` (decoding in the worker processes of :mod:`engine.decode.pool`, one result per
file and model, kept in the store). Nothing here imports Streamlit or the dashboard.

:func:`model_key` names a checkpoint the way the dashboard does (the resolved folder and a fingerprint
of its files), so a study scored by the receiver is not scored again when the dashboard opens it.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import cv2
import numpy as np

from engine.inputs import limits
from engine.model.checkpoint import CARD_FILE, DEFAULT_MODEL_DIR, WEIGHTS_FILE
from engine.errors import CheckpointError, ImageReadError
from engine.inference.predictor import Prediction, Predictor
from engine.inputs.sources import InputItem
from engine.worklist.store import Store, StoreError, Worklist
from engine.decode.pool import shrink_to as fit_within   # one resize for display copies

MAX_FILES = limits.MAX_BATCH_FILES
THUMBNAIL_PX = 64          # longest side of a worklist thumbnail

Progress = Callable[[int, Optional[int]], None]
OnPrediction = Callable[[str, Prediction], None]


# ------------------------------------------------------------------------------------------------
# The checkpoint's key in the store

def checkpoint_fingerprint(folder: Optional[str | Path] = None) -> tuple[str, str]:
    """(resolved folder, fingerprint of its weights and card) without loading the model."""
    path = Path(folder).expanduser() if folder else Path(DEFAULT_MODEL_DIR)
    path = path.resolve()
    if not path.is_dir():
        raise CheckpointError(f"Checkpoint folder '{path}' does not exist")
    parts = []
    for name in (CARD_FILE, WEIGHTS_FILE):
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"'{path}' has no {name}: not a checkpoint folder")
        st_ = f.stat()
        parts.append(f"{st_.st_size:x}-{st_.st_mtime_ns:x}")
    return str(path), ".".join(parts)


def model_key(folder: Optional[str | Path] = None) -> str:
    """The key results are kept under for this checkpoint (the dashboard's ``ModelRef.key``)."""
    path, fingerprint = checkpoint_fingerprint(folder)
    return f"{path}@{fingerprint}"


# ------------------------------------------------------------------------------------------------
# Thumbnails

def thumbnail_data_uri(pixels: np.ndarray, max_side: int = THUMBNAIL_PX) -> str:
    """A small grayscale PNG of the image as a ``data:image/png;base64,...`` URI ("" if empty)."""
    if pixels is None or pixels.size == 0:
        return ""
    small = fit_within(pixels, max_side)
    ok, png = cv2.imencode(".png", np.clip(small * 255.0 + 0.5, 0, 255).astype(np.uint8),
                           [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii") if ok else ""


# ------------------------------------------------------------------------------------------------
# Into the store

def cached_item(store: Store, name: str, sha256: str) -> InputItem:
    """An input whose bytes come from the store's file cache."""
    def read() -> bytes:
        try:
            return store.read_file(sha256)
        except StoreError as exc:
            raise ImageReadError(name, str(exc)) from None
    return InputItem(name, read, sha256=sha256)


def ingest(store: Store, worklist: Optional[Worklist], items: Iterable[InputItem], *, source: str = "upload",
           max_files: int = MAX_FILES) -> int:
    """Add each input as a study of ``worklist`` (None: the shared inbox), its bytes to the file cache.

    Each input is read once and hashed once; a file already listed under the same name (in that
    worklist, or in the inbox) is not added twice; inputs beyond ``max_files`` studies (per worklist;
    the inbox is bounded by the store's size rule instead) and unreadable inputs are rows with the
    reason. Returns the number of rows added.
    """
    count = store.count_studies(worklist) if worklist is not None else 0
    added = 0
    for item in items:
        if worklist is not None and count >= max_files:
            store.add_study(worklist, item.name, source=source,
                            read_error=f"{item.name}: over the {max_files:,}-study limit for one worklist "
                                       "(clear the worklist to start a new batch)")
            added += 1
            continue
        try:
            data = item.read()
        except ImageReadError as exc:
            store.add_study(worklist, item.name, source=source, read_error=str(exc))
        except Exception as exc:      # never a traceback in place of the worklist
            store.add_study(worklist, item.name, source=source,
                            read_error=f"{item.name}: cannot be read ({type(exc).__name__})")
        else:
            sha = store.put_file(data)
            if store.has_study(worklist, item.name, sha):
                continue
            store.add_study(worklist, item.name, sha, source=source)
        count += 1
        added += 1
    return added


# ------------------------------------------------------------------------------------------------
# Scoring

def score_files(store: Store, files: dict[str, str], predictor: Predictor, model_key: str, *,
                progress: Optional[Progress] = None, batch_size: int = 16,
                on_prediction: Optional[OnPrediction] = None, rescore: bool = False,
                outbox: Optional[Mapping[str, Sequence[tuple[int, str]]]] = None) -> int:
    """Score files (sha256 -> a name for messages) that have no result for this model; keep the results.

    ``on_prediction(sha256, prediction)`` sees each prediction with its display copy and network
    input (to write a heatmap, a structured report); ``rescore`` scores files that already have a
    result again (the same bytes and model give the same result: for callers that need the images);
    ``outbox`` (sha256 -> (study id, destination) pairs) queues a scored file's results for sending in
    the transaction that keeps its result, before ``on_prediction`` runs.
    """
    todo = {sha: name for sha, name in files.items()
            if sha and (rescore or store.result(sha, model_key) is None)}
    if not todo:
        return 0
    shas = list(todo)
    stream = predictor.predict_stream((cached_item(store, todo[s], s) for s in shas), batch_size=batch_size,
                                      keep_images=True, progress=progress, total=len(shas))
    for sha, pred in zip(shas, stream):
        thumb = thumbnail_data_uri(pred.image.pixels) if pred.ok and pred.image is not None else ""
        store.put_result(sha, model_key, pred.result, thumbnail=thumb,
                         identifiers=pred.identifiers if pred.ok else None,
                         outbox=(outbox or {}).get(sha, ()) if pred.ok else ())
        if on_prediction is not None:
            on_prediction(sha, pred)
    return len(shas)


def score_pending(store: Store, worklist: Optional[Worklist], predictor: Predictor, model_key: str, *,
                  progress: Optional[Progress] = None, batch_size: int = 16) -> int:
    """Score every study of ``worklist`` and of the shared inbox (None: the inbox only) not yet scored
    with this model; return how many files were scored."""
    rows = store.studies(worklist, model_key)
    return score_files(store, {r.sha256: r.name for r in rows if r.sha256 and r.result is None},
                       predictor, model_key, progress=progress, batch_size=batch_size)
