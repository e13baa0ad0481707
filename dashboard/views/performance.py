"""Performance & thresholds: how the model does on labelled data at the current threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import streamlit as st

from engine import metrics as M
from engine.paths import PathNotAllowed, confine
from engine.sources import items_from_uploads, iter_inputs

from dashboard import figures, resources, state
from dashboard.batch import MAX_FILES, score_items
from dashboard.evaluation import LabelledDataError, LabelledSet, labelled_set_from_records, metrics_table

SOURCES = ("Model's validation predictions", "Predictions CSV", "Images in class folders")
MAX_EVAL_FILES = 10 * MAX_FILES
SCORED = "perf_scored"       # {"signature": ..., "set": LabelledSet}


def _save_point() -> None:
    try:
        name = state.save_operating_point(st.session_state.get("op_name", ""), state.threshold())
        st.session_state["_op_saved"] = f"Saved '{name}' at {state.threshold():.3f}: it is in the sidebar's list."
    except ValueError as exc:
        st.session_state["_op_saved"] = f"error: {exc}"


def _folder_source(ref, pred) -> Optional[LabelledSet]:
    class_dirs = "/".join(c.upper() for c in pred.card.class_names)
    st.caption(f"A folder under the server's data roots (CXR_DATA_ROOT), or a ZIP, with class subfolders ({class_dirs}/ at any depth). "
               f"The model scores each image once; up to {MAX_EVAL_FILES:,} images.")
    folder = st.text_input("Folder path", key="perf_folder", persist_state="session").strip()
    archive = st.file_uploader("…or a ZIP archive", key="perf_zip")
    signature = ("folder", folder) if folder else (("zip", archive.file_id) if archive else None)
    run = st.button("Score with the model", key="perf_run", disabled=signature is None,
                    icon=":material/play_arrow:")
    done = st.session_state.get(SCORED)
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
        done = st.session_state[SCORED] = {"signature": (signature, ref.key), "set": scored}
    if done and done["signature"] == (signature, ref.key):
        return done["set"]
    return None


def _labelled_set(ref, pred) -> Optional[LabelledSet]:
    source = st.radio("Labelled data", SOURCES, horizontal=True, key="perf_source", persist_state="session")
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
        with st.expander(f"{len(ls.skipped)} file(s) left out"):
            st.dataframe({"file: reason": list(ls.skipped)}, hide_index=True)
    if not ls.both_classes:
        st.error(f"{ls.name}: {ls.n} studies, {ls.n_positive} with pneumonia. The metrics need both "
                 "classes present.")
        return
    st.caption(f"{ls.name}: {ls.n:,} studies ({ls.n_positive:,} pneumonia, {ls.n - ls.n_positive:,} normal). "
               f"Threshold {thr:.3f} from the sidebar; flag rule probability ≥ threshold.")

    y, s = ls.labels, ls.scores
    conf = M.confusion_at(y, s, thr)
    table = metrics_table(ls, thr)
    cols = st.columns(len(table))
    for col, row in zip(cols, table.itertuples()):
        interval = "—" if np.isnan(row.ci_low) else f"{row.ci_low:.3f}–{row.ci_high:.3f}"
        col.metric(row.metric, "—" if np.isnan(row.value) else f"{row.value:.3f}",
                   help=f"95% bootstrap interval {interval}")
        col.caption(f"95% CI {interval}")
    k = st.columns(4)
    for col, (label, v) in zip(k, (("True positives", conf.tp), ("False positives", conf.fp),
                                   ("False negatives", conf.fn), ("True negatives", conf.tn))):
        col.metric(label, f"{v:,}")

    fpr, tpr, _ = M.roc_curve(y, s)
    auc = M.roc_auc(y, s)
    precision, recall, _ = M.precision_recall_curve(y, s)
    ap = M.average_precision(y, s)
    bins = M.calibration_bins(y, s)
    ece = M.expected_calibration_error(y, s)
    point = (1 - conf.specificity, conf.sensitivity)
    g1, g2 = st.columns(2)
    g1.plotly_chart(figures.confusion_figure(conf, card.class_names, thr), key="fig_confusion")
    g2.plotly_chart(figures.roc_figure(fpr, tpr, auc, point, thr), key="fig_roc")
    g3, g4 = st.columns(2)
    g3.plotly_chart(figures.pr_figure(precision, recall, ap, ls.n_positive / ls.n,
                                      (conf.sensitivity, conf.ppv)), key="fig_pr")
    g4.plotly_chart(figures.histogram_figure(y, s, thr, card.class_names), key="fig_hist")
    g5, g6 = st.columns(2)
    g5.plotly_chart(figures.calibration_figure(bins, ece), key="fig_calibration")
    with g6:
        st.subheader("Save this operating point")
        st.caption("Saved points appear in the sidebar's operating-point list on every page "
                   "(for this session).")
        st.text_input("Name", key="op_name", placeholder="e.g. screening clinic", max_chars=60)
        st.button("Save operating point", key="op_save", on_click=_save_point, icon=":material/bookmark_add:")
        msg = st.session_state.pop("_op_saved", None)
        if msg:
            (st.error if msg.startswith("error:") else st.success)(msg.removeprefix("error: "))
        saved = state.saved_operating_points()
        if saved:
            st.dataframe({"name": list(saved), "threshold": list(saved.values())}, hide_index=True)


if __name__ == "__main__":
    render()
