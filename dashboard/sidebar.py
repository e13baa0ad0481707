"""The sidebar every page shares: notice, model in use, decision threshold and presets.

Drawn by the entry script (``Home.py``) before the page runs, so its widgets belong to the entry
script and keep their values when the user moves between pages.
"""

from __future__ import annotations

import streamlit as st

from engine.model.checkpoint import DEFAULT_MODEL_DIR
from engine.inputs.paths import PathNotAllowed, confine
from engine.evaluation.site import list_profiles
from engine.errors import CheckpointError

from dashboard import labels, resources, state

NOTICE = ("**Decision support and research only; not a diagnostic device.** It flags chest "
          "radiographs for review. A clinician makes every diagnosis.")


def _model_section() -> resources.ModelRef:
    st.subheader("Model")
    folder = st.text_input("Checkpoint folder", key="model_dir", placeholder="shipped default model", persist_state="session",
                           help=f"Leave empty for the shipped model ({DEFAULT_MODEL_DIR}). Or type the "
                                "path of another checkpoint folder (model.safetensors + model_card.json) "
                                "under the server's model roots (CXR_MODELS_ROOT).").strip()
    ref, pred = None, None
    if folder:
        try:
            ref = resources.model_ref(str(confine(folder, "models")))
            pred = resources.predictor(ref)
        except (CheckpointError, PathNotAllowed, OSError) as exc:
            st.error(f"{exc}. Using the shipped default model instead.")
            ref = None
    if ref is None:
        ref = resources.model_ref(None)
        pred = resources.predictor(ref)
    card = pred.card
    st.markdown(f"**{labels.display_label(card)}**  \n"
                f"{card.name or card.architecture}  \n"
                f"architecture `{card.architecture}` · input {card.preprocessing.image_size} px  \n"
                f"{'shipped default' if ref.is_default else ref.path}")
    st.caption(f"Device and precision: {pred.policy.label}")
    return ref


def _threshold_section(ref: resources.ModelRef) -> None:
    card = resources.predictor(ref).card
    st.subheader("Decision threshold")
    state.sync_threshold(ref.key, card.threshold)
    sites = {state.site_preset_name(p): p.threshold for p in list_profiles() if p.model == card.label}
    presets = resources.presets(ref, card, sites)
    options = state.register_presets(presets)
    st.selectbox("Operating point", options, key=state.PRESET, on_change=state.apply_preset, persist_state="session",
                 help="The model card's threshold, points chosen on the model's validation "
                      "predictions, and the site profiles saved (on the Performance page) for this model.")
    st.slider("Threshold (flag when probability ≥ threshold)", 0.0, 1.0, step=0.001, format="%.3f",
              key=state.THRESHOLD, on_change=state.mark_custom, persist_state="session",
              help="One threshold for every page. Moving it re-flags the worklist at once "
                   "without running the model again.")
    st.session_state[state.SHOWN_THRESHOLD] = st.session_state[state.THRESHOLD]
    st.caption(f"In force: **{state.operating_point_label()}** · card threshold {card.threshold:.3f}: "
               f"{card.threshold_rule or 'rule not stated'}")


def _reviewer_section() -> None:
    st.subheader("Your worklist")
    wl = state.worklist()
    name = st.text_input("Reviewer name (recorded with your decisions)", value=wl.reviewer, key="reviewer_name",
                         max_chars=80, placeholder="e.g. Dr A. Reader")
    if name.strip() != wl.reviewer:
        state.set_worklist(resources.store().set_reviewer(wl, name))
    st.caption("This page's link is your worklist: bookmark it to come back (a reload or a server restart "
               "keeps it). Anyone with the link can open it; do not share it.")


def render() -> resources.ModelRef:
    """Draw the sidebar; remember the model in session state; return it."""
    with st.sidebar:
        st.info(NOTICE, icon=":material/info:")
        ref = _model_section()
        st.session_state[state.MODEL_REF] = ref
        resources.warm_explainer(ref)      # Review's first heatmap then does not wait for torch
        _threshold_section(ref)
        _reviewer_section()
    return ref
