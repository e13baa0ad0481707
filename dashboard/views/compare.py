"""Compare models: metrics and ROC curves of several evaluation folders side by side."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from engine.evaluation import metrics as M

from dashboard import figures, labels, resources, state
from dashboard.batch import MAX_FILES, score_items
from dashboard.evaluation import (EvaluationFolderError, LabelledDataError, compare_table, find_evaluation_folders,
                                  labelled_set_from_records, same_data)
from dashboard.model_comparison import ScoredModel, comparison_table, find_checkpoints, paired_auc_tests
from engine.errors import CheckpointError
from engine.model.checkpoint import DEFAULT_MODEL_DIR, read_card
from engine.inputs.paths import PathNotAllowed, allowed_roots, confine, confine_any
from engine.evaluation.paired import paired_tests
from engine.evaluation.provenance import overlap_warning
from engine.inputs.sources import iter_inputs


def _checkpoint_labels(paths: list[str]) -> dict[str, str]:
    """Each checkpoint by its model's name, as every page names it ("ResNet18+CBAM 0.2.1"); the folder is
    added where two checkpoints share a name, and "(in use)" marks the shipped default."""
    names = {}
    for path in paths:
        try:
            names[path] = labels.display_label(read_card(path))
        except (CheckpointError, OSError, ValueError):
            names[path] = Path(path).name
    out = {}
    for path, name in names.items():
        folder = Path(path)
        twin = sum(n == name for n in names.values()) > 1
        out[path] = name + (f" ({folder.parent.name}/{folder.name})" if twin else "") + \
            (" · shipped" if folder == Path(DEFAULT_MODEL_DIR).resolve() else "")
    return out


def _score_checkpoints() -> None:
    """Score chosen checkpoints (an ensemble folder is one) on one labelled folder, then compare."""
    st.subheader("Score checkpoints on your labelled images")
    st.caption("Each checkpoint scores the same images (a folder with NORMAL/ and PNEUMONIA/ sub-folders, under "
               "the server's data roots); every file is scored once per model and kept in the store. Thresholds "
               "are each model's own card threshold.")
    found = [str(p) for p in find_checkpoints([Path(DEFAULT_MODEL_DIR).resolve().parent, *allowed_roots("models")])]
    names = _checkpoint_labels(found)
    default = str(Path(DEFAULT_MODEL_DIR).resolve())
    chosen = st.multiselect("Checkpoints", found, default=[default] if default in found else found[:1],
                            key="cmp_ckpts", format_func=lambda p: names.get(p, p))
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
            step = f"Model {i + 1} of {len(chosen)} ({names.get(path, path)})"
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
            scored.append(ScoredModel(names.get(path, path), float(pred.card.threshold), ls))
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
        "model": st.column_config.TextColumn("Model", width=190), "n": st.column_config.NumberColumn("n", width=60),
        **{c: st.column_config.NumberColumn(c.upper() if c == "auc" else c.capitalize(), format="%.3f", width=80)
           for c in ("auc", "threshold", "sensitivity", "specificity")},
        **{c: st.column_config.TextColumn("95% CI", width=110)
           for c in ("auc 95% CI", "sensitivity 95% CI", "specificity 95% CI")},
        "flagged": st.column_config.NumberColumn("Flagged", width=70)})
    tests = paired_auc_tests(models)
    if not tests.empty:
        st.caption("Paired differences in AUC (DeLong), on the same files")
        st.dataframe(tests, hide_index=True, key="cmp_scored_delong", column_config={
            **{c: st.column_config.NumberColumn(format="%.4f") for c in ("AUC A", "AUC B", "A − B")},
            "p": st.column_config.NumberColumn(format="%.3g")})
    curves = {m.name: (*M.roc_curve(m.scores.labels, m.scores.scores)[:2], M.roc_auc(m.scores.labels, m.scores.scores))
              for m in models if m.scores.both_classes}
    if curves:
        st.plotly_chart(figures.compare_roc_figure(curves), key="fig_scored_roc", config=figures.CHART_CONFIG)


def _compare_columns(table, same: bool) -> list[str]:
    """The evaluation table's columns that fit at 1440 px: the data only when it differs (the caption names
    it otherwise), accuracy and the folder left to the CSV-like caption below."""
    return [c for c in ("evaluation", "model", "data", "auc", "auc_ci_95", "average_precision", "threshold",
                        "sensitivity", "specificity", "ppv", "npv", "f1", "n") if c != "data" or not same]


def _compare_config() -> dict:
    num = lambda label, w=64, help=None: st.column_config.NumberColumn(label, format="%.3f", width=w,  # noqa: E731
                                                                       help=help)
    return {"evaluation": st.column_config.TextColumn("Evaluation", width=130),
            "model": st.column_config.TextColumn("Model", width=150),
            "data": st.column_config.TextColumn("Data", width=130),
            "auc": num("AUC"), "auc_ci_95": st.column_config.TextColumn("AUC 95% CI", width=100),
            "average_precision": num("AP", 60, "Average precision"), "threshold": num("Threshold", 76), "sensitivity": num("Sens.", help="Sensitivity"),
            "specificity": num("Spec.", help="Specificity"), "ppv": num("PPV", 60), "npv": num("NPV", 60), "f1": num("F1", 56),
            "n": st.column_config.NumberColumn("n", format="%d", width=60)}


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
    same = same_data(evals)
    if not same:
        st.info("These evaluations scored different cases (their predictions.csv files or labels differ): "
                "compare their numbers with care.")
    table = compare_table(evals)
    st.dataframe(table, hide_index=True, key="cmp_table", column_order=_compare_columns(table, same),
                 column_config=_compare_config())
    st.caption(("All on the same cases" + (f" ({table['data'].iloc[0]})" if table["data"].iloc[0] else "") + ". "
                if same else "") + "Folders: " + "; ".join(table["folder"]))
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
    st.plotly_chart(figures.compare_roc_figure(curves), key="fig_compare_roc", config=figures.CHART_CONFIG)
    st.caption("Curves from each folder's predictions.csv; the table from its metrics.json "
               "(at that evaluation's own threshold).")


if __name__ == "__main__":
    render()
