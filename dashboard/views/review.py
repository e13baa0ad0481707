"""Review: one study at a time, radiograph beside its Grad-CAM heatmap; record agree/disagree."""

from __future__ import annotations


import pandas as pd
import streamlit as st

from engine.errors import ImageReadError
from engine.inference.explain import METHODS
from engine.inference.overlay import COLORMAPS, colour_scale
from engine.worklist.store import DecisionExists, StoreError
from engine.evaluation import metrics as M

from dashboard import figures, imaging, pacs_panel, resources, state, viewer, worklist
from dashboard.review_queue import ReviewQueue
from engine.settings import settings

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


def _record(study_id: int, study_name: str, decision: str, probability: float, model_label: str, thr: float,
            queue: ReviewQueue, sha: str) -> None:
    """Button callback, bound to the study whose buttons were pressed (their key and these arguments carry
    its identity): a key press that arrives while the page moves on lands on the study it was pressed on,
    and a study that already has a decision changes only after an explicit "Change my decision"."""
    short = study_name.rsplit("/", 1)[-1]
    reviewer = state.worklist().reviewer
    if not reviewer:
        st.session_state[state.REVIEW_FLASH] = ("error", f"Not recorded ({short}): enter your name first.")
        return
    change = bool(st.session_state.pop(_change_key(study_id), False))
    try:
        resources.store().record_decision(study_id, reviewer=reviewer, decision=decision, probability=probability,
                                          threshold=thr, model=model_label, change=change,
                                          note=st.session_state.get(state.REVIEW_NOTE, ""))
    except DecisionExists as exc:
        st.session_state[state.REVIEW_FLASH] = (
            "error", f"Not recorded: {short} already has a decision ({exc.earlier['decision']}). "
                     "Open it and press “Change my decision” to change it.")
        return
    except (StoreError, OSError) as exc:
        st.session_state[state.REVIEW_FLASH] = ("error", f"Could not record the review of {short}: {exc}")
        return
    verb = "changed to" if change else "recorded:"
    st.session_state[state.REVIEW_FLASH] = ("success", f"Decision {verb} {decision} ({short}).")
    st.session_state[state.REVIEW_NOTE] = ""
    if st.session_state.get(state.REVIEW_SHA) == sha:          # still on it: move on to the next one
        following = queue.after_decision(sha)
        if following is not None:
            st.session_state[state.REVIEW_SHA] = following


def _change_key(study_id: int) -> str:
    return f"_change_decision_{study_id}"


def _ask_change(study_id: int) -> None:
    st.session_state[_change_key(study_id)] = True


def _set_reviewer() -> None:
    """Callback of Review's name prompt: the worklist's reviewer, also shown in the sidebar's field."""
    name = str(st.session_state.get("review_reviewer", "")).strip()
    if name:
        state.set_worklist(resources.store().set_reviewer(state.worklist(), name))
        st.session_state["reviewer_name"] = name


def _reviewer_prompt() -> bool:
    """Ask for the reader's name before the first decision; True when there is one."""
    if state.worklist().reviewer:
        return True
    r1, r2 = st.columns([2, 3], vertical_alignment="center")     # one line: the images keep their height
    r1.text_input("Your name, recorded with each decision (asked once for this worklist)", key="review_reviewer",
                  max_chars=80, placeholder="Your name, e.g. Dr A. Reader", on_change=_set_reviewer,
                  label_visibility="collapsed")
    r2.markdown(":orange[:material/person: Enter your name to record decisions (asked once for this worklist; "
                "it is recorded with each decision).]")
    return False


def _decision_bar(rec, model_label: str, thr: float, queue: ReviewQueue) -> None:
    """Agree / disagree (A, D) of equal weight, drawn first so that they arrive with the study's name.

    Each study has its own buttons (the key carries its hash): a press always names the study it was
    made on. A decided study shows its decision and a "Change my decision" button instead."""
    key = rec.sha256[:16]
    flagged = M.flagged(rec.probability, thr)
    earlier = resources.store().decisions(rec.id)
    changing = bool(st.session_state.get(_change_key(rec.id)))
    can_decide = _reviewer_prompt()
    b1, b2, b3, b4 = st.columns([2, 3, 3, 4], vertical_alignment="center")
    if earlier and not changing:
        last = earlier[-1]
        b1.markdown(f"**{'Agreed' if last['decision'] == 'agree' else 'Disagreed'}**")
        b2.button("Change my decision", key=f"review_change_{key}", on_click=_ask_change, args=(rec.id,),
                  icon=":material/edit:", width="stretch")
        b4.caption(f"Decided by {last['reviewer'] or 'an unnamed reviewer'} at {worklist.utc_time(last['time'])}"
                   + (f" · changed {len(earlier) - 1}x" if len(earlier) > 1 else ""))
    else:
        args = (rec.id, rec.name, "agree", rec.probability, model_label, thr, queue, rec.sha256)
        b1.button("Agree", key=f"review_agree_{key}", shortcut="A", on_click=_record, args=args,
                  icon=":material/check:", width="stretch", disabled=not can_decide)
        b2.button("Disagree", key=f"review_disagree_{key}", shortcut="D", on_click=_record,
                  args=(*args[:2], "disagree", *args[3:]), icon=":material/close:", width="stretch",
                  disabled=not can_decide)
        b4.caption(("Changing the decision: the earlier one is kept in the history. " if changing else "")
                   + f"The model {'flags' if flagged else 'does not flag'} this study at {thr:.3f}. "
                   "Do you agree? (A / D)")
    b3.text_input("Note", key=state.REVIEW_NOTE, max_chars=2000, label_visibility="collapsed",
                  placeholder="Note (optional; no identifiers)")
    flash = st.session_state.pop(state.REVIEW_FLASH, None)
    if flash:
        getattr(st, flash[0])(flash[1])


def _history(rec) -> None:
    earlier = resources.store().decisions(rec.id)
    if not earlier:
        st.caption("Not reviewed yet.")
        return
    table = pd.DataFrame(earlier).assign(
        time=lambda d: d["time"].map(worklist.utc_time),
        status=lambda d: ["changed later" if c else ("current (changed)" if r is not None and r == r else "current")
                          for c, r in zip(d["changed_later"], d["replaces"])])
    st.dataframe(table[["time", "reviewer", "decision", "status", "note", "probability", "threshold"]],
                 hide_index=True, key="file_reviews", column_config={
                     "time": st.column_config.TextColumn("Time (UTC)", width=150),
                     "probability": st.column_config.NumberColumn(format="%.4f"),
                     "threshold": st.column_config.NumberColumn(format="%.4f")})


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
    n1, n2, n3, n4 = st.columns([1.5, 4, 1.3, 2.2], vertical_alignment="bottom")
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
    model_label = pred.card.label
    _decision_bar(rec, model_label, thr, queue)         # first: it arrives with the study's name
    shown = _study_view(rec, item, sha, ref, pred, thr)
    with st.expander("Decision history, warnings in full, heatmap alone and the study header", expanded=False):
        _history(rec)
        for w in rec.warnings:
            st.caption(f":material/warning: {w}")
        if shown is not None:
            image, alone, _ = shown
            h1, h2 = st.columns(2)
            h1.image(alone, caption="Heatmap alone (evidence for pneumonia, warmer = more; scaled within this "
                                    "image, so a low-probability study still shows a warmest spot)", width="stretch")
            with h2:
                _header_panel(image)
    pacs_panel.send_to_pacs(store, rec, pred, resources.explainer(ref), thr,
                            str(st.session_state.get(state.PRESET) or ""),
                            heat=shown[2] if shown is not None else None)
    _export_section(store)


def _display_settings() -> tuple[str, str, float, bool, float]:
    """The Display expander's values as the last run left them (its widgets are drawn below the images,
    so the images and the decision stay in view when it is open; window/level is in the viewer's own bar)."""
    ss = st.session_state
    return (ss.get("rv_method", METHODS[0]), ss.get("rv_cmap", next(iter(COLORMAPS))), float(ss.get("rv_opacity", 0.4)),
            bool(ss.get("rv_linked", False)), float(ss.get("rv_min_heat", 0.2)))


def _display_controls(linked: bool) -> None:
    d1, d2, d3, d4 = st.columns(4)
    d1.selectbox("Explanation", METHODS, key="rv_method", persist_state="session", format_func=lambda m: METHOD_NAMES.get(m, m),
                 help="Grad-CAM is fast; the others take seconds on a CPU.")
    d2.selectbox("Colormap", list(COLORMAPS), key="rv_cmap", persist_state="session")
    d3.slider("Heatmap opacity", 0.0, 1.0, step=0.05, key="rv_opacity", persist_state="session")
    d4.slider("Overlay only where heat ≥", 0.0, 0.9, step=0.05, key="rv_min_heat", persist_state="session",
              help="Leaves the radiograph untinted where the explanation is weak (heat is scaled 0-1 per "
                   "image); 0 tints the whole film.")
    st.toggle("Full resolution, linked zoom and pan (original and overlay move together)", key="rv_linked", persist_state="session",
              help="The file's own pixels (up to 4,096 a side): slower to draw than the side-by-side copies"
                   + ("" if linked else ", and its window/level is set here on the server, not in the browser") + ".")


def _status_line(p: float, thr: float) -> None:
    """The probability and the verdict at the threshold in force, on one line (the images keep the height)."""
    flagged = M.flagged(p, thr)
    st.markdown(f"**P(pneumonia) {p:.3f}** · operating point {state.operating_point_label()} · "
                f"**{'FLAGGED' if flagged else 'not flagged'}** ({p - thr:+.3f} vs threshold)",
                help="The model's probability of pneumonia; a study is flagged when probability ≥ threshold.")


def _study_view(rec, item, sha: str, ref, pred, thr: float):
    """Probability, warnings, the radiograph beside its heatmap overlay (window/level in the browser), then
    the display controls. Returns (decoded image, heatmap alone, the Grad-CAM map when that is the
    method shown, for the PACS send to reuse), or None when the study cannot be displayed."""
    for k, v in (("rv_method", METHODS[0]), ("rv_cmap", next(iter(COLORMAPS))), ("rv_opacity", 0.4),
                 ("rv_min_heat", 0.2), ("rv_linked", False)):
        st.session_state.setdefault(k, v)
    method, cmap, opacity, linked, min_heat = _display_settings()
    _status_line(rec.probability, thr)
    if rec.warnings:       # one line; the full text is in the panel below the images
        st.warning(" · ".join(worklist.short_warning(w) for w in rec.warnings) + " (details under the images)",
                   icon=":material/warning:")
    try:
        load = resources.study_full_resolution if linked else resources.study_images
        imgs = load(sha, pred.prep.image_size, item, pred.prep)
    except (ImageReadError, OSError) as exc:
        st.error(f"Cannot display this study: {exc}")
        return None
    heat = resources.heatmap(ref.key, sha, method, resources.explainer(ref), imgs.model_input)
    sr_heat = heat if method == "gradcam" else None          # the PACS results carry Grad-CAM only
    overlay_text = f"{METHOD_NAMES.get(method, method)} overlay ({cmap}, opacity {opacity:.2f}, heat ≥ {min_heat:.2f})"
    if not linked:
        viewer.show(resources.viewer_payload(ref.key, sha, pred.prep.image_size, method, cmap, opacity, min_heat,
                                             rec.name, overlay_text, imgs, heat))
        with st.expander("Display: explanation, colours, full resolution", expanded=False, icon=":material/tune:"):
            _display_controls(linked)
        return imgs.image, imaging.heat_alone(heat, imgs.display.shape[:2], cmap), sr_heat
    panel = st.container()
    with st.expander("Display: window/level, explanation, colours", expanded=False, icon=":material/tune:"):
        shown, window_text = _window_controls(imgs, sha)
        _display_controls(linked)
    original, overlay, alone = imaging.review_panels(shown, heat, colormap=cmap, opacity=opacity, min_heat=min_heat)
    panel.plotly_chart(figures.linked_views(original, overlay, ("Original", "Overlay")),
                       key="rv_linked_views", config={"scrollZoom": True, "displaylogo": False})
    h, w = original.shape[:2]
    panel.caption(f"Original: {rec.name} ({window_text}, {w:,} x {h:,} px) · overlay: {overlay_text} · drag "
                  "to zoom, double-click to reset; both views move together")
    panel.image(colour_scale(cmap, 256, 10), width=300, caption="heat 0 → 1: evidence for pneumonia")
    return imgs.image, alone, sr_heat


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
    scale = imaging.WindowScale.of(float(imgs.raw.min()), float(imgs.raw.max()))
    presets = imaging.window_presets(imgs.raw, meta.window_center, meta.window_width, scale=scale)
    first_center, first_width = next(iter(presets.values()))
    st.session_state.setdefault(f"rv_wc_{key}", first_center)
    st.session_state.setdefault(f"rv_ww_{key}", first_width)
    w0, w1, w2, w3 = st.columns([3, 2, 2, 1], vertical_alignment="bottom")
    w0.selectbox("Window preset", list(presets), key=f"rv_wl_preset_{key}", on_change=_apply_preset,
                 args=(key, presets), help="In the DICOM's own units (after the rescale slope/intercept).")
    fmt = f"%.{scale.decimals}f"
    center = w1.number_input("Window centre", value=None, key=f"rv_wc_{key}", step=scale.step * 10, format=fmt)
    width = w2.number_input("Window width", value=None, key=f"rv_ww_{key}", min_value=scale.step,
                            step=scale.step * 10, format=fmt)
    invert = w3.checkbox("Invert", key=f"rv_invert_{key}")
    center = first_center if center is None else float(center)
    width = first_width if width is None else float(width)
    shown = imaging.window_units(imgs.raw, center, width, invert=invert,
                                 monochrome1=(meta.photometric_interpretation or "") == "MONOCHROME1")
    return shown, f"WC {scale.fmt(center)} / WW {scale.fmt(width)}" + (", inverted" if invert else "")


def _export_section(store) -> None:
    """Decisions as CSV: this worklist's (the reviewer's own), or everyone's where the deployment allows."""
    everyone = settings().shared_review_export
    data = store.decisions_csv(None if everyone else state.worklist())
    st.download_button("Download " + ("everyone's decisions" if everyone else "your decisions") + " (CSV, times in UTC)",
                       data=data, file_name="review_decisions.csv", mime="text/csv", icon=":material/download:",
                       key="log_csv", on_click="ignore")


if __name__ == "__main__":
    render()
