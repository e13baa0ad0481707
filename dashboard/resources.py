"""Everything cached across reruns and sessions, and nothing per user.

* ``st.cache_resource``: the predictor and explainer (one per checkpoint folder and file
  fingerprint, so a replaced checkpoint is reloaded; never mutated), and the worklist store.
* ``st.cache_data``: validation predictions, decoded images and raw heatmaps, keyed by content:
  a file's SHA-256, the model's fingerprint. Users only reach an entry by having the same bytes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import streamlit as st

from engine.model.checkpoint import DEFAULT_MODEL_DIR, load_val_predictions_path
from engine.decode.pool import DecodedStudy, default_pool
from engine.worklist.ingest import checkpoint_fingerprint
from engine.worklist.store import Store, default_root

from dashboard.batch import load_batch
from dashboard.worklist import build_worklist
from engine.inputs.sources import InputItem

from dashboard.evaluation import (EvaluationFolder, LabelledSet, labelled_set_from_csv, load_evaluation_folder,
                                  val_predictions_set)
from dashboard.imaging import DISPLAY_MAX_PX, FULL_RES_MAX_PX
from dashboard.state import Preset, build_presets

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EVALUATIONS_DIR = PROJECT_ROOT / "assets" / "evaluations"


@dataclass(frozen=True)
class ModelRef:
    """A checkpoint folder plus a fingerprint of its files (changes when they are replaced)."""

    path: str
    fingerprint: str

    @property
    def key(self) -> str:
        return f"{self.path}@{self.fingerprint}"

    @property
    def is_default(self) -> bool:
        return Path(self.path) == Path(DEFAULT_MODEL_DIR).resolve()


def model_ref(folder: Optional[str] = None) -> ModelRef:
    """Resolve a checkpoint folder (default: the shipped model) without loading it."""
    return ModelRef(*checkpoint_fingerprint(folder))


@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def _load_predictor(path: str, fingerprint: str):
    from engine.gc_pause import paused_gc
    with paused_gc():   # loading creates long-lived objects only: collect once it is done
        from engine.inference.predictor import Predictor      # torch is imported here, once per process
        return Predictor.from_checkpoint(path)


def predictor(ref: ModelRef):
    return _load_predictor(ref.path, ref.fingerprint)


@st.cache_resource(max_entries=2, show_spinner="Preparing Grad-CAM…")
def _load_explainer(path: str, fingerprint: str):
    return _load_predictor(path, fingerprint).load_explainer()


def explainer(ref: ModelRef):
    return _load_explainer(ref.path, ref.fingerprint)


_warming: set[str] = set()
_warming_lock = threading.Lock()


def warm_explainer(ref: ModelRef) -> None:
    """Load Grad-CAM (torch and Captum) in a background thread, once per model and process, so that the
    first study opened in Review does not wait for it (about 8 s on a 2-core CPU). A page that needs it
    before it is ready waits on the same cache entry, never loads it twice."""
    with _warming_lock:
        if ref.key in _warming:
            return
        _warming.add(ref.key)

    def load() -> None:
        try:
            _load_explainer(ref.path, ref.fingerprint)
        except Exception:                    # noqa: BLE001 - the page that needs it reports the error
            with _warming_lock:
                _warming.discard(ref.key)

    threading.Thread(target=load, name="warm-grad-cam", daemon=True).start()


@st.cache_resource(show_spinner=False)
def _open_store(root: str) -> Store:
    return Store(root)


def store() -> Store:
    """The worklist store at ``$CXR_STORE_DIR`` (read at each call; one object per folder)."""
    return _open_store(str(default_root()))


@st.cache_resource(max_entries=16, show_spinner=False)
def _batch(root: str, worklist_id: int, model_key: str, version: tuple, _store: Store, _worklist):
    return load_batch(_store, _worklist, model_key, build_worklist)


def worklist_batch(wl, model_key: str):
    """The worklist as stored, rebuilt only when the store says it changed (a threshold move reuses it).

    Keyed by the worklist's id, so a session only ever gets its own worklist's object."""
    s = store()
    return _batch(str(s.root), wl.id, model_key, s.version(wl), s, wl)


@st.cache_data(max_entries=8, show_spinner=False)
def _validation_set(path: str, fingerprint: str, class_names: tuple[str, ...]) -> Optional[LabelledSet]:
    return val_predictions_set(load_val_predictions_path(path), class_names)


def validation_set(ref: ModelRef, class_names) -> Optional[LabelledSet]:
    """The checkpoint's validation predictions (None if absent; errors are raised)."""
    return _validation_set(ref.path, ref.fingerprint, tuple(class_names))


@st.cache_data(max_entries=8, show_spinner=False)
def labelled_csv(data: bytes, name: str, class_names: tuple[str, ...]) -> LabelledSet:
    """An uploaded predictions CSV, parsed once per content (errors are raised, not cached)."""
    return labelled_set_from_csv(data, name, class_names)


@st.cache_data(max_entries=8, show_spinner=False)
def _presets(path: str, fingerprint: str, card_threshold: float, class_names: tuple[str, ...]) -> list[Preset]:
    try:
        val = _validation_set(path, fingerprint, class_names)
    except ValueError:
        val = None
    return build_presets(card_threshold, val.labels if val else None, val.scores if val else None)


def presets(ref: ModelRef, card, saved: dict[str, float]) -> list[Preset]:
    base = _presets(ref.path, ref.fingerprint, float(card.threshold), tuple(card.class_names))
    return base + build_presets(card.threshold, None, None, saved)[1:]


def _decode_study(item: InputItem, image_size: int, max_side: int) -> DecodedStudy:
    return default_pool().decode(item.read(), item.name, image_size=image_size, display_max_side=max_side)


@st.cache_data(max_entries=16, show_spinner="Decoding the image…")
def study_images(sha256: str, image_size: int, _item: InputItem, _prep) -> DecodedStudy:
    """Decode one study in a decoding worker at display size (cached by content hash and input size)."""
    return _decode_study(_item, image_size, DISPLAY_MAX_PX)


@st.cache_data(max_entries=3, show_spinner="Decoding the full-resolution image…")
def study_full_resolution(sha256: str, image_size: int, _item: InputItem, _prep) -> DecodedStudy:
    """The same at the file's own resolution (up to ``FULL_RES_MAX_PX``) for the linked zoom view;
    few kept, as each is tens of MB. Read again from the store's file cache, never re-uploaded."""
    return _decode_study(_item, image_size, FULL_RES_MAX_PX)


@st.cache_data(max_entries=64, show_spinner="Computing the heatmap…")
def heatmap(model_key: str, sha256: str, method: str, _explainer, _model_input: np.ndarray) -> np.ndarray:
    """The raw (S, S) heatmap of one study for one model and method (cached by content)."""
    return _explainer.explain_images([_model_input], method=method)[0]


@st.cache_data(max_entries=8, show_spinner=False)
def viewer_payload(model_key: str, sha256: str, image_size: int, method: str, colormap: str, opacity: float,
                   min_heat: float, name: str, overlay_caption: str, _imgs: DecodedStudy, _heat: np.ndarray) -> dict:
    """What Review's viewer is sent for a study and display settings (cached: a rerun on the same study
    does not pack its pixels again)."""
    from dashboard import viewer
    from dashboard.imaging import png_data_uri
    from engine.inference.overlay import colour_scale
    meta = _imgs.image.metadata
    dicom = _imgs.raw is not None
    return viewer.viewer_data(
        _imgs.raw if dicom else _imgs.display, study=sha256[:16], name=name, dicom_units=dicom,
        monochrome1=(meta.photometric_interpretation or "") == "MONOCHROME1" if dicom else False,
        header_window=(meta.window_center, meta.window_width), heatmap=_heat, colormap=colormap, opacity=opacity,
        min_heat=min_heat, overlay_caption=overlay_caption, scale_uri=png_data_uri(colour_scale(colormap, 256, 10)))


@st.cache_data(max_entries=32, show_spinner=False)
def evaluation_folder(path: str, stamp: str) -> EvaluationFolder:
    return load_evaluation_folder(path)


def load_evaluation(path: str) -> EvaluationFolder:
    """An evaluation folder, cached until one of its files changes."""
    p = Path(path).expanduser()
    stamp = ""
    for name in ("metrics.json", "predictions.csv", "model_card.json"):
        f = p / name
        if f.is_file():
            s = f.stat()
            stamp += f"{name}:{s.st_size}:{s.st_mtime_ns};"
    return evaluation_folder(str(p), stamp)
