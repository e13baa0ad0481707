"""Evaluate a checkpoint on a labelled image folder, through the product's own inference path.

    python -m training.evaluate --checkpoint runs/NAME/best --data-dir ../shared/data/kermany224 \\
        --split val --out evals/NAME [--threshold T] [--batch-size N] [--gradcam-samples K]

``--data-dir`` is ``SPLIT/CLASS/*`` (choose the split with ``--split``), an unsplit ``CLASS/*``
folder (NORMAL/, PNEUMONIA/), or a CSV manifest (``path,label[,patient_id]``). Images are scored
by ``engine.inference.predictor.Predictor`` exactly as the CLI and the dashboard score them. ``--out`` gets:

- ``metrics.json``: ``engine.evaluation.metrics.summarize`` at the card's threshold (or ``--threshold``),
  plus the model, checkpoint, data, counts, unreadable files and, for information only, the
  operating points (Youden, sensitivity >= 0.95, specificity >= 0.90) chosen *on this data*.
  Undefined values (e.g. AUC with one class) are ``null``.
- ``predictions.csv`` (``file,label,probability``). The metrics are computed from the values as
  written there (full precision), so recomputing them from the
  CSV gives exactly metrics.json.
- ``model_card.json``: a copy of the checkpoint's card.
- ``figures/``: confusion matrix, ROC, precision-recall and calibration, as HTML (offline: one
  shared ``plotly.min.js``) and PNG.
- ``gradcam/``: up to K images per group (TP, TN, FP, FN; the most confident of each), original |
  Grad-CAM overlay, the probability in the file name, and ``overview.png`` with captions.

Unreadable files are listed (stderr and metrics.json), never fatal. Exit codes: 0 done, 2 usage or
data error, 3 the checkpoint cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from engine.evaluation import metrics as M
from engine.model.checkpoint import CARD_FILE
from engine.errors import CheckpointError
from engine.inputs import arguments
from training import data as ds

GROUPS = ("TP", "TN", "FP", "FN")
DISPLAY_MAX_PX = 512
OPERATING_POINTS_NOTE = ("Thresholds chosen on this evaluation data itself (optimistic): for "
                         "information only, never to pick the shipped threshold.")


class EvaluationError(ValueError):
    """Bad data folder, split or option; the message names the value and what is expected."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (model.safetensors + model_card.json)")
    add_data_arguments(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threshold", type=arguments.threshold, help="decision threshold (default: the model card's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--gradcam-samples", type=int, default=4, help="images per group TP/TN/FP/FN (0: none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# --------------------------------------------------------------------------- data

def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """``--data-dir`` and ``--split``, read by :func:`index_eval_data`."""
    p.add_argument("--data-dir", required=True, help="SPLIT/CLASS/*, CLASS/* or a CSV manifest")
    p.add_argument("--split", help="which split folder of --data-dir (omit for an unsplit folder)")


def index_eval_data(data_dir: str | Path, split: Optional[str]) -> list[ds.Sample]:
    """The labelled samples to evaluate; errors name the folder and the valid choices."""
    root = Path(data_dir)
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise EvaluationError(f"--data-dir '{root}' is a file but not a CSV manifest (path,label[,patient_id])")
        if split:
            raise EvaluationError(f"--split '{split}' does not apply to the CSV manifest '{root}'")
        return ds.index_manifest(root)
    if not root.is_dir():
        raise EvaluationError(f"--data-dir '{root}' does not exist")
    class_dirs = [p.name for p in sorted(root.iterdir()) if p.is_dir() and ds.label_from_folder(p.name) is not None]
    split_dirs = [p.name for p in sorted(root.iterdir()) if p.is_dir() and ds.label_from_folder(p.name) is None
                  and any(ds.label_from_folder(c.name) is not None for c in p.iterdir() if c.is_dir())]
    if class_dirs:
        if split:
            raise EvaluationError(f"--split '{split}': '{root}' is not split (it holds {', '.join(class_dirs)} "
                                  f"directly); leave --split out")
        return ds.index_folder(root)
    if not split_dirs:
        raise EvaluationError(f"'{root}' holds neither class folders (NORMAL/, PNEUMONIA/) nor split folders "
                              f"with class folders inside")
    if not split:
        raise EvaluationError(f"'{root}' is split into {', '.join(split_dirs)}: choose one with --split")
    if split not in split_dirs:
        raise EvaluationError(f"--split '{split}' is not in '{root}'; choose one of {', '.join(split_dirs)}")
    return ds.index_folder(root, splits=[split])


def display_name(path: Path, root: Path) -> str:
    """The file relative to the data folder (POSIX separators), or the path as given."""
    base = root.parent if root.is_file() else root
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def predict_samples(predictor, samples: Sequence[ds.Sample], names: Sequence[str], batch_size: int,
                    quiet: bool = False) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Probabilities (NaN where unreadable) in input order, and (file, error) per unreadable file."""
    from tqdm import tqdm
    from engine.inputs.sources import InputItem

    items = [InputItem(n, s.path.read_bytes) for s, n in zip(samples, names)]
    probs = np.full(len(items), np.nan)
    errors: list[tuple[str, str]] = []
    bar = tqdm(total=len(items), desc="evaluating", unit="img", file=sys.stderr, disable=quiet,
               dynamic_ncols=True)
    stream = predictor.predict_stream(items, batch_size=batch_size, total=len(items),
                                      progress=lambda done, total: bar.update(done - bar.n))
    for i, pred in enumerate(stream):
        if pred.ok:
            probs[i] = pred.probability
        else:
            errors.append((names[i], pred.message))
    bar.close()
    return probs, errors


def read_back_probabilities(path: Path) -> np.ndarray:
    """The probabilities exactly as ``predictions.csv`` stores them (rounded by its writer)."""
    import csv
    with open(path, newline="") as f:
        return np.array([float(r["probability"]) for r in csv.DictReader(f)], dtype=np.float64)


def jsonable(obj: Any) -> Any:
    """Plain JSON: NaN/inf become null, numpy scalars and arrays become Python values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def operating_points(labels: np.ndarray, probs: np.ndarray) -> dict:
    out = {}
    for rule in M.PRESET_RULES:
        try:
            out[rule] = M.choose_threshold(labels, probs, rule).to_dict()
        except ValueError as exc:  # a class is absent: the rule is undefined here
            out[rule] = {"rule": rule, "error": str(exc)}
    return out


def training_overlap(ckpt_dir: Path, samples: Sequence[ds.Sample]) -> Optional[dict]:
    """How many evaluated images the model trained or validated on: from the run's split.json beside a
    run's checkpoint, else from the training images' SHA-256 list the checkpoint carries (a shipped
    model has no run folder). None when neither is there."""
    split_file = ckpt_dir.parent / "split.json"
    if split_file.is_file():
        try:
            recorded = json.loads(split_file.read_text())
            sides = {side: {str(Path(r["path"]).resolve()) for r in recorded.get(side, [])} for side in ("train", "val")}
        except (json.JSONDecodeError, KeyError, TypeError, OSError):
            return None
        paths = [str(s.path.resolve()) for s in samples]
        return {side: sum(p in ids for p in paths) for side, ids in sides.items()}
    from engine.evaluation.provenance import HASHES_FILE, file_sha256, overlap_counts
    if not (ckpt_dir / HASHES_FILE).is_file():
        return None
    return overlap_counts(ckpt_dir, (file_sha256(s.path) for s in samples))


# --------------------------------------------------------------------------- outputs

def write_figures(out: Path, labels: np.ndarray, probs: np.ndarray, threshold: float, name: str,
                  summary: dict) -> list[Path]:
    from training import figures as F

    folder = out / "figures"
    s = F.ScoredSet.of(name, labels, probs, threshold)
    ci = summary.get("auc_ci_95")
    written = []
    for stem, fig, mpl in (
        ("confusion_matrix", F.confusion_matrix_figure(summary["confusion_matrix"], threshold=threshold),
         F.confusion_matrix_mpl(summary["confusion_matrix"], threshold=threshold)),
        ("roc", F.roc_figure(s, auc_ci=ci), F.roc_mpl(s, auc_ci=ci)),
        ("precision_recall", F.pr_figure(s), F.pr_mpl(s)),
        ("calibration", F.calibration_figure(labels, probs, name=name), F.calibration_mpl(labels, probs, name=name)),
    ):
        written += [F.write_html(fig, folder / f"{stem}.html"), F.write_png(mpl, folder / f"{stem}.png")]
    return written


def pick_gradcam(labels: np.ndarray, probs: np.ndarray, threshold: float, k: int) -> dict[str, list[int]]:
    """Indices of the (at most k) most confident images of each group TP, TN, FP, FN."""
    flagged = M.flagged(probs, threshold)
    masks = {"TP": (labels == 1) & flagged, "TN": (labels == 0) & ~flagged,
             "FP": (labels == 0) & flagged, "FN": (labels == 1) & ~flagged}
    picked = {}
    for group, mask in masks.items():
        idx = np.flatnonzero(mask)
        # flagged groups: highest probability first; the others: lowest first (stable order on ties)
        key = -probs[idx] if group in ("TP", "FP") else probs[idx]
        picked[group] = idx[np.argsort(key, kind="mergesort")][:max(k, 0)].tolist()
    return picked


def _display_pixels(pixels: np.ndarray) -> np.ndarray:
    import cv2
    h, w = pixels.shape[:2]
    scale = DISPLAY_MAX_PX / max(h, w)
    if scale >= 1:
        return pixels
    return cv2.resize(pixels, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def write_gradcam(out: Path, predictor, samples: Sequence[ds.Sample], names: Sequence[str],
                  labels: np.ndarray, probs: np.ndarray, threshold: float, k: int) -> list[Path]:
    """Side-by-side PNGs (original | Grad-CAM overlay) per group, and a captioned overview grid."""
    import cv2
    from engine.decode import read_image
    from engine.errors import ImageReadError
    from engine.inference.overlay import side_by_side
    from engine.inference.heatmap_files import safe_png_name
    from training import figures as F

    picked = pick_gradcam(labels, probs, threshold, k)
    order = [(g, i) for g in GROUPS for i in picked[g]]
    if not order:
        return []
    folder = out / "gradcam"
    folder.mkdir(parents=True, exist_ok=True)
    pixels = {}
    for _, i in order:
        try:
            pixels[i] = read_image(samples[i].path).pixels
        except ImageReadError:  # readable a moment ago; skip rather than fail the report
            continue
    order = [(g, i) for g, i in order if i in pixels]
    explainer = predictor.load_explainer()
    heat = explainer.explain_images([predictor.prep.resize(pixels[i]) for _, i in order])
    written, used, panels = [], set(), {g: [] for g in GROUPS}
    class_names = predictor.card.class_names
    for (group, i), h in zip(order, heat):
        rgb = side_by_side(_display_pixels(pixels[i]), h)
        stem = Path(names[i]).stem
        fname = safe_png_name(f"{group}_{len(panels[group]) + 1}_p{probs[i]:.3f}_{stem}", used)
        cv2.imwrite(str(folder / fname), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        written.append(folder / fname)
        panels[group].append((rgb, f"p={probs[i]:.3f} (truth: {class_names[int(labels[i])]})\n{stem[:40]}"))
    F.write_png(F.gradcam_grid_mpl([(g, panels[g]) for g in GROUPS]), folder / "overview.png", dpi=90)
    return written


# --------------------------------------------------------------------------- main

def _check_args(args: argparse.Namespace) -> None:
    """Usage errors, before anything loads."""
    if args.batch_size < 1:
        raise EvaluationError(f"--batch-size must be at least 1, got {args.batch_size}")


@dataclass
class _Scored:
    """The readable images of the evaluation (in input order) and the unreadable ones."""

    samples: list[ds.Sample]             # every sample indexed
    kept: list[ds.Sample]                # those that could be read
    names: list[str]                     # display names of ``kept``
    labels: np.ndarray                   # of ``kept``
    raw: np.ndarray                      # probabilities of ``kept``, as predicted
    errors: list[tuple[str, str]]        # (file, message) per unreadable file


def _score(predictor, samples: list[ds.Sample], root: Path, batch_size: int, quiet: bool) -> _Scored:
    """Score every sample (unreadable ones listed on stderr); EvaluationError when none can be read."""
    names = [display_name(s.path, root) for s in samples]
    raw, errors = predict_samples(predictor, samples, names, batch_size, quiet)
    for name, message in errors:
        print(f"unreadable: {message or name}", file=sys.stderr)
    ok = np.isfinite(raw)
    if not ok.any():
        raise EvaluationError(f"none of the {len(samples)} images under '{root}' could be read")
    kept = [s for s, good in zip(samples, ok) if good]
    return _Scored(samples, kept, [n for n, good in zip(names, ok) if good],
                   np.array([s.label for s in kept], dtype=np.int64), raw[ok], errors)


def _write_predictions(out: Path, ckpt: Path, scored: _Scored) -> np.ndarray:
    """``predictions.csv`` and the card's copy; the probabilities as read back from the CSV."""
    from training.report import write_predictions_csv
    out.mkdir(parents=True, exist_ok=True)
    write_predictions_csv(out / "predictions.csv", scored.names, scored.labels, scored.raw)
    # Metrics from the file's own values: recomputing them from predictions.csv gives metrics.json.
    probs = read_back_probabilities(out / "predictions.csv")
    shutil.copyfile(ckpt / CARD_FILE, out / CARD_FILE)
    return probs


def _warnings(overlap: Optional[dict], summary: dict) -> list[str]:
    """What makes these figures weaker than they look: training images, or a single class."""
    warnings = []
    if overlap and any(overlap.values()):
        warnings.append(f"{overlap['train']} of these images were in the run's training split and "
                        f"{overlap['val']} in its validation split: not a held-out evaluation")
    if not summary["n_positive"] or not summary["n_negative"]:
        warnings.append("only one class is present: AUC, AP and one of sensitivity/specificity are undefined")
    return warnings


def _metrics_json(args: argparse.Namespace, predictor, ckpt: Path, scored: _Scored, probs: np.ndarray,
                  summary: dict, overlap: Optional[dict], warnings: list[str]) -> dict:
    """What ``metrics.json`` holds (less ``seconds``), as plain JSON."""
    card = predictor.card
    return jsonable({
        **summary,
        "threshold_source": ("--threshold" if args.threshold is not None
                             else f"model card ({card.threshold_rule or 'rule not recorded'})"),
        "model_name": card.name or card.architecture,
        "architecture": card.architecture,
        "model_version": card.version,
        "checkpoint": str(ckpt.resolve()),
        "parameters": int(sum(p.numel() for p in predictor.model.parameters())),
        "temperature": card.temperature,
        "data_dir": str(Path(args.data_dir).resolve()),
        "split": args.split,
        "counts": {"files": len(scored.samples), "scored": len(scored.kept), "unreadable": len(scored.errors),
                   **{k: v for k, v in ds.counts(scored.kept).items() if k != "n"}},
        "unreadable": [{"file": n, "error": msg} for n, msg in scored.errors],
        "operating_points": operating_points(scored.labels, probs),
        "operating_points_note": OPERATING_POINTS_NOTE,
        "overlap_with_training": overlap,
        "warnings": warnings,
        "policy": predictor.policy.label,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def main(args: argparse.Namespace) -> dict:
    """Run the evaluation; return what was written to metrics.json."""
    from engine.inference.predictor import Predictor

    _check_args(args)
    t0 = time.perf_counter()
    ckpt = Path(args.checkpoint)
    samples = index_eval_data(args.data_dir, args.split)
    predictor = Predictor.from_checkpoint(ckpt)
    scored = _score(predictor, samples, Path(args.data_dir), args.batch_size, args.quiet)
    threshold = float(predictor.card.threshold if args.threshold is None else args.threshold)
    out = Path(args.out)
    probs = _write_predictions(out, ckpt, scored)
    summary = M.summarize(scored.labels, probs, threshold)
    overlap = training_overlap(ckpt, scored.kept)
    warnings = _warnings(overlap, summary)
    result = _metrics_json(args, predictor, ckpt, scored, probs, summary, overlap, warnings)
    write_figures(out, scored.labels, probs, threshold, result["model_name"], summary)
    if args.gradcam_samples > 0:
        write_gradcam(out, predictor, scored.kept, scored.names, scored.labels, probs, threshold,
                      args.gradcam_samples)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(format_summary(result, out))
    return result

def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def format_summary(m: dict, out: Path) -> str:
    ci = m.get("auc_ci_95") or [None, None]
    c = m["counts"]
    return (f"{m['model_name']} on {c['scored']} images ({c['normal']} normal, {c['pneumonia']} pneumonia; "
            f"{c['unreadable']} unreadable): AUC {_fmt(m['auc'])} [{_fmt(ci[0])}, {_fmt(ci[1])}], "
            f"AP {_fmt(m['average_precision'])}; at threshold {m['threshold']:.3f}: sensitivity "
            f"{_fmt(m['sensitivity'])}, specificity {_fmt(m['specificity'])}, F1 {_fmt(m['f1'])}. "
            f"Results in {out}")


def cli(argv: Optional[Sequence[str]] = None) -> int:
    return run_command(main, get_args_parser().parse_args(argv))


def run_command(command: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Run an evaluation-style command; exit code 0 done, 2 usage or data error, 3 bad checkpoint."""
    try:
        command(args)
    except CheckpointError as exc:
        print(f"error: cannot load the model: {exc}", file=sys.stderr)
        return 3
    except (EvaluationError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
