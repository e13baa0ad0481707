"""Compare models: metrics and ROC curves of several evaluation folders side by side."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from engine import metrics as M

from dashboard import figures, resources
from dashboard.evaluation import EvaluationFolderError, compare_table, find_evaluation_folders
from engine.paths import PathNotAllowed, confine_any
from engine.paired import paired_tests


def render() -> None:
    st.title("Compare models")
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
