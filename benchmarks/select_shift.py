"""Protocol 3 (docs/MODEL_SELECTION.md): a candidate's figures on the shift it will meet.

    PYTHONPATH=. python benchmarks/select_shift.py --checkpoint DIR --name NAME [--run RUN_DIR]
        [--manifests runs/manifests] [--out assets/evaluations] [--apply]

Scores through the product's own predictor (the backend it picks, the card's temperature, the OOD
score): the dev half of the official test split, the training hospital's validation children and the NIH
adults of the run's validation split (``RUN_DIR/split.json``), the NIH held-out patients
(``nih_holdout.csv`` from ``python -m training.manifest``) and the Hannover adult probe. Prints and writes
``<out>/<NAME>/shift.json`` and ``predictions_<set>.csv`` (file, label, probability, warnings; no
identifiers). With ``--apply``: writes the card's threshold (dev half, sensitivity >= 0.97), its adult
operating point (run's NIH validation adults, sensitivity >= 0.93) and the dev-half site profile
(``assets/profiles/kermany-test-dev.json``) from those figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.evaluation import metrics as M  # noqa: E402
from engine.inputs.sources import InputItem, read_file  # noqa: E402
from training.data import patient_id_from_name  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
CARD_RULE, ADULT_RULE, PROFILE_RULE = "sensitivity>=0.97", "sensitivity>=0.93", "sensitivity>=0.97"


def labelled_folder(folder: Path) -> list[dict]:
    return [{"path": p, "label": int(cls == "PNEUMONIA"), "patient": patient_id_from_name(p.name)}
            for cls in ("NORMAL", "PNEUMONIA") for p in sorted((folder / cls).glob("*.jpeg"))]


def score(predictor, rows: list[dict]) -> list[dict]:
    items = [InputItem(f"{i:05d}-{Path(r['path']).name}", lambda p=Path(r["path"]): read_file(p, p.name))
             for i, r in enumerate(rows)]
    preds = predictor.predict_items(items, batch_size=32)
    for r, p in zip(rows, preds):
        r["probability"] = p.probability if p.ok else None
        r["warned"] = any("outside the training population" in w for w in p.warnings)
    return [r for r in rows if r["probability"] is not None]


def patient_auc_ci(y, s, patients, n=2000, seed=0) -> tuple[float, float]:
    """AUC 95% interval, patients resampled with replacement (all of a patient's images together)."""
    rng = np.random.default_rng(seed)
    ids = np.unique(patients)
    index = {p: np.flatnonzero(patients == p) for p in ids}
    values = []
    for _ in range(n):
        take = np.concatenate([index[p] for p in rng.choice(ids, len(ids))])
        if 0 < y[take].sum() < len(take):
            values.append(M.roc_auc(y[take], s[take]))
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def figures(rows: list[dict], threshold: float | None = None) -> dict:
    y = np.array([r["label"] for r in rows]); s = np.array([r["probability"] for r in rows])
    out = {"n": len(rows), "normal": int((y == 0).sum()), "pneumonia": int(y.sum()),
           "warned": float(np.mean([r["warned"] for r in rows]))}
    if 0 < y.sum() < len(y):
        out["auc"] = M.roc_auc(y, s)
        out["auc_ci95_patients"] = patient_auc_ci(y, s, np.array([r["patient"] for r in rows]))
        t95 = M.choose_threshold(y, s, "sensitivity>=0.95").threshold
        out["specificity_at_sensitivity_0.95"] = M.confusion_at(y, s, t95).specificity
        out["ece"] = M.expected_calibration_error(y, s)
    if threshold is not None:
        c = M.confusion_at(y, s, threshold)
        out["at_threshold"] = {"threshold": threshold, "flagged": float(np.mean(s >= threshold))}
        if y.sum():
            out["at_threshold"]["sensitivity"] = (c.sensitivity, *M.clopper_pearson(c.tp, c.tp + c.fn))
        if (y == 0).sum():
            out["at_threshold"]["specificity"] = (c.specificity, *M.clopper_pearson(c.tn, c.tn + c.fp))
    return out


def write_predictions(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "probability", "warned", "view", "label_origin"])
        for r in rows:
            w.writerow([Path(r["path"]).name, r["label"], f"{r['probability']:.6f}", int(r["warned"]),
                        r.get("view", ""), r.get("label_origin", "")])


def load_sets(args) -> dict[str, list[dict]]:
    sets = {"dev": labelled_folder(SHARED / "kermany-test-dev")}
    if args.run:
        val = json.loads((Path(args.run) / "split.json").read_text())["val"]
        sets["val_children"] = [r for r in val if "nih-cxr" not in r["path"]]
        sets["val_adults"] = [r for r in val if "nih-cxr" in r["path"]]
    with open(Path(args.manifests) / "nih_holdout.csv", newline="") as f:
        sets["nih_holdout"] = [{"path": r["path"], "label": int(r["label"] == "pneumonia"), "patient": r["patient_id"],
                                "view": r["view"], "label_origin": r["label_origin"]} for r in csv.DictReader(f)]
    with open(SHARED / "adult-probe" / "hannover" / "images.csv", newline="") as f:
        sets["hannover"] = [{"path": str(SHARED / "adult-probe" / "hannover" / r["file"]), "label": 1,
                             "patient": r["patient_id"], "view": r["projection"].upper()} for r in csv.DictReader(f)]
    return sets


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--run", help="the training run folder (its split.json) for the validation sets")
    ap.add_argument("--manifests", default=str(ROOT / "runs" / "manifests"))
    ap.add_argument("--out", default=str(ROOT / "assets" / "evaluations"))
    ap.add_argument("--apply", action="store_true", help="write the operating points into the card and the profile")
    args = ap.parse_args(argv)
    from engine.inference.backends import cpu_info
    from engine.inference.predictor import Predictor
    predictor = Predictor.from_checkpoint(args.checkpoint)
    print(f"CPU: {cpu_info().model}; backend {predictor.backend_label}")
    scored = {k: score(predictor, v) for k, v in load_sets(args).items()}
    dev = scored["dev"]
    y, s = np.array([r["label"] for r in dev]), np.array([r["probability"] for r in dev])
    card_thr = float(M.choose_threshold(y, s, CARD_RULE).threshold)
    adult_thr = None
    if scored.get("val_adults"):
        va = scored["val_adults"]
        adult_thr = float(M.choose_threshold(np.array([r["label"] for r in va]),
                                             np.array([r["probability"] for r in va]), ADULT_RULE).threshold)
    report = {"checkpoint": args.checkpoint, "backend": predictor.backend_label, "cpu": cpu_info().model,
              "card_threshold_candidate": {"value": card_thr, "rule": f"{CARD_RULE} on kermany-test-dev"},
              "adult_threshold_candidate": {"value": adult_thr, "rule": f"{ADULT_RULE} on the run's NIH validation adults"},
              "shipped_card_threshold": predictor.threshold}
    for name, rows in scored.items():
        adult = name in ("nih_holdout", "hannover", "val_adults")
        thr = adult_thr if adult and adult_thr is not None else card_thr
        report[name] = figures(rows, thr) | {"shipped_threshold": figures(rows, predictor.threshold).get("at_threshold")}
        if name in ("nih_holdout", "hannover"):
            for view in sorted({r.get("view", "") for r in rows}):
                sub = [r for r in rows if r.get("view") == view]
                report[name][f"view {view}"] = figures(sub, thr)
        if name == "nih_holdout":
            for origin in ("rsna", "nih"):
                sub = [r for r in rows if r.get("label_origin") == origin]
                report[name][f"labels {origin}"] = figures(sub, thr)
    out = Path(args.out) / args.name
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in scored.items():
        write_predictions(out / f"predictions_{name}.csv", rows)
    (out / "shift.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk in ("n", "auc", "auc_ci95_patients",
                                                                     "specificity_at_sensitivity_0.95", "at_threshold", "warned")}
                      if isinstance(v, dict) and "n" in v else v for k, v in report.items()}, indent=1, default=float))
    if args.apply:
        apply(args.checkpoint, card_thr, adult_thr, dev)
    return 0


def apply(ckpt: str, card_thr: float, adult_thr: float | None, dev: list[dict]) -> None:
    """The chosen operating points into the card, and the dev-half profile into assets/profiles."""
    from engine.evaluation.site import SHIPPED_PROFILES_DIR, fit_profile, save_profile
    from engine.model.checkpoint import CARD_FILE, read_card
    path = Path(ckpt) / CARD_FILE
    card = json.loads(path.read_text())
    card["decision_threshold"] = {"value": card_thr, "rule": f"{CARD_RULE} on kermany-test-dev (the dev half of the "
                                                             "official test split), scored by the engine's predictor"}
    if adult_thr is not None:
        card["operating_points"] = {"adult": {"value": adult_thr, "rule": f"{ADULT_RULE} on the NIH adults of the "
                                              "training run's patient-wise validation split; used when the DICOM "
                                              "header says 18 or older"}}
    path.write_text(json.dumps(card, indent=2) + "\n")
    read_card(ckpt)                                   # still a valid card
    c = read_card(ckpt)
    profile = fit_profile("kermany-test-dev", [r["label"] for r in dev], [r["probability"] for r in dev], PROFILE_RULE,
                          model=c.label, source="kermany-test-dev (dev half of the official test split)")
    print("profile:", save_profile(profile, SHIPPED_PROFILES_DIR), profile.summary())


if __name__ == "__main__":
    sys.exit(main())
