"""Review: one study at a time, radiograph beside its Grad-CAM heatmap; record agree/disagree."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.errors import ImageReadError
from engine.explain import METHODS
from engine.overlay import COLORMAPS
from engine.review_log import DECISIONS, ReviewLogError

from dashboard import imaging, resources, state, worklist

PICK = "review_pick"
METHOD_NAMES = {"gradcam": "Grad-CAM", "guided_gradcam": "Guided Grad-CAM",
                "integrated_gradients": "Integrated Gradients", "occlusion": "Occlusion"}


def _step(flagged: list[str], readable: list[str], delta: int) -> None:
    """Button callback: the previous/next flagged study (from the current one)."""
    current = st.session_state.get(state.REVIEW_SHA)
    if not flagged:
        return
    if current in flagged:
        i = min(max(flagged.index(current) + delta, 0), len(flagged) - 1)
    else:  # from a study that is not flagged: the nearest flagged one in worklist order
        pos = readable.index(current) if current in readable else -1
        ranked = [readable.index(s) for s in flagged]
        after = [k for k, r in enumerate(ranked) if (r > pos if delta > 0 else r < pos)]
        i = (after[0] if delta > 0 else after[-1]) if after else (0 if delta > 0 else len(flagged) - 1)
    st.session_state[state.REVIEW_SHA] = flagged[i]


def _picked() -> None:
    st.session_state[state.REVIEW_SHA] = st.session_state[PICK]


def _header_panel(image) -> None:
    st.subheader("Study header")
    meta = image.metadata.as_dict()
    if meta:
        st.dataframe(pd.DataFrame({"field": [k.replace("_", " ") for k in meta],
                                   "value": [str(v) for v in meta.values()]}),
                     hide_index=True, key="header_table")
    else:
        st.caption("No header fields (not a DICOM file).")
    if st.checkbox("Show patient identifiers", value=False, key="show_ids",
                   help="Hidden by default. They are never written to the review log."):
        ids = image.identifiers.as_dict()
        if ids:
            st.dataframe(pd.DataFrame({"identifier": [k.replace("_", " ") for k in ids],
                                       "value": list(ids.values())}), hide_index=True, key="ids_table")
        else:
            st.caption("This file carries no patient identifiers.")


def _review_form(rec, model_label: str, thr: float) -> None:
    st.subheader("Your review")
    flagged = rec.probability >= thr
    with st.form("review_form", clear_on_submit=True, border=False):
        decision = st.radio(f"The model {'flags' if flagged else 'does not flag'} this study at "
                            f"{thr:.3f}. Do you agree?", DECISIONS, horizontal=True, key="review_decision",
                            format_func=str.capitalize)
        note = st.text_area("Note (optional; no patient identifiers)", key="review_note", max_chars=2000)
        if st.form_submit_button("Record review", type="primary", key="review_submit"):
            try:
                resources.review_log().record(
                    file_sha256=rec.sha256, file_name=rec.name, model=model_label,
                    probability=rec.probability, threshold=thr, decision=decision, note=note)
                st.success(f"Recorded: {decision} ({rec.name.rsplit('/', 1)[-1]}).")
            except (ReviewLogError, OSError) as exc:
                st.error(f"Could not record the review: {exc}")
    log = resources.review_log()
    mine = log.entries(rec.sha256)
    if mine:
        st.caption(f"Earlier reviews of this file ({len(mine)})")
        st.dataframe(pd.DataFrame([e.__dict__ for e in mine])[
            ["time", "decision", "note", "probability", "threshold", "model"]], hide_index=True,
            key="file_reviews")
    st.download_button("Download the review log (CSV)", data=log.to_csv, file_name="review_log.csv",
                       mime="text/csv", icon=":material/download:", key="log_csv", on_click="ignore")
    st.caption(f"Log: `{log.path}` · {len(log)} review(s) · no patient identifiers are stored.")


def render() -> None:
    ref = state.model_ref()
    pred = resources.predictor(ref)
    thr = state.threshold()
    st.title("Review")
    batch = state.triage_store().batch
    if batch is None or not batch.records:
        st.info("No worklist yet: upload studies on the Triage page first.")
        st.page_link("views/triage.py", label="Go to Triage", icon=":material/format_list_numbered:")
        return
    df = batch.worklist
    readable = worklist.readable_shas(df)
    if not readable:
        st.warning("No study in the worklist could be read; see the reasons on the Triage page.")
        return
    flagged = worklist.flagged_shas(df, thr)
    if batch.model_key != ref.key:
        st.warning("The worklist was scored with another model: open Triage to rescore it.")
    if st.session_state.get(state.REVIEW_SHA) not in readable:
        st.session_state[state.REVIEW_SHA] = (flagged or readable)[0]
    sha = st.session_state[state.REVIEW_SHA]
    st.session_state[PICK] = sha
    names = {s: n for s, n in zip(df["sha256"], df["file"]) if s}
    probs = {s: p for s, p in zip(df["sha256"], df["probability"]) if s}

    n1, n2, n3 = st.columns([1, 4, 1], vertical_alignment="bottom")
    n1.button("Previous flagged", icon=":material/arrow_back:", key="prev_flagged",
              on_click=_step, args=(flagged, readable, -1), disabled=not flagged, width="stretch")
    n2.selectbox("Study", readable, key=PICK, on_change=_picked,
                 format_func=lambda s: f"{names.get(s, s[:12])} — {probs[s]:.3f}"
                                       + (" ⚑" if probs[s] >= thr else ""))
    n3.button("Next flagged", icon=":material/arrow_forward:", key="next_flagged",
              on_click=_step, args=(flagged, readable, +1), disabled=not flagged, width="stretch")
    pos = f"flagged study {flagged.index(sha) + 1} of {len(flagged)}" if sha in flagged else \
        f"not flagged ({len(flagged)} flagged in the worklist)"
    st.caption(pos)

    rec = batch.record(sha)
    item = batch.sources.get(sha)
    if rec is None or item is None:
        st.error("This study is no longer in the uploads.")
        return
    with st.expander("Display", expanded=False, icon=":material/tune:"):
        d1, d2, d3 = st.columns(3)
        method = d1.selectbox("Explanation", METHODS, key="rv_method", persist_state="session",
                              format_func=lambda m: METHOD_NAMES.get(m, m),
                              help="Grad-CAM is fast; the others take seconds on a CPU.")
        cmap = d2.selectbox("Colormap", list(COLORMAPS), key="rv_cmap", persist_state="session")
        opacity = d3.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="rv_opacity", persist_state="session")
        w1, w2, w3 = st.columns(3)
        center = w1.slider("Window level (centre)", 0.0, 1.0, 0.5, 0.01, key="rv_center",
                           persist_state="session", help="Display only: the model always sees the full range.")
        width = w2.slider("Window width", 0.05, 1.0, 1.0, 0.01, key="rv_width", persist_state="session")
        min_heat = w3.slider("Overlay only where heat ≥", 0.0, 0.9, 0.2, 0.05, key="rv_min_heat",
                             persist_state="session",
                             help="Leaves the radiograph untinted where the explanation is weak "
                                  "(heat is scaled 0-1 per image); 0 tints the whole film.")

    try:
        imgs = resources.study_images(sha, pred.prep.image_size, item, pred.prep)
    except (ImageReadError, OSError) as exc:
        st.error(f"Cannot display this study: {exc}")
        return
    heat = resources.heatmap(ref.key, sha, method, resources.explainer(ref), imgs.model_input)
    original, overlay, alone = imaging.review_panels(imgs.display, heat, center=center, width=width,
                                                     colormap=cmap, opacity=opacity, min_heat=min_heat)

    p = rec.probability
    s1, s2, s3 = st.columns(3)
    s1.metric("Probability of pneumonia", f"{p:.3f}")
    s2.metric("Threshold", f"{thr:.3f}", delta=f"{p - thr:+.3f} probability − threshold",
              delta_color="off")
    s3.metric("At this threshold", "FLAGGED" if p >= thr else "not flagged")
    for w in rec.warnings:
        st.warning(w, icon=":material/warning:")

    c1, c2 = st.columns(2)
    c1.image(original, caption=f"{rec.name} (window {center:.2f} / {width:.2f})", width="stretch")
    c2.image(overlay, caption=f"{METHOD_NAMES.get(method, method)} overlay ({cmap}, opacity {opacity:.2f}, "
                              f"heat ≥ {min_heat:.2f})",
             width="stretch")
    h1, h2 = st.columns(2)
    with h1:
        st.image(alone, caption=f"{METHOD_NAMES.get(method, method)} heatmap alone "
                                f"(evidence for pneumonia, warmer = more; scaled within this image, so a low-probability "
                                f"study still shows a warmest spot)", width="stretch")
    with h2:
        _header_panel(imgs.image)
    _review_form(rec, f"{pred.card.name} {pred.card.version}".strip(), thr)


if __name__ == "__main__":
    render()
