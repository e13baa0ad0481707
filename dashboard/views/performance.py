"""Performance & thresholds: how the model does on labelled data at the current threshold."""

from __future__ import annotations

from typing import Optional

import numpy as np
import streamlit as st

from engine.evaluation import metrics as M
from engine.worklist.csvsafe import frame_csv
from engine.inputs.paths import PathNotAllowed, confine
from engine.evaluation.provenance import overlap_warning
from engine.evaluation.site import ProfileError, fit_profile, labels_from_decisions, list_profiles, save_profile
from engine.inputs.sources import items_from_uploads, iter_inputs

from engine.errors import ImageReadError

from dashboard import figures, imaging, labels, resources, state
from dashboard.batch import MAX_FILES, score_items
from dashboard.evaluation import (LabelledDataError, LabelledSet, interval_text, labelled_set_from_records,
                                  metrics_table, per_file, subgroup_metrics, subgroups_of)
from engine.worklist.ingest import cached_item

SOURCES = ("Model's validation predictions", "Predictions CSV", "Images in class folders",
           "Your reviewed studies")
TARGETS = {"Sensitivity at least": "sensitivity", "Specificity at least": "specificity",
           "Youden's J (no target)": "youden", "The current threshold": "fixed"}
MAX_EVAL_FILES = 10 * MAX_FILES


def _rule(kind: str, target: float, threshold: float) -> str:
    if kind == "youden":
        return "youden"
    if kind == "fixed":
        return f"fixed:{threshold:.6f}"
    return f"{kind}>={target:g}"


def _fit_and_save(ls: LabelledSet, model_label: str, source: str) -> None:
    """Button callback: fit a site profile on the data shown, save it, move the threshold to it."""
    ss = st.session_state
    kind = TARGETS[ss.get("site_target_kind", next(iter(TARGETS)))]
    rule = _rule(kind, float(ss.get("site_target", 0.95)), state.threshold())
    try:
        profile = fit_profile(ss.get("site_name", ""), ls.labels, ls.scores, rule, model=model_label,
                              source=source)
        save_profile(profile)
    except ProfileError as exc:
        ss[state.SITE_MESSAGE] = ("error", str(exc))
        return
    ss[state.THRESHOLD] = profile.threshold
    ss[state.PRESET] = state.site_preset_label(profile)    # the sidebar names the profile now in force
    ss[state.SITE_MESSAGE] = ("success" if profile.reliable else "warning",
                       f"Saved. {profile.summary()}. It is in the sidebar's list on every page, and "
                       f"`engine.predict --profile '{profile.name}'` uses it.")


def _site_profile_section(ls: LabelledSet, model_label: str, source: str) -> None:
    st.subheader("Site profile: an operating point for this data")
    st.caption("Fitted on the studies shown here, saved on the server by name (it survives restarts).")
    a, b = st.columns([3, 2])
    kind = a.selectbox("Rule", list(TARGETS), key="site_target_kind")
    b.number_input("Target", 0.0, 1.0, 0.95, 0.01, key="site_target", format="%.2f",
                   disabled=TARGETS[kind] in ("youden", "fixed"))
    st.text_input("Profile name", key="site_name", placeholder="e.g. Clinic A, 2026 Q4", max_chars=60)
    st.button("Fit and save the profile", key="site_save", on_click=_fit_and_save, args=(ls, model_label, source),
              icon=":material/bookmark_add:")
    msg = st.session_state.pop(state.SITE_MESSAGE, None)
    if msg:
        getattr(st, msg[0])(msg[1])


def _profiles_table() -> None:
    """The saved site profiles, across the page (a half-width column cut its right columns off)."""
    profiles = list_profiles()
    if not profiles:
        return
    st.caption("Saved site profiles (every model's; the sidebar lists those of the model in use)")
    st.dataframe({"profile": [p.name for p in profiles], "threshold": [round(p.threshold, 3) for p in profiles],
                  "rule": [p.rule for p in profiles], "cases": [f"{p.n_pneumonia}/{p.n_normal}" for p in profiles],
                  "reliable": ["yes" if p.reliable else "no: too few" for p in profiles],
                  "model": [labels.short_label(p.model) for p in profiles]},
                 hide_index=True, key="site_profiles", column_config={
                     "profile": st.column_config.TextColumn("Profile", width=220),
                     "threshold": st.column_config.NumberColumn("Threshold", format="%.3f", width=90),
                     "rule": st.column_config.TextColumn("Rule", width=200),
                     "cases": st.column_config.TextColumn("Cases", width=90, help="pneumonia/normal cases it was fitted on"),
                     "reliable": st.column_config.TextColumn("Reliable", width=90),
                     "model": st.column_config.TextColumn("Model", width=180)})


def _reviewed_source() -> Optional[LabelledSet]:
    st.caption("Studies you reviewed become labelled: agreeing with a flag (or disagreeing with no flag) "
               "means pneumonia; disagreeing with a flag (or agreeing with no flag) means normal. "
               "The probability is the one you saw; your latest decision per study counts.")
    decisions = resources.store().worklist_decisions(state.worklist())
    if not decisions:
        st.info("No reviewed studies in your worklist yet: record decisions on the Review page.")
        return None
    truth, scores = labels_from_decisions(decisions)
    names = {d["study_id"]: d["name"] for d in decisions}          # in the order labels_from_decisions keeps
    batch = resources.worklist_batch(state.worklist(), state.model_ref().key)     # cached; not re-read
    stored = {r.id: r for r in batch.records} if batch is not None else {}
    groups = tuple(subgroups_of(stored[i]) if i in stored else {} for i in names)
    return LabelledSet(f"your {labels.plural(len(truth), 'reviewed study')}", truth, scores, tuple(names.values()),
                       subgroups=groups)


def _folder_source(ref, pred) -> Optional[LabelledSet]:
    class_dirs = "/".join(c.upper() for c in pred.card.class_names)
    st.caption(f"A folder under the server's data roots (CXR_DATA_ROOT), or a ZIP, with class subfolders ({class_dirs}/ at any depth). "
               f"The model scores each image once; up to {MAX_EVAL_FILES:,} images.")
    folder = st.text_input("Folder path", key="perf_folder", persist_state="session").strip()
    archive = st.file_uploader("…or a ZIP archive", key="perf_zip")
    signature = ("folder", folder) if folder else (("zip", archive.file_id) if archive else None)
    run = st.button("Score with the model", key="perf_run", disabled=signature is None,
                    icon=":material/play_arrow:")
    done = st.session_state.get(state.PERF_SCORED)
    if run and signature is not None:
        try:
            root = confine(folder, "data") if folder else None
        except PathNotAllowed as exc:
            st.error(str(exc))
            return None
        items = iter_inputs([root]) if root is not None else \
            items_from_uploads([(archive.name, archive.getvalue())])
        bar = st.progress(0.0, text="Scoring…")
        records = score_items(items, pred, ref.key, resources.store(), max_files=MAX_EVAL_FILES,
                              progress=lambda d, t: bar.progress(d / max(t or d, 1), text=f"Scoring {d:,} of {t:,}"))
        bar.empty()
        try:
            scored = labelled_set_from_records(records, folder or archive.name, pred.card.class_names)
        except LabelledDataError as exc:
            st.error(str(exc))
            return None
        done = st.session_state[state.PERF_SCORED] = {"signature": (signature, ref.key), "set": scored}
    if done and done["signature"] == (signature, ref.key):
        return done["set"]
    return None


def _labelled_set(ref, pred) -> Optional[LabelledSet]:
    source = st.radio("Labelled data", SOURCES, horizontal=True, key=state.PERF_SOURCE, persist_state="session")
    names = pred.card.class_names
    if source == SOURCES[0]:
        try:
            ls = resources.validation_set(ref, names)
        except LabelledDataError as exc:
            st.error(str(exc))
            return None
        if ls is None:
            st.info("This checkpoint has no val_predictions.csv: choose another source.")
        return ls
    if source == SOURCES[3]:
        return _reviewed_source()
    if source == SOURCES[1]:
        up = st.file_uploader("Predictions CSV: columns label (0/1 or normal/pneumonia) and probability",
                              type=["csv"], key="perf_csv")
        if up is None:
            return None
        try:
            return resources.labelled_csv(up.getvalue(), up.name, tuple(names))
        except LabelledDataError as exc:
            st.error(str(exc))
            return None
    return _folder_source(ref, pred)


def render() -> None:
    ref = state.model_ref()
    pred = resources.predictor(ref)
    card = pred.card
    thr = state.threshold()
    st.title("Performance & thresholds")
    ls = _labelled_set(ref, pred)
    if ls is None:
        return
    if ls.skipped:
        with st.expander(f"{labels.plural(len(ls.skipped), 'file')} left out"):
            st.dataframe({"file: reason": list(ls.skipped)}, hide_index=True)
    if not ls.both_classes:
        st.error(f"{ls.name}: {labels.plural(ls.n, 'study')}, {ls.n_positive} with pneumonia. The metrics need both "
                 "classes present.")
        return
    st.caption(f"{ls.name}: {labels.plural(ls.n, 'study')} ({ls.n_positive:,} pneumonia, {ls.n - ls.n_positive:,} normal). "
               f"Threshold {thr:.3f} from the sidebar; flag rule probability ≥ threshold.")
    held_out = _held_out_note(ref, ls)
    if held_out:
        st.warning(held_out, icon=":material/warning:")

    y, s = ls.labels, ls.scores
    conf = M.confusion_at(y, s, thr)
    table = metrics_table(ls, thr)
    cols = st.columns(len(table))
    for col, row in zip(cols, table.itertuples()):
        interval = interval_text(row.ci_low, row.ci_high)
        col.metric(row.metric, "—" if np.isnan(row.value) else f"{row.value:.3f}",
                   help=f"95% interval {interval or 'not shown: too few cases'} (exact Clopper-Pearson for "
                        "proportions, bootstrap for F1)")
        col.caption(f"95% CI {interval}" if interval else "no interval: too few cases")
    k = st.columns(4)
    for col, (label, v) in zip(k, (("True positives", conf.tp), ("False positives", conf.fp),
                                   ("False negatives", conf.fn), ("True negatives", conf.tn))):
        col.metric(label, f"{v:,}")

    _errors_section(ls, thr)
    _subgroup_section(ls, thr)

    fpr, tpr, _ = M.roc_curve(y, s)
    auc = M.roc_auc(y, s)
    precision, recall, _ = M.precision_recall_curve(y, s)
    ap = M.average_precision(y, s)
    bins = M.calibration_bins(y, s)
    ece = M.expected_calibration_error(y, s)
    point = (1 - conf.specificity, conf.sensitivity)
    g1, g2 = st.columns(2)
    g1.plotly_chart(figures.confusion_figure(conf, card.class_names, thr), key="fig_confusion", config=figures.CHART_CONFIG)
    g2.plotly_chart(figures.roc_figure(fpr, tpr, auc, point, thr, n_negative=ls.n - ls.n_positive),
                    key="fig_roc", config=figures.CHART_CONFIG)
    g3, g4 = st.columns(2)
    g3.plotly_chart(figures.pr_figure(precision, recall, ap, ls.n_positive / ls.n,
                                      (conf.sensitivity, conf.ppv)), key="fig_pr", config=figures.CHART_CONFIG)
    g4.plotly_chart(figures.histogram_figure(y, s, thr, card.class_names), key="fig_hist", config=figures.CHART_CONFIG)
    g5, g6 = st.columns(2)
    g5.plotly_chart(figures.calibration_figure(bins, ece), key="fig_calibration", config=figures.CHART_CONFIG)
    with g6:
        _site_profile_section(ls, card.label, _source_label(ls))
    _profiles_table()


def _subgroup_section(ls: LabelledSet, thr: float) -> None:
    """Metrics per subgroup (source folder, format, modality, view, age band) where the data carry them."""
    table = subgroup_metrics(ls, thr)
    if table.empty:
        if ls.subgroups:
            st.caption("Subgroups: every scored image has the same source folder, format, modality, view and "
                       "age band, so there is nothing to split by.")
        return
    small = int((table[["normal", "pneumonia"]].min(axis=1) < 30).sum())
    with st.expander(f"Metrics per subgroup at {thr:.3f} ({len(table)} groups)", icon=":material/groups:"):
        if small:
            st.caption(f"{labels.plural(small, 'group')} {'has' if small == 1 else 'have'} fewer than 30 cases of a class: their intervals are wide and "
                       "their estimates unreliable.")
        st.dataframe(table, hide_index=True, key="perf_subgroups", column_config={
            "subgroup": st.column_config.TextColumn("Subgroup", width=90),
            "value": st.column_config.TextColumn("Value", width=130),
            **{c: st.column_config.NumberColumn(c.capitalize(), width=70) for c in ("n", "normal", "pneumonia")},
            **{c: st.column_config.NumberColumn(c.upper() if c == "auc" else c.capitalize(), format="%.3f", width=80)
               for c in ("auc", "sensitivity", "specificity")},
            **{f"{c} 95% CI": st.column_config.TextColumn("95% CI", width=110) for c in ("sensitivity", "specificity")}})


def _case_view(case_name: str, sha: str, probability: float, thr: float) -> None:
    """A mis-scored case of the labelled set, shown here beside its heatmap. Research scoring never
    enters a reader's worklist, and the case is named neutrally (its path may carry its label)."""
    ref = state.model_ref()
    pred = resources.predictor(ref)
    store = resources.store()
    try:
        imgs = resources.study_images(sha, pred.prep.image_size, cached_item(store, case_name, sha), pred.prep)
    except (ImageReadError, OSError) as exc:
        st.error(f"Cannot display {case_name}: {exc}")
        return
    heat = resources.heatmap(ref.key, sha, "gradcam", resources.explainer(ref), imgs.model_input)
    original, overlay, _ = imaging.review_panels(imgs.display, heat, min_heat=0.2)
    c1, c2 = st.columns(2)
    c1.image(original, caption=f"{case_name}: P(pneumonia) {probability:.3f} at threshold {thr:.3f}", width="stretch")
    c2.image(overlay, caption="Grad-CAM overlay (not added to any worklist)", width="stretch")


def _errors_section(ls: LabelledSet, thr: float) -> None:
    """The false positives and false negatives at this threshold, one click from Review; per-file export."""
    table = per_file(ls, thr)
    errors = table[table["outcome"].isin(["FP", "FN"])]
    n_fp, n_fn = int((errors["outcome"] == "FP").sum()), int((errors["outcome"] == "FN").sum())
    with st.expander(f"Errors at {thr:.3f}: {labels.plural(n_fp, 'false positive')}, "
                     f"{labels.plural(n_fn, 'false negative')}", expanded=False):
        reviewable = bool(ls.sha256s)
        if reviewable:
            st.caption("Select a row to see that case beside its heatmap here (it is not added to any worklist).")
        event = st.dataframe(errors.drop(columns=["sha256"]), hide_index=True, key="perf_errors",
                             on_select="rerun" if reviewable else "ignore", selection_mode="single-row",
                             column_config={"probability": st.column_config.NumberColumn(format="%.4f")})
        rows = list(event.selection.rows) if reviewable and event is not None else []
        if rows and rows[0] < len(errors):
            row = errors.iloc[rows[0]]
            kind = "false positive" if row["outcome"] == "FP" else "false negative"
            _case_view(f"Case {rows[0] + 1} ({kind})", row["sha256"], float(row["probability"]), thr)
        st.download_button("Download per-file results (CSV)", icon=":material/download:", key="perf_export",
                           data=lambda: frame_csv(table.drop(columns=["sha256"])),
                           file_name="per_file_results.csv", mime="text/csv", on_click="ignore")


def _held_out_note(ref, ls: LabelledSet) -> str:
    """Say so when the figures are not a held-out evaluation."""
    if st.session_state.get(state.PERF_SOURCE, SOURCES[0]) == SOURCES[0]:
        return ("Not held out: these are the model's own validation predictions, on which its threshold was "
                "chosen and its training stopped. Figures on new data will be lower.")
    return overlap_warning(ref.path, ls.sha256s)


def _source_label(ls: LabelledSet) -> str:
    source = st.session_state.get(state.PERF_SOURCE, SOURCES[0])
    return {SOURCES[0]: "validation predictions", SOURCES[1]: "predictions CSV", SOURCES[2]: "labelled images",
            SOURCES[3]: "review decisions"}.get(source, "labelled cases") + f" ({ls.name})"


if __name__ == "__main__":
    render()
