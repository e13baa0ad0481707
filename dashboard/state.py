"""Per-user state in ``st.session_state``: the shared threshold, presets, the selected study.

One decision threshold serves every page (widget key ``"threshold"``, rendered in the sidebar by
the entry script so it keeps its value across pages). It starts at the model card's threshold
and is reset to it when another checkpoint is chosen. Presets are operating points: the card's,
three computed on the model's validation predictions, and any the user saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import streamlit as st

from dashboard import upload_spool
from engine.evaluation import metrics as M

THRESHOLD = "threshold"          # slider key
PRESET = "preset"                # preset selectbox key
MODEL_REF = "model_ref"          # the ModelRef the sidebar resolved for this run
REVIEW_SHA = "review_sha"        # the study open in Review
WORKLIST = "worklist"            # the engine.worklist.store.Worklist this browser session works on
WORKLIST_PARAM = "w"             # the link's query parameter that carries the worklist's secret token
_TOKEN = "_worklist_token"
_UPLOADER_GEN = "_uploader_generation"
CUSTOM = "Custom (slider)"
_THRESHOLD_MODEL = "_threshold_model"
_PRESET_VALUES = "_preset_values"
SHOWN_THRESHOLD = "_threshold_shown"  # the slider value the last run drew
# Keys the pages keep across runs, all here (a widget's key when code outside the widget reads it).
REVIEW_PICK = "review_pick"      # Review's study selectbox
REVIEW_NOTE = "review_note"      # Review's note field, emptied after a decision
REVIEW_FLASH = "_review_flash"   # the message a decision leaves for the next run
OPEN_STUDY = "open_study"        # Triage's "open a study in Review" selectbox
WORKLIST_ROWS = "_worklist_rows" # the worklist rows selected in the last run
TRIM_PENDING = "_trim_pending"   # hand freed memory back to the system on the next run (after an upload)
PERF_SOURCE = "perf_source"      # Performance: which labelled data the page scores
PERF_SCORED = "perf_scored"      # Performance: {"signature": ..., "set": LabelledSet} scored last
SITE_MESSAGE = "_site_msg"       # Performance: the message saving a site profile leaves
CMP_SCORED = "cmp_scored"        # Compare: {"signature": (checkpoints, folder), "models": [ScoredModel]}
INBOX_SEEN = "_inbox_seen_version"   # the store version of the inbox this session last drew
PACS_HITS = "_pacs_hits"         # the studies the last PACS query found


@dataclass(frozen=True)
class Preset:
    name: str
    threshold: float
    origin: str                  # "card", "validation" or "saved"

    @property
    def label(self) -> str:
        return f"{self.name} — {self.threshold:.3f}"


def build_presets(card_threshold: float, labels: Optional[np.ndarray], scores: Optional[np.ndarray],
                  saved: Optional[dict[str, float]] = None) -> list[Preset]:
    """The model card's point, the standard points on the validation set, then saved ones."""
    out = [Preset("Model card", float(card_threshold), "card")]
    if labels is not None and scores is not None and len(labels):
        for rule in M.PRESET_RULES:
            try:
                op = M.choose_threshold(labels, scores, rule)
            except ValueError:           # a class absent from the validation set
                continue
            out.append(Preset(op.name, float(min(max(op.threshold, 0.0), 1.0)), "validation"))
    for name, thr in (saved or {}).items():
        out.append(Preset(f"Site: {name}", float(thr), "site"))
    return out


def site_preset_name(profile) -> str:
    """A site profile as the operating-point list names it: its name, its case counts, and "unreliable"
    when it was fitted on too few cases (``engine.evaluation.site.MIN_PER_CLASS`` of each class)."""
    mark = "" if profile.reliable else ", unreliable"
    return f"{profile.name} ({profile.n_pneumonia}+{profile.n_normal} cases{mark})"


def site_preset_label(profile) -> str:
    """The selectbox label of a saved profile's preset (see :func:`build_presets`)."""
    return Preset(f"Site: {site_preset_name(profile)}", float(profile.threshold), "site").label


def sync_threshold(model_key: str, card_threshold: float) -> None:
    """Start (or, for a newly chosen model, reset) the threshold at the card's value.

    Must run before the slider is drawn.
    """
    ss = st.session_state
    if ss.get(_THRESHOLD_MODEL) != model_key or THRESHOLD not in ss:
        ss[THRESHOLD] = float(card_threshold)
        ss[PRESET] = None
        ss[_THRESHOLD_MODEL] = model_key


def register_presets(presets: Sequence[Preset]) -> list[str]:
    """Remember preset values for the callback; return the selectbox options."""
    values = {p.label: p.threshold for p in presets}
    st.session_state[_PRESET_VALUES] = values
    labels = [CUSTOM, *values]
    if st.session_state.get(PRESET) is None:
        card = next((p.label for p in presets if p.origin == "card"), CUSTOM)
        st.session_state[PRESET] = card
    elif st.session_state[PRESET] not in labels:
        st.session_state[PRESET] = CUSTOM
    return labels


def apply_preset() -> None:
    """Selectbox callback: move the threshold to the chosen operating point."""
    ss = st.session_state
    if SHOWN_THRESHOLD in ss and ss[THRESHOLD] != ss[SHOWN_THRESHOLD]:
        # the slider moved in this same interaction: the preset value came from a page that had not
        # yet shown "Custom", so the slider wins
        ss[PRESET] = CUSTOM
        return
    value = st.session_state.get(_PRESET_VALUES, {}).get(st.session_state.get(PRESET))
    if value is not None:
        st.session_state[THRESHOLD] = float(value)


def mark_custom() -> None:
    """Slider callback: a hand-moved threshold is no longer a preset."""
    st.session_state[PRESET] = CUSTOM


def operating_point_label() -> str:
    """The operating point in force, as the sidebar names it ("Model card — 0.786", "Site: ward 3 — 0.612",
    or "Custom (slider) — 0.500")."""
    preset = st.session_state.get(PRESET) or CUSTOM
    if preset == CUSTOM:
        return f"{CUSTOM} — {threshold():.3f}"
    return str(preset)


def threshold() -> float:
    return float(st.session_state[THRESHOLD])


def open_worklist(store):
    """The worklist named by the link's secret token (``?w=...``), or a new one; keeps the token in the link.

    The link is the identity: whoever has it reaches the worklist, after a reload, a server restart or
    on another device; a session without it starts its own. The token is put back in the address bar on
    every run, since page navigation may drop query parameters.
    """
    ss = st.session_state
    token = ss.get(_TOKEN) or st.query_params.get(WORKLIST_PARAM, "")
    wl = store.worklist(token) if token else None
    if wl is None:
        token, wl = store.create_worklist()
    ss[_TOKEN] = token
    ss[WORKLIST] = wl
    if st.query_params.get(WORKLIST_PARAM) != token:
        st.query_params[WORKLIST_PARAM] = token
    return wl


def worklist():
    """The worklist opened for this run (an ``engine.worklist.store.Worklist``)."""
    return st.session_state[WORKLIST]


def set_worklist(wl) -> None:
    st.session_state[WORKLIST] = wl


def uploader_key() -> str:
    """The uploader's key: a new one after each ingest empties the widget, so the uploaded bytes
    leave the browser session (they are in the store)."""
    return f"uploads_{st.session_state.get(_UPLOADER_GEN, 0)}"


def renew_uploader(files=()) -> None:
    """Empty the uploader (a new key) and drop the uploaded files from Streamlit's memory.

    Streamlit keeps every uploaded file (in memory, or in the spool: ``dashboard.upload_spool``) until
    the browser session ends, whatever happens to the widget; its chat input drops them right away the
    same way (``remove_file``). Once the bytes are in the store, the session has no use for them."""
    st.session_state[_UPLOADER_GEN] = st.session_state.get(_UPLOADER_GEN, 0) + 1
    upload_spool.remove([f.file_id for f in files])


def model_ref():
    """The checkpoint the sidebar chose for this run (a ``resources.ModelRef``)."""
    return st.session_state[MODEL_REF]
