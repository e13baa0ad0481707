"""Compare models: metrics and ROC curves of several evaluation folders side by side."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from engine.evaluation import metrics as M

from dashboard import figures, resources, state
from dashboard.batch import MAX_FILES, score_items
from dashboard.evaluation import (EvaluationFolderError, LabelledDataError, compare_table, find_evaluation_folders,
                                  labelled_set_from_records)
from dashboard.model_comparison import ScoredModel, comparison_table, find_checkpoints, paired_auc_tests
from engine.model.checkpoint import DEFAULT_MODEL_DIR
from engine.inputs.paths import PathNotAllowed, allowed_roots, confine, confine_any
from engine.evaluation.paired import paired_tests
from engine.evaluation.provenance import overlap_warning
from engine.inputs.sources import iter_inputs


def _checkpoint_label(path: str) -> str:
    folder = Path(path)
    return "shipped default model" if folder == Path(DEFAULT_MODEL_DIR).resolve() else \
        f"{folder.parent.name}/{folder.name}"


def _score_checkpoints() -> None:
    """Score chosen checkpoints (an ensemble folder is one) on one labelled folder, then compare."""
    st.subheader("Score checkpoints on your labelled images")
    st.caption("Each checkpoint scores the same images (a folder with NORMAL/ and PNEUMONIA/ sub-folders, under "
               "the server's data roots); every file is scored once per model and kept in the store. Thresholds "
               "are each model's own card threshold.")
    found = [str(p) for p in find_checkpoints([Path(DEFAULT_MODEL_DIR).resolve().parent, *allowed_roots("models")])]
    default = str(Path(DEFAULT_MODEL_DIR).resolve())
    chosen = st.multiselect("Checkpoints", found, default=[default] if default in found else found[:1],
                            key="cmp_ckpts", format_func=_checkpoint_label)
    folder = st.text_input("Labelled folder", key="cmp_folder", persist_state="session").strip()
    signature = (tuple(chosen), folder)
    if st.button("Score and compare", key="cmp_score", disabled=not (chosen and folder),
                 icon=":material/play_arrow:"):
        try:
            root = confine(folder, "data")
        except PathNotAllowed as exc:
            st.error(str(exc))
            return
        scored = []
        bar = st.progress(0.0, text=f"Model 1 of {len(chosen)}: loading…")
        for i, path in enumerate(chosen):
            step = f"Model {i + 1} of {len(chosen)} ({_checkpoint_label(path)})"
            bar.progress(i / len(chosen), text=f"{step}: loading the model…")
            ref = resources.model_ref(path)
            pred = resources.predictor(ref)
            bar.progress(i / len(chosen), text=f"{step}: reading the images…")
            records = score_items(iter_inputs([root]), pred, ref.key, resources.store(), max_files=MAX_FILES,
                                  progress=lambda d, t, i=i, step=step: bar.progress(
                                      (i + d / max(t or d, 1)) / len(chosen),
                                      text=f"{step}: scored {d:,} of {t:,} images"))
            try:
                ls = labelled_set_from_records(records, folder, pred.card.class_names)
            except LabelledDataError as exc:
                bar.empty()
                st.error(str(exc))
                return
            scored.append(ScoredModel(_checkpoint_label(path), float(pred.card.threshold), ls))
        bar.empty()
        st.session_state[state.CMP_SCORED] = {"signature": signature, "models": scored}
    done = st.session_state.get(state.CMP_SCORED)
    if not done or done["signature"] != signature:
        return
    models = done["models"]
    for path, m in zip(done["signature"][0], models):
        overlap = overlap_warning(path, m.scores.sha256s)
        if overlap:
            st.warning(f"{m.name}: {overlap}.", icon=":material/warning:")
    st.dataframe(comparison_table(models), hide_index=True, key="cmp_scored_table", column_config={
        c: st.column_config.NumberColumn(format="%.3f") for c in ("auc", "threshold", "sensitivity", "specificity")})
    tests = paired_auc_tests(models)
    if not tests.empty:
        st.caption("Paired differences in AUC (DeLong), on the same files")
        st.dataframe(tests, hide_index=True, key="cmp_scored_delong", column_config={
            **{c: st.column_config.NumberColumn(format="%.4f") for c in ("AUC A", "AUC B", "A − B")},
            "p": st.column_config.NumberColumn(format="%.3g")})
    curves = {m.name: (*M.roc_curve(m.scores.labels, m.scores.scores)[:2], M.roc_auc(m.scores.labels, m.scores.scores))
              for m in models if m.scores.both_classes}
    if curves:
        st.plotly_chart(figures.compare_roc_figure(curves), key="fig_scored_roc")


def render() -> None:
    st.title("Compare models")
    _score_checkpoints()
    st.divider()
    st.subheader("Evaluation folders")
    st.caption("Each folder is an output of `python -m training.evaluate` (metrics.json, "
               "predictions.csv, optionally model_card.json). Compare models on the same test set.")
    found = [str(p) for p in find_evaluation_folders(resources.EVALUATIONS_DIR)]
    extra = st.text_area("Other evaluation folders (one path per line, under the server's model or data roots)",
                         key="cmp_extra", persist_state="session", height=80)
    typed = []
    for line in (t.strip() for t in extra.splitlines() if t.strip()):
        try:
            typed.append(str(confine_any(line)))
        except PathNotAllowed as exc:
            st.error(str(exc))
    candidates = list(dict.fromkeys(found + typed))
    if not candidates:
        st.info(f"No evaluation folders found in {resources.EVALUATIONS_DIR}; type folder paths above.")
        return
    # The key follows the candidate list, so folders typed later start selected like the others.
    chosen = st.multiselect("Evaluations", candidates, default=candidates,
                            key=f"cmp_pick_{abs(hash(tuple(candidates)))}",
                            format_func=lambda p: Path(p).name or p)
    evals = []
    for path in chosen:
        try:
            evals.append(resources.load_evaluation(path))
        except EvaluationFolderError as exc:
            st.error(str(exc))
    if not evals:
        return
    for e in evals:
        for w in e.metrics.get("warnings") or []:
            st.warning(f"{e.name}: {w}")
    if len({(x.metrics.get("data_dir"), x.metrics.get("split")) for x in evals}) > 1:
        st.info("These evaluations ran on different data: compare their numbers with care.")
    st.dataframe(compare_table(evals), hide_index=True, key="cmp_table", column_config={
        **{c: st.column_config.NumberColumn(format="%.3f") for c in
           ("auc", "average_precision", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1",
            "threshold")},
        "auc_ci_95": "AUC 95% CI", "n": st.column_config.NumberColumn("n", format="%d")})
    tests = paired_tests([e.path for e in evals])
    if tests:
        st.subheader("Paired differences in AUC (DeLong), on the same files")
        st.dataframe([{"A": t["a"], "B": t["b"], "AUC A": round(t["auc_a"], 4), "AUC B": round(t["auc_b"], 4),
                       "A − B": round(t["difference"], 4),
                       "95% CI": f"{t['ci_95'][0]:+.4f} to {t['ci_95'][1]:+.4f}", "p": f"{t['p']:.3g}"}
                      for t in tests], hide_index=True, key="cmp_delong")
    curves = {}
    for e in evals:
        fpr, tpr, _ = M.roc_curve(e.labels, e.scores)
        curves[e.name] = (fpr, tpr, M.roc_auc(e.labels, e.scores))
    st.plotly_chart(figures.compare_roc_figure(curves), key="fig_compare_roc")
    st.caption("Curves from each folder's predictions.csv; the table from its metrics.json "
               "(at that evaluation's own threshold).")


if __name__ == "__main__":
    render()
