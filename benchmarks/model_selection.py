"""Score candidates on docs/MODEL_SELECTION.md's protocol, on the shared split-0 validation images.

    PYTHONPATH=. python benchmarks/model_selection.py --member .gpu/members_split0/seed1 ... \
        [--stress-per-class 100] [--ood-train 600] [--out assets/evaluations]

Candidates: the shipped model (assets/models/default), each --member, and their ensemble (the mean of
the members' probabilities, each after its own temperature; threshold chosen on the averaged
validation probabilities by the members' card rule, with the calibration margin). One pass per model
and image set gives logits and penultimate features (torch, float32, CPU). Writes per candidate
``<out>/<name>/selection.json`` and ``stress.csv``, and ``<out>/model_selection.csv`` (the table).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.evaluation import metrics as M  # noqa: E402
from engine.model.checkpoint import load_checkpoint  # noqa: E402
from engine.decode import read_image  # noqa: E402
from engine.model.ood import FeatureOOD, fit  # noqa: E402
from training.calibrate import with_margin  # noqa: E402
from training.ood import split_from_card  # noqa: E402
from training.stress import CONDITIONS  # noqa: E402

ACQUISITION = ["gamma 0.6", "gamma 1.6", "contrast x0.6", "CLAHE", "blur 5 px", "blur 9 px",
               "JPEG quality 30", "half resolution", "black border 10%", "crop 8%"]
FAULTS = ["rotated 90 degrees", "inverted polarity"]


def rel(p) -> str:
    s = str(p)
    return s.split("kermany224/", 1)[1] if "kermany224/" in s else s


@torch.inference_mode()
def run(model, prep, images, batch=32):
    """(logits (N, 2), penultimate features (N, 512)) of decoded (H, W) images in [0, 1]."""
    logits, feats = [], []
    for i in range(0, len(images), batch):
        x = prep.normalize(torch.from_numpy(np.stack([prep.resize(np.ascontiguousarray(
            np.clip(im, 0, 1), dtype=np.float32)) for im in images[i:i + batch]])))
        f = torch.flatten(model.avgpool(model.forward_features(x)), 1)
        logits.append(model.fc(f).numpy())
        feats.append(f.numpy())
    return np.concatenate(logits), np.concatenate(feats)


def prob(logits, card):
    z = logits.astype(np.float64) / card.temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e[:, card.positive_index] / e.sum(1)


def patient_bootstrap(y, patients, scores: dict, ref: str, n=2000, seed=0):
    """AUC per candidate and its difference to ``ref`` over the same patient resamples."""
    uniq, inv = np.unique(patients, return_inverse=True)
    rows = [np.flatnonzero(inv == k) for k in range(len(uniq))]
    rng = np.random.default_rng(seed)
    aucs = {k: [] for k in scores}
    diffs = {k: [] for k in scores}
    for _ in range(n):
        idx = np.concatenate([rows[k] for k in rng.integers(0, len(uniq), len(uniq))])
        if len(np.unique(y[idx])) < 2:
            continue
        a = {k: M.roc_auc(y[idx], s[idx]) for k, s in scores.items()}
        for k in scores:
            aucs[k].append(a[k])
            diffs[k].append(a[k] - a[ref])
    q = lambda v: [float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))]
    return {k: {"auc_ci95": q(aucs[k]), "diff_to_" + ref: float(np.mean(diffs[k])),
                "diff_ci95": q(diffs[k])} for k in scores}


def agreement(flags: dict, logits_pos: dict) -> dict:
    names = list(flags)
    out = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = names[i], names[j]
            out.append({"pair": f"{a} vs {b}", "flag_agreement": float(np.mean(flags[a] == flags[b])),
                        "logit_pearson": float(np.corrcoef(logits_pos[a], logits_pos[b])[0, 1])})
    return {"pairs": out, "mean_flag_agreement": float(np.mean([r["flag_agreement"] for r in out])),
            "mean_logit_pearson": float(np.mean([r["logit_pearson"] for r in out]))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shipped", default=str(ROOT / "assets" / "models" / "default"))
    ap.add_argument("--member", action="append", default=[])
    ap.add_argument("--candidate", action="append", default=[], metavar="NAME=DIR",
                    help="a further candidate scored on the protocol but not averaged into the ensemble "
                         "(for example a network distilled from it)")
    ap.add_argument("--member-prefix", default="gpu_split0_seed")
    ap.add_argument("--ensemble-name", default="gpu_split0_ensemble3")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "kermany224"))
    ap.add_argument("--probe", default=str(ROOT.parent / "shared" / "data" / "adult-probe" / "hannover"))
    ap.add_argument("--stress-per-class", type=int, default=100, help="validation images per class for stress (0: all)")
    ap.add_argument("--ood-train", type=int, default=600, help="training images (class-stratified) to fit members' OOD")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "assets" / "evaluations"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    log = lambda msg: print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)

    shipped_model, shipped_card = load_checkpoint(args.shipped)
    train, val = split_from_card(shipped_card.extra["training"], args.data_dir)
    val_rel = sorted(rel(s.path) for s in val)
    extra = dict(c.split("=", 1) for c in args.candidate)
    for m in [*args.member, *extra.values()]:
        sp = json.loads((Path(m) / "split.json").read_text())
        same = sorted(rel(r["path"]) for r in sp["val"]) == val_rel
        leak = len({rel(r["path"]) for r in sp["train"]} & set(val_rel))
        log(f"{m}: validation split identical to the shipped model's: {same}; its training images in that validation: {leak}")
        if not same or leak:
            raise SystemExit("member not on the shared split")
    y = np.array([s.label for s in val])
    patients = np.array([s.patient_id for s in val])
    val_images = [read_image(s.path).pixels for s in val]
    rng = np.random.default_rng(0)
    if args.stress_per_class:
        sub = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), args.stress_per_class, replace=False)
                                      for c in (0, 1)]))
    else:
        sub = np.arange(len(y))
    probe_files = sorted((Path(args.probe) / "images").glob("*.png"))
    probe_images = [read_image(p).pixels for p in probe_files]
    ytr = np.array([s.label for s in train])
    ood_idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(ytr == c), args.ood_train // 2, replace=False)
                                      for c in (0, 1)]))
    ood_images = [read_image(train[i].path).pixels for i in ood_idx]
    log(f"decoded {len(val_images)} val, {len(probe_images)} probe, {len(ood_images)} train (OOD fit); stress on {len(sub)} val images")

    cands = {"resnet18_cbam (shipped)": (shipped_model.eval().float(), shipped_card, args.shipped)}
    for m in args.member:
        model, card = load_checkpoint(m)
        cands[args.member_prefix + str(card.extra["training"]["seed"])] = (model.eval().float(), card, m)
    for name, m in extra.items():
        model, card = load_checkpoint(m)
        cands[name] = (model.eval().float(), card, m)

    res = {}
    for name, (model, card, path) in cands.items():
        r = {"path": str(path), "threshold": card.threshold, "temperature": card.temperature}
        lv, fv = run(model, card.preprocessing, val_images)
        lp, fp = run(model, card.preprocessing, probe_images)
        r["val_logits"], r["val_feats"], r["probe_logits"], r["probe_feats"] = lv, fv, lp, fp
        ood = FeatureOOD.load(path)
        r["ood_fit"] = "shipped ood.safetensors (4,424 training images)"
        if ood is None:
            _, ft = run(model, card.preprocessing, ood_images)
            ood = fit(ft, fv, 0.05)
            r["ood_fit"] = f"fitted here on {len(ood_images)} class-stratified training images"
        r["ood"] = ood
        r["stress"] = {}
        for cond in ["as is"] + ACQUISITION + FAULTS:
            imgs = [CONDITIONS[cond](val_images[i]) for i in sub]
            r["stress"][cond] = run(model, card.preprocessing, imgs)[0]
        res[name] = r
        log(f"{name}: done")

    members = [n for n in res if n.startswith(args.member_prefix)]
    names = list(res)
    probs = {n: {"val": prob(res[n]["val_logits"], cands[n][1]), "probe": prob(res[n]["probe_logits"], cands[n][1]),
                 "stress": {c: prob(l, cands[n][1]) for c, l in res[n]["stress"].items()}} for n in names}
    thr = {n: cands[n][1].threshold for n in names}
    dist = {n: {"val": res[n]["ood"].distances(res[n]["val_feats"]), "probe": res[n]["ood"].distances(res[n]["probe_feats"])}
            for n in names}
    cut = {n: res[n]["ood"].cutoff for n in names}
    if len(members) >= 2:
        E = args.ensemble_name
        names.append(E)
        probs[E] = {"val": np.mean([probs[m]["val"] for m in members], 0),
                    "probe": np.mean([probs[m]["probe"] for m in members], 0),
                    "stress": {c: np.mean([probs[m]["stress"][c] for m in members], 0) for c in probs[members[0]]["stress"]}}
        rule = "sensitivity>=0.97"
        thr[E] = with_margin(probs[E]["val"], M.choose_threshold(y, probs[E]["val"], rule).threshold)
        dist[E] = {k: np.mean([dist[m][k] / cut[m] for m in members], 0) for k in ("val", "probe")}
        cut[E] = float(np.quantile(dist[E]["val"], 0.95))

    boot = patient_bootstrap(y, patients, {n: probs[n]["val"] for n in names}, names[0])
    ys = y[sub]
    table = []
    for n in names:
        p, t = probs[n], thr[n]
        cv = M.confusion_at(y, p["val"], t)
        st = {}
        for c, ps in p["stress"].items():
            cf = M.confusion_at(ys, ps, t)
            st[c] = {"auc": M.roc_auc(ys, ps), "sensitivity": cf.sensitivity, "specificity": cf.specificity}
        base = st["as is"]
        worst = min(ACQUISITION, key=lambda c: st[c]["auc"])
        sens_drop = max(ACQUISITION, key=lambda c: base["sensitivity"] - st[c]["sensitivity"])
        spec_drop = max(ACQUISITION, key=lambda c: base["specificity"] - st[c]["specificity"])
        row = {"candidate": n, "threshold": t,
               "val_auc": M.roc_auc(y, p["val"]), "val_auc_ci95": boot[n]["auc_ci95"],
               "val_auc_diff_to_shipped": boot[n]["diff_to_" + names[0]], "val_auc_diff_ci95": boot[n]["diff_ci95"],
               "val_sensitivity": cv.sensitivity, "val_specificity": cv.specificity,
               "stress_n": int(len(sub)), "stress_auc_as_is": base["auc"],
               "stress_worst_auc": st[worst]["auc"], "stress_worst_condition": worst,
               "stress_max_sens_drop": base["sensitivity"] - st[sens_drop]["sensitivity"], "stress_max_sens_drop_condition": sens_drop,
               "stress_max_spec_drop": base["specificity"] - st[spec_drop]["specificity"], "stress_max_spec_drop_condition": spec_drop,
               "hannover_n": len(probe_files), "hannover_flag_rate": float(np.mean(p["probe"] >= t)),
               "hannover_median_p": float(np.median(p["probe"])),
               "ood_val_warn_rate": float(np.mean(dist[n]["val"] > cut[n])),
               "hannover_ood_warn_rate": float(np.mean(dist[n]["probe"] > cut[n])),
               "ood_fit": res[n]["ood_fit"] if n in res else "mean over members of distance / member cut-off; cut-off at 95% of validation"}
        table.append(row)
        folder = Path(args.out) / n.split(" ")[0]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "selection.json").write_text(json.dumps({**row, "stress": st, "protocol": "docs/MODEL_SELECTION.md",
                                                           "not_held_out": "threshold chosen on the same validation split"}, indent=1) + "\n")
        with open(folder / "stress.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["condition", "n", "auc", f"sensitivity@{t:.4f}", f"specificity@{t:.4f}"])
            for c, v in st.items():
                w.writerow([c, len(sub), f"{v['auc']:.4f}", f"{v['sensitivity']:.4f}", f"{v['specificity']:.4f}"])
        log(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "ood_fit"}))

    if len(members) >= 2:
        agree = {}
        lp = lambda m, l: l[:, 1] - l[:, 0]
        agree["validation"] = agreement({m: probs[m]["val"] >= thr[m] for m in members},
                                        {m: lp(m, res[m]["val_logits"]) for m in members})
        for c in ("CLAHE", "black border 10%"):
            agree[f"validation subsample, {c}"] = agreement({m: probs[m]["stress"][c] >= thr[m] for m in members},
                                                            {m: lp(m, res[m]["stress"][c]) for m in members})
        agree["hannover"] = agreement({m: probs[m]["probe"] >= thr[m] for m in members},
                                      {m: lp(m, res[m]["probe_logits"]) for m in members})
        spread = {k: [min(r[k] for r in table if r["candidate"] in members), max(r[k] for r in table if r["candidate"] in members)]
                  for k in ("val_auc", "stress_worst_auc", "stress_max_sens_drop", "stress_max_spec_drop",
                            "hannover_flag_rate", "hannover_ood_warn_rate")}
        (Path(args.out) / args.ensemble_name / "members.json").write_text(json.dumps(
            {"members": {m: str(cands[m][2]) for m in members}, "combination": "mean of temperature-scaled probabilities",
             "agreement": agree, "member_spread_min_max": spread}, indent=1) + "\n")
        log("agreement " + json.dumps({k: [round(v["mean_flag_agreement"], 3), round(v["mean_logit_pearson"], 3)] for k, v in agree.items()}))
        log("spread " + json.dumps(spread))
    with open(Path(args.out) / "model_selection.csv", "w", newline="") as f:
        keys = [k for k in table[0] if k != "ood_fit"]
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(table)
    log("written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
