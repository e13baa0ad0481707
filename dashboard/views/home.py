"""Home: what the tool is and is not, the model card, how to begin."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.model.checkpoint import INTENDED_USE

from dashboard import resources, state
from dashboard.evaluation import metrics_table


def _fmt(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "—"


def _training_table(training: dict) -> pd.DataFrame:
    rows = []
    for split in ("train", "val", "test"):
        d = training.get(split)
        if isinstance(d, dict):
            rows.append({"split": split, "images": d.get("n"), "normal": d.get("normal"),
                         "pneumonia": d.get("pneumonia"), "patients": d.get("patients")})
    return pd.DataFrame(rows)


def _validation_section(ref, card) -> None:
    """The card's validation figures, recomputed from its validation predictions at its threshold."""
    st.subheader("Validation metrics")
    val = card.extra.get("validation", {}) or {}
    try:
        vset = resources.validation_set(ref, card.class_names)
    except ValueError as exc:
        vset = None
        st.error(f"The model's val_predictions.csv cannot be read: {exc}")
    if vset is not None and vset.both_classes:
        table = metrics_table(vset, card.threshold)
        auc_ci = val.get("auc_ci_95") or [None, None]
        table = pd.concat([pd.DataFrame([{"metric": "AUC", "value": val.get("auc"),
                                          "ci_low": auc_ci[0], "ci_high": auc_ci[1]}]), table])
        st.dataframe(table, hide_index=True, column_config={
            "value": st.column_config.NumberColumn(format="%.3f"),
            "ci_low": st.column_config.NumberColumn("95% CI low", format="%.3f"),
            "ci_high": st.column_config.NumberColumn("95% CI high", format="%.3f")})
        st.caption(f"On the model's validation split: {vset.n} images ({vset.n_positive} pneumonia), "
                   f"at the card threshold {card.threshold:.3f}. Intervals: stratified bootstrap, "
                   "1,000 resamples. A small validation set gives wide intervals.")
    elif val:
        st.json({k: v for k, v in val.items() if not isinstance(v, list) or k == "auc_ci_95"})
    else:
        st.info("The model card records no validation metrics.")


def _inference_section(predictor) -> None:
    """Which backend runs the network on this machine and why, and the checkpoint's INT8 graph's gate."""
    st.subheader("Running here")
    st.markdown(f"- Network: **{predictor.backend_label}** ({predictor.backend.reason})")
    int8 = predictor.card.extra.get("int8") or {}
    if int8:
        diffs = " / ".join(f"{v:.4f} on {k}" for k, v in (int8.get("max_probability_difference") or {}).items())
        verdict = "passed" if int8.get("passed") else "failed (never used)"
        st.markdown(f"- INT8 graph: {verdict} its gate against float32 (largest probability difference {diffs}; "
                    "gate 0.02). Used automatically only where it is the faster path: a CPU with 8-bit dot "
                    "products where bfloat16 is not faster, or one where it timed faster than float32.")
        st.caption(int8.get("recipe", ""))


def render() -> None:
    ref = state.model_ref()
    card = resources.predictor(ref).card
    extra = card.extra
    st.title("Chest X-ray pneumonia triage")
    st.markdown(
        "This tool reads a batch of chest radiographs (DICOM, JPEG, PNG or ZIP archives of them), "
        "estimates for each the probability of **pneumonia** with a convolutional network, sorts "
        "them into a worklist so the likeliest cases are read first, and shows where the network "
        "looked (Grad-CAM).")
    st.warning(f"**What it is not.** {INTENDED_USE} It was trained on a public pediatric data set "
               "(Kermany et al.); its performance on other populations, scanners and views is "
               "unknown until measured on them (see *Performance & thresholds*).",
               icon=":material/warning:")

    st.header(f"Model card: {card.name or card.architecture} v{card.version}")
    c2, c3, c4 = st.columns(3)
    c2.metric("Architecture", card.architecture)
    c3.metric("Input", f"{card.preprocessing.image_size} px · {card.preprocessing.intensity}")
    c4.metric("Decision threshold", f"{card.threshold:.3f}")
    st.caption(f"Version {card.version} · classes: {', '.join(card.class_names)} · threshold rule: "
               f"{card.threshold_rule or 'not stated'} · flag rule: probability ≥ threshold · "
               f"temperature {card.temperature:.3f}")

    training = extra.get("training", {}) or {}
    left, right = st.columns(2)
    with left:
        st.subheader("Training data")
        table = _training_table(training)
        if table.empty:
            st.info("The model card records no training data counts.")
        else:
            st.dataframe(table, hide_index=True)
        details = {k: training.get(k) for k in ("data_dir", "split_rule", "epochs_run", "batch_size",
                                                 "loss", "pretrained") if training.get(k) is not None}
        if details:
            st.caption(" · ".join(f"{k.replace('_', ' ')}: {v}" for k, v in details.items()))
    with right:
        st.subheader("Training time and hardware")
        hw = extra.get("hardware", {}) or {}
        secs = training.get("train_seconds")
        st.markdown(
            f"- Training time: **{_fmt(secs / 60, 1) + ' min' if isinstance(secs, (int, float)) else 'not recorded'}**"
            f" ({training.get('epochs_run', '?')} epochs)\n"
            f"- CPU: {hw.get('cpu', '—')} ({hw.get('cores', '?')} cores) · GPU: {hw.get('gpu') or 'none'}\n"
            f"- Precision: {hw.get('policy', '—')} · torch {hw.get('torch', '—')}")

    _validation_section(ref, card)
    _inference_section(resources.predictor(ref))

    st.header("How to begin")
    st.markdown(
        "1. **Triage**: upload DICOM, JPEG or PNG files, or ZIP archives of them. The worklist "
        "lists every file by probability of pneumonia, flagged at the threshold in the sidebar.\n"
        "2. **Review**: open a study (or step through the flagged ones) to see the radiograph next "
        "to its Grad-CAM heatmap, and record whether you agree.\n"
        "3. **Performance & thresholds**: see how the model does on labelled data at the current "
        "threshold, and save an operating point for every page.\n"
        "4. **Compare models**: put evaluation folders side by side.")


if __name__ == "__main__":
    render()
