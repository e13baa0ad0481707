"""Review: one study at a time, radiograph beside its Grad-CAM heatmap; record agree/disagree."""

from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from engine.errors import ImageReadError
from engine.explain import METHODS
from engine.overlay import COLORMAPS, colour_scale
from engine.store import StoreError
from engine import metrics as M

from dashboard import figures, imaging, pacs_panel, resources, state
from dashboard.review_queue import ReviewQueue

METHOD_NAMES = {"gradcam": "Grad-CAM", "guided_gradcam": "Guided Grad-CAM",
                "integrated_gradients": "Integrated Gradients", "occlusion": "Occlusion"}


def _step(queue: ReviewQueue, delta: int) -> None:
    """Button callback: the previous/next flagged study."""
    target = queue.step(st.session_state.get(state.REVIEW_SHA), delta)
    if target is not None:
        st.session_state[state.REVIEW_SHA] = target


def _picked() -> None:
    st.session_state[state.REVIEW_SHA] = st.session_state[state.REVIEW_PICK]


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


def _record(study_id: int, decision: str, rec, model_label: str, thr: float, queue: ReviewQueue) -> None:
    """Button callback: record the decision, then open the next unreviewed flagged study."""
    store = resources.store()
    try:
        store.record_decision(study_id, reviewer=state.worklist().reviewer, decision=decision,
                              probability=rec.probability, threshold=thr, model=model_label,
                              note=st.session_state.get(state.REVIEW_NOTE, ""))
    except (StoreError, OSError) as exc:
        st.session_state[state.REVIEW_FLASH] = ("error", f"Could not record the review: {exc}")
        return
    st.session_state[state.REVIEW_FLASH] = ("success", f"Recorded: {decision} ({rec.name.rsplit('/', 1)[-1]}).")
    st.session_state[state.REVIEW_NOTE] = ""
    following = queue.after_decision(rec.sha256)
    if following is not None:
        st.session_state[state.REVIEW_SHA] = following


def _review_form(rec, model_label: str, thr: float, queue: ReviewQueue) -> None:
    """Agree / disagree as two buttons (A, D) of equal weight: a decision is always an explicit choice,
    and neither answer is drawn as the expected one (no nudge towards agreeing with the model)."""
    flagged = M.flagged(rec.probability, thr)
    st.markdown(f"**Your review.** The model {'flags' if flagged else 'does not flag'} this study at "
                f"{thr:.3f}. Do you agree?")
    st.text_input("Note (optional; no patient identifiers)", key=state.REVIEW_NOTE, max_chars=2000)
    b1, b2 = st.columns(2)
    args = (rec.id, "agree", rec, model_label, thr, queue)
    b1.button("Agree", key="review_agree", shortcut="A", on_click=_record, args=args,
              icon=":material/check:", width="stretch")
    b2.button("Disagree", key="review_disagree", shortcut="D", on_click=_record,
              args=(rec.id, "disagree", *args[2:]), icon=":material/close:", width="stretch")
    flash = st.session_state.pop(state.REVIEW_FLASH, None)
    if flash:
        getattr(st, flash[0])(flash[1])
    store = resources.store()
    earlier = store.decisions(rec.id)
    if earlier:
        last = earlier[-1]
        st.caption(f"Recorded decision: **{last['decision']}** by {last['reviewer'] or 'an unnamed reviewer'} "
                   f"at {_local_time(last['time'])} ({len(earlier)} in all).")
        st.dataframe(pd.DataFrame(earlier).assign(time=lambda d: d["time"].map(_local_time))[
            ["time", "reviewer", "decision", "note", "probability", "threshold"]], hide_index=True,
            key="file_reviews")
    else:
        st.caption("Not reviewed yet.")


def _local_time(iso: str) -> str:
    from datetime import datetime
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    except ValueError:
        return iso


def render() -> None:
    ref = state.model_ref()
    pred = resources.predictor(ref)
    thr = state.threshold()
    store = resources.store()
    batch = resources.worklist_batch(state.worklist(), ref.key)
    if batch is None or not batch.records:
        st.title("Review")
        st.info("No worklist yet: upload studies on the Triage page first.")
        st.page_link("views/triage.py", label="Go to Triage", icon=":material/format_list_numbered:")
        return
    df = batch.worklist
    queue = ReviewQueue.of(df, thr)
    if not queue.readable:
        st.title("Review")
        st.warning("No study in the worklist could be read; see the reasons on the Triage page.")
        return
    flagged, readable = queue.flagged, queue.readable
    sha = st.session_state[state.REVIEW_SHA] = queue.opening(st.session_state.get(state.REVIEW_SHA))
    st.session_state[state.REVIEW_PICK] = sha
    names = {s: n for s, n in zip(df["sha256"], df["file"]) if s}
    probs = {s: p for s, p in zip(df["sha256"], df["probability"]) if s}

    st.subheader("Review", anchor=False)
    n1, n2, n3, n4 = st.columns([1, 4, 1, 2], vertical_alignment="bottom")
    n1.button("Previous", icon=":material/arrow_back:", key="prev_flagged", shortcut="P",
              on_click=_step, args=(queue, -1), disabled=not flagged, width="stretch",
              help="Previous flagged study (P)")
    n2.selectbox("Study", readable, key=state.REVIEW_PICK, on_change=_picked, label_visibility="collapsed",
                 format_func=lambda s: f"{names.get(s, s[:12])} — {probs[s]:.3f}"
                                       + (" ⚑" if M.flagged(probs[s], thr) else "") + (" ✓" if s in queue.reviewed else ""))
    n3.button("Next", icon=":material/arrow_forward:", key="next_flagged", shortcut="N",
              on_click=_step, args=(queue, +1), disabled=not flagged, width="stretch",
              help="Next flagged study (N)")
    n4.caption((f"flagged study {flagged.index(sha) + 1} of {len(flagged)}" if sha in flagged else
                f"not flagged ({len(flagged)} flagged)") + f" · {len(queue.unreviewed)} flagged left to review · "
               "keys: A agree, D disagree, N next, P previous")

    rec = batch.record(sha)
    item = batch.sources.get(sha)
    if rec is None or item is None:
        st.error("This study is no longer in the worklist.")
        return
    with st.expander("Display", expanded=False, icon=":material/tune:"):
        d1, d2, d3 = st.columns(3)
        method = d1.selectbox("Explanation", METHODS, key="rv_method", persist_state="session",
                              format_func=lambda m: METHOD_NAMES.get(m, m),
                              help="Grad-CAM is fast; the others take seconds on a CPU.")
        cmap = d2.selectbox("Colormap", list(COLORMAPS), key="rv_cmap", persist_state="session")
        opacity = d3.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="rv_opacity", persist_state="session")
        linked = st.toggle("Full resolution, linked zoom and pan (original and overlay move together)",
                           key="rv_linked", persist_state="session",
                           help="The file's own pixels (up to 4,096 a side): slower to draw than the "
                                "side-by-side copies.")
        min_heat = st.slider("Overlay only where heat ≥", 0.0, 0.9, 0.2, 0.05, key="rv_min_heat",
                             persist_state="session",
                             help="Leaves the radiograph untinted where the explanation is weak "
                                  "(heat is scaled 0-1 per image); 0 tints the whole film.")
        try:
            load = resources.study_full_resolution if linked else resources.study_images
            imgs = load(sha, pred.prep.image_size, item, pred.prep)
        except (ImageReadError, OSError) as exc:
            st.error(f"Cannot display this study: {exc}")
            return
        shown, window_text = _window_controls(imgs, sha)

    heat = resources.heatmap(ref.key, sha, method, resources.explainer(ref), imgs.model_input)
    original, overlay, alone = imaging.review_panels(shown, heat, colormap=cmap, opacity=opacity,
                                                     min_heat=min_heat)

    overlay_text = (f"{METHOD_NAMES.get(method, method)} overlay ({cmap}, opacity {opacity:.2f}, "
                    f"heat ≥ {min_heat:.2f})")
    if linked:
        views, c3 = st.columns([10, 4])
        views.plotly_chart(figures.linked_views(original, overlay, ("Original", "Overlay")),
                           key="rv_linked_views", config={"scrollZoom": True, "displaylogo": False})
        h, w = original.shape[:2]
        views.caption(f"Original: {rec.name} ({window_text}, {w:,} x {h:,} px) · overlay: {overlay_text}")
        views.image(colour_scale(cmap, 256, 10), width=300,
                    caption="heat 0 → 1: evidence for pneumonia, scaled within this image · drag to zoom, "
                            "double-click to reset; both views move together")
    else:
        c1, c2, c3 = st.columns([5, 5, 4])
        c1.image(original, caption=f"{rec.name} ({window_text})", width="stretch")
        c2.image(overlay, caption=overlay_text, width="stretch")
        c2.image(colour_scale(cmap, 256, 10), width="stretch",
                 caption="heat 0 → 1: evidence for pneumonia, scaled within this image")
    with c3:
        p = rec.probability
        s1, s2 = st.columns(2)
        s1.metric("Probability of pneumonia", f"{p:.3f}")
        s2.metric("Threshold", f"{thr:.3f}", delta=f"{p - thr:+.3f} probability − threshold", delta_color="off")
        st.markdown(f"At this threshold: **{'FLAGGED' if M.flagged(p, thr) else 'not flagged'}**")
        _review_form(rec, f"{pred.card.name} {pred.card.version}".strip(), thr, queue)
        for w in rec.warnings:              # below the decision, so it stays in view at 1440x900
            st.warning(w, icon=":material/warning:")
        pacs_panel.send_to_pacs(store, rec, pred, resources.explainer(ref), thr,
                                str(st.session_state.get(state.PRESET) or ""))
    with st.expander("Heatmap alone and the study header", expanded=False):
        h1, h2 = st.columns(2)
        h1.image(alone, caption=f"{METHOD_NAMES.get(method, method)} heatmap alone "
                                f"(evidence for pneumonia, warmer = more; scaled within this image, so a "
                                f"low-probability study still shows a warmest spot)", width="stretch")
        with h2:
            _header_panel(imgs.image)
    _export_section(store)


def _apply_preset(sha: str, presets: dict) -> None:
    """Preset callback: move this study's window sliders to the chosen preset."""
    center, width = presets[st.session_state[f"rv_wl_preset_{sha}"]]
    st.session_state[f"rv_wc_{sha}"], st.session_state[f"rv_ww_{sha}"] = center, width


def _window_controls(imgs, sha: str):
    """Window/level for this study (reset for each study: the keys carry its hash): in the DICOM's own
    units with presets and invert when the file has them, else on the 0-1 display scale.
    Returns the displayed gray image and a caption."""
    key = sha[:16]
    meta = imgs.image.metadata
    if imgs.raw is None:
        w1, w2 = st.columns(2)
        center = w1.slider("Window level (centre)", 0.0, 1.0, 0.5, 0.01, key=f"rv_center_{key}",
                           help="Display only: the model always sees the full range.")
        width = w2.slider("Window width", 0.05, 1.0, 1.0, 0.01, key=f"rv_width_{key}")
        return imaging.window_level(imgs.display, center, width), f"window {center:.2f} / {width:.2f}"
    presets = imaging.window_presets(imgs.raw, meta.window_center, meta.window_width)
    first_center, first_width = next(iter(presets.values()))
    st.session_state.setdefault(f"rv_wc_{key}", first_center)
    st.session_state.setdefault(f"rv_ww_{key}", first_width)
    lo, hi = float(imgs.raw.min()), float(imgs.raw.max())
    span = max(hi - lo, 1.0)
    w0, w1, w2, w3 = st.columns([3, 2, 2, 1], vertical_alignment="bottom")
    w0.selectbox("Window preset", list(presets), key=f"rv_wl_preset_{key}", on_change=_apply_preset,
                 args=(key, presets), help="In the DICOM's own units (after the rescale slope/intercept).")
    center = w1.number_input("Window centre", value=None, key=f"rv_wc_{key}", step=span / 100, format="%g")
    width = w2.number_input("Window width", value=None, key=f"rv_ww_{key}", min_value=1e-3, step=span / 100,
                            format="%g")
    invert = w3.checkbox("Invert", key=f"rv_invert_{key}")
    center = first_center if center is None else float(center)
    width = first_width if width is None else float(width)
    shown = imaging.window_units(imgs.raw, center, width, invert=invert,
                                 monochrome1=(meta.photometric_interpretation or "") == "MONOCHROME1")
    return shown, f"WC {center:g} / WW {width:g}" + (", inverted" if invert else "")


def _export_section(store) -> None:
    """Decisions as CSV: this worklist's (the reviewer's own), or everyone's where the deployment allows."""
    everyone = os.environ.get("CXR_SHARED_REVIEW_EXPORT") == "1"
    data = store.decisions_csv(None if everyone else state.worklist())
    st.download_button("Download " + ("everyone's decisions" if everyone else "your decisions") + " (CSV)",
                       data=data, file_name="review_decisions.csv", mime="text/csv", icon=":material/download:",
                       key="log_csv", on_click="ignore")


if __name__ == "__main__":
    render()
