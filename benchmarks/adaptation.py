"""Test-time adaptation on docs/MODEL_SELECTION.md's protocol: does AdaBN or test-time augmentation
keep the shipped model's ranking and operating point under acquisition changes? (prints figures)

    PYTHONPATH=. python benchmarks/adaptation.py [--stress-per-class 60] [--out assets/evaluations/adaptation]

On the protocol's stress subsample (the same class-stratified validation images as
benchmarks/model_selection.py with the same ``--stress-per-class``), for "as is" and each
acquisition change, the shipped model (torch float32) is scored four ways:

* **plain**: as shipped;
* **AdaBN** (Li et al., 2016): every BatchNorm's statistics recomputed on the changed images
  themselves (unlabelled, the whole subsample as one "site"), then scored;
* **AdaBN, normals only**: the same, adapted on the changed *normal* images only, then scoring all:
  a site's statistics depend on its case mix, and this shows how far;
* **TTA**: the mean probability over the image and three small changes the training augmentation
  covers (a 92% centre crop, rotations of +5 and -5 degrees).

Summaries as the protocol's: worst-case AUC over the acquisition changes, and the largest drops of
sensitivity and specificity at the card's threshold from "as is" (plain). Then the 84 Hannover adult
films (measured only): the share flagged, plain and after AdaBN on those films, and the share the
out-of-population score warns when the features come from the adapted network (adaptation must not
hide that a site is outside the training population). Writes ``<out>/adaptation.json`` and
``<out>/stress.csv``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.model_selection import ACQUISITION, prob, run  # noqa: E402
from engine.evaluation import metrics as M  # noqa: E402
from engine.inference.backends import cpu_info  # noqa: E402
from engine.model.checkpoint import load_checkpoint  # noqa: E402
from engine.decode import read_image  # noqa: E402
from engine.model.ood import FeatureOOD  # noqa: E402
from training.ood import split_from_card  # noqa: E402
from training.stress import CONDITIONS  # noqa: E402


@torch.inference_mode(False)
def adabn(model, prep, images, batch: int = 32):
    """A copy of ``model`` whose BatchNorm statistics are the cumulative mean and variance over
    ``images`` (affine weights untouched)."""
    adapted = copy.deepcopy(model)
    norms = [m for m in adapted.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None               # cumulative average over every batch
    adapted.eval()
    for m in norms:
        m.train()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = prep.normalize(torch.from_numpy(np.stack([prep.resize(np.ascontiguousarray(
                np.clip(im, 0, 1), dtype=np.float32)) for im in images[i:i + batch]])))
            adapted(x)
    return adapted.eval()


def _rotate(deg: float):
    def apply(im):
        h, w = im.shape
        m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
        return cv2.warpAffine(im, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return apply


def _centre_crop(fraction: float):
    def apply(im):
        h, w = im.shape
        dh, dw = int(h * (1 - fraction) / 2), int(w * (1 - fraction) / 2)
        return im[dh:h - dh, dw:w - dw]
    return apply


TTA_VIEWS = {"as is": lambda im: im, "centre crop 92%": _centre_crop(0.92), "rotate +5": _rotate(5),
             "rotate -5": _rotate(-5)}


def summary(rows: dict, base: dict) -> dict:
    worst = min(ACQUISITION, key=lambda c: rows[c]["auc"])
    sens = max(ACQUISITION, key=lambda c: base["sensitivity"] - rows[c]["sensitivity"])
    spec = max(ACQUISITION, key=lambda c: base["specificity"] - rows[c]["specificity"])
    return {"as_is_auc": rows["as is"]["auc"], "worst_auc": rows[worst]["auc"], "worst_condition": worst,
            "largest_sensitivity_drop": base["sensitivity"] - rows[sens]["sensitivity"], "sensitivity_condition": sens,
            "largest_specificity_drop": base["specificity"] - rows[spec]["specificity"], "specificity_condition": spec}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shipped", default=str(ROOT / "assets" / "models" / "default"))
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "kermany224"))
    ap.add_argument("--probe", default=str(ROOT.parent / "shared" / "data" / "adult-probe" / "hannover"))
    ap.add_argument("--stress-per-class", type=int, default=60)
    ap.add_argument("--out", default=str(ROOT / "assets" / "evaluations" / "adaptation"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    log = lambda msg: print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)
    print(f"CPU: {cpu_info().summary()}; torch {torch.__version__} float32")

    model, card = load_checkpoint(args.shipped)
    model = model.eval().float()
    prep, thr = card.preprocessing, float(card.threshold)
    _, val = split_from_card(card.extra["training"], args.data_dir)
    y = np.array([s.label for s in val])
    rng = np.random.default_rng(0)          # the same draw as benchmarks/model_selection.py
    sub = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), args.stress_per_class, replace=False)
                                  for c in (0, 1)]))
    images = [read_image(val[i].path).pixels for i in sub]
    ys = y[sub]
    log(f"{len(images)} validation images ({args.stress_per_class} per class), threshold {thr:.3f}")

    def metrics(p):
        cf = M.confusion_at(ys, p, thr)
        return {"auc": M.roc_auc(ys, p), "sensitivity": cf.sensitivity, "specificity": cf.specificity}

    ways = {"plain": {}, "AdaBN": {}, "AdaBN, normals only": {}, "TTA": {}}
    for cond in ["as is"] + ACQUISITION:
        changed = [np.clip(CONDITIONS[cond](im), 0, 1).astype(np.float32) for im in images]
        ways["plain"][cond] = metrics(prob(run(model, prep, changed)[0], card))
        ways["AdaBN"][cond] = metrics(prob(run(adabn(model, prep, changed), prep, changed)[0], card))
        normals = [im for im, label in zip(changed, ys) if label == 0]
        ways["AdaBN, normals only"][cond] = metrics(prob(run(adabn(model, prep, normals), prep, changed)[0], card))
        views = [prob(run(model, prep, [np.clip(v(im), 0, 1).astype(np.float32) for im in changed])[0], card)
                 for v in TTA_VIEWS.values()]
        ways["TTA"][cond] = metrics(np.mean(views, 0))
        log(f"{cond}: " + "; ".join(f"{w} AUC {r[cond]['auc']:.4f} sens {r[cond]['sensitivity']:.3f} "
                                    f"spec {r[cond]['specificity']:.3f}" for w, r in ways.items()))
    base = ways["plain"]["as is"]
    summaries = {w: summary(r, base) for w, r in ways.items()}

    probe = [read_image(p).pixels for p in sorted((Path(args.probe) / "images").glob("*.png"))]
    ood = FeatureOOD.load(args.shipped)
    lp, fp = run(model, prep, probe)
    adapted = adabn(model, prep, probe)
    la, fa = run(adapted, prep, probe)
    hannover = {"n": len(probe),
                "flagged_plain": float(np.mean(M.flagged(prob(lp, card), thr))),
                "flagged_adabn": float(np.mean(M.flagged(prob(la, card), thr))),
                "ood_warned_plain": float(np.mean(ood.distances(fp) > ood.cutoff)),
                "ood_warned_adabn_features": float(np.mean(ood.distances(fa) > ood.cutoff))}

    print(f"\n{len(images)} validation images, threshold {thr:.3f}; drops from plain 'as is' "
          f"(sensitivity {base['sensitivity']:.3f}, specificity {base['specificity']:.3f})")
    print(f"{'way':<22}{'as is AUC':>10}{'worst AUC':>11}  {'(condition)':<18}{'sens drop':>10}  {'(condition)':<18}"
          f"{'spec drop':>10}  (condition)")
    for w, s in summaries.items():
        print(f"{w:<22}{s['as_is_auc']:>10.4f}{s['worst_auc']:>11.4f}  {s['worst_condition']:<18}"
              f"{s['largest_sensitivity_drop']:>10.3f}  {s['sensitivity_condition']:<18}"
              f"{s['largest_specificity_drop']:>10.3f}  {s['specificity_condition']}")
    print(f"\nHannover ({hannover['n']} adult films): flagged {hannover['flagged_plain']:.1%} plain, "
          f"{hannover['flagged_adabn']:.1%} after AdaBN on them; out-of-population warning "
          f"{hannover['ood_warned_plain']:.1%} plain, {hannover['ood_warned_adabn_features']:.1%} "
          "on the adapted network's features")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adaptation.json").write_text(json.dumps({
        "cpu": cpu_info().summary(), "images": len(images), "threshold": thr, "summaries": summaries,
        "hannover": hannover, "tta_views": list(TTA_VIEWS)}, indent=1) + "\n")
    with open(out / "stress.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["way", "condition", "auc", "sensitivity", "specificity"])
        for way, rows in ways.items():
            for cond, r in rows.items():
                w.writerow([way, cond, f"{r['auc']:.6f}", f"{r['sensitivity']:.6f}", f"{r['specificity']:.6f}"])
    log(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
