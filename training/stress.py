"""How far the operating point travels: a checkpoint on labelled images under acquisition changes.

    python -m training.stress --checkpoint assets/models/default --data-dir DIR|CSV [--split NAME]
                              [--out stress.csv] [--threshold T] [--conditions NAME,NAME]

Each image is decoded once, then scored by the product's predictor as it is and under each
condition below (applied to the decoded image, before the model's own preprocessing). For each
condition it prints and writes the AUC, the sensitivity and specificity at the card's threshold
(or ``--threshold``) and the median probability of each class: the AUC says whether the model
still ranks the studies, the sensitivity and specificity whether the threshold still means what
the card says.

These are synthetic probes, not data from another hospital. Where the training augmentation
already covers a change (gamma, contrast, blur, noise, small zoom) a good row shows invariance the
model was taught; the framing rows (a black border as from a wider collimation, a tighter crop)
and the failure rows (wrong orientation, inverted polarity: what a mis-read DICOM would give) are
outside it. Exit codes: 0 done, 2 usage or data error, 3 the checkpoint cannot be loaded.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np

from engine.evaluation import metrics as M
from engine.decode import read_image
from engine.errors import ImageReadError
from engine.inputs import arguments
from training.evaluate import (EvaluationError, add_data_arguments, display_name, index_eval_data,
                               run_command)

Condition = Callable[[np.ndarray], np.ndarray]   # (H, W) float32 in [0, 1] -> the same


def _gamma(g: float) -> Condition:
    return lambda im: im ** g


def _contrast(factor: float) -> Condition:
    return lambda im: (im - im.mean()) * factor + im.mean()


def _blur(kernel: int) -> Condition:
    return lambda im: cv2.GaussianBlur(im, (kernel, kernel), 0)


def _jpeg(quality: int) -> Condition:
    def apply(im: np.ndarray) -> np.ndarray:
        ok, buf = cv2.imencode(".jpg", np.round(np.clip(im, 0, 1) * 255).astype(np.uint8),
                               [cv2.IMWRITE_JPEG_QUALITY, quality])
        return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
    return apply


def _resolution(scale: float) -> Condition:
    def apply(im: np.ndarray) -> np.ndarray:
        h, w = im.shape
        small = cv2.resize(im, (max(int(w * scale), 1), max(int(h * scale), 1)), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return apply


def _clahe(im: np.ndarray) -> np.ndarray:
    eq = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    return eq.apply(np.round(np.clip(im, 0, 1) * 255).astype(np.uint8)).astype(np.float32) / 255


def _border(fraction: float) -> Condition:
    def apply(im: np.ndarray) -> np.ndarray:
        h, w = im.shape
        dh, dw = int(h * fraction), int(w * fraction)
        return cv2.copyMakeBorder(im, dh, dh, dw, dw, cv2.BORDER_CONSTANT, value=0)
    return apply


def _crop(fraction: float) -> Condition:
    def apply(im: np.ndarray) -> np.ndarray:
        h, w = im.shape
        dh, dw = int(h * fraction), int(w * fraction)
        return im[dh:h - dh, dw:w - dw]
    return apply


CONDITIONS: dict[str, Condition] = {
    "as is": lambda im: im,
    "gamma 0.6": _gamma(0.6),
    "gamma 1.6": _gamma(1.6),
    "contrast x0.6": _contrast(0.6),
    "CLAHE": _clahe,
    "blur 5 px": _blur(5),
    "blur 9 px": _blur(9),
    "JPEG quality 30": _jpeg(30),
    "half resolution": _resolution(0.5),
    "black border 10%": _border(0.10),
    "crop 8%": _crop(0.08),
    "rotated 90 degrees": lambda im: np.rot90(im),
    "inverted polarity": lambda im: 1 - im,
}


@dataclass(frozen=True)
class StressRow:
    condition: str
    n: int
    auc: Optional[float]
    sensitivity: Optional[float]
    specificity: Optional[float]
    median_p_normal: Optional[float]
    median_p_pneumonia: Optional[float]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.stress", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the shipped model)")
    add_data_arguments(p)
    p.add_argument("--out", type=Path, help="CSV file for the table")
    p.add_argument("--threshold", type=arguments.threshold, help="decision threshold (default: the model card's)")
    names = ", ".join(CONDITIONS).replace("%", "%%")   # argparse %-formats help strings
    p.add_argument("--conditions", help=f"comma-separated subset of: {names}")
    return p


def _finite_or_none(x: float) -> Optional[float]:
    return float(x) if np.isfinite(x) else None


def stress_rows(predict: Callable[[list[np.ndarray]], np.ndarray], images: Sequence[np.ndarray],
                labels: np.ndarray, threshold: float, conditions: dict[str, Condition]) -> list[StressRow]:
    """One row per condition: ``predict`` scores a list of (H, W) float32 images in [0, 1]."""
    rows = []
    for name, change in conditions.items():
        changed = [np.ascontiguousarray(np.clip(change(im), 0, 1), dtype=np.float32) for im in images]
        probs = np.asarray(predict(changed), dtype=np.float64)
        conf = M.confusion_at(labels, probs, threshold)
        normal, pneumonia = probs[labels == 0], probs[labels == 1]
        rows.append(StressRow(
            name, len(probs), _finite_or_none(M.roc_auc(labels, probs)),
            _finite_or_none(conf.sensitivity), _finite_or_none(conf.specificity),
            float(np.median(normal)) if len(normal) else None,
            float(np.median(pneumonia)) if len(pneumonia) else None))
    return rows


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def format_table(rows: Sequence[StressRow], threshold: float) -> str:
    width = max(len(r.condition) for r in rows)
    lines = [f"{'condition':<{width}}  {'AUC':>6}  {'sens':>6}  {'spec':>6}  {'median p normal':>15}  "
             f"{'median p pneumonia':>18}   (threshold {threshold:.3f})"]
    for r in rows:
        lines.append(f"{r.condition:<{width}}  {_fmt(r.auc):>6}  {_fmt(r.sensitivity):>6}  "
                     f"{_fmt(r.specificity):>6}  {_fmt(r.median_p_normal, 4):>15}  "
                     f"{_fmt(r.median_p_pneumonia, 4):>18}")
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[StressRow], threshold: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["condition", "n", "threshold", "auc", "sensitivity", "specificity",
                    "median_p_normal", "median_p_pneumonia"])
        for r in rows:
            w.writerow([r.condition, r.n, threshold, r.auc, r.sensitivity, r.specificity,
                        r.median_p_normal, r.median_p_pneumonia])


def _chosen(spec: Optional[str]) -> dict[str, Condition]:
    if not spec:
        return dict(CONDITIONS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise EvaluationError(f"--conditions: unknown {', '.join(map(repr, unknown))}; "
                              f"choose from {', '.join(CONDITIONS)}")
    return {n: CONDITIONS[n] for n in names}


def main(args: argparse.Namespace) -> list[StressRow]:
    from engine.inference.predictor import Predictor

    conditions = _chosen(args.conditions)
    samples = index_eval_data(args.data_dir, args.split)
    predictor = Predictor.from_checkpoint(args.checkpoint)
    root = Path(args.data_dir)
    images, labels = [], []
    for s in samples:
        try:
            images.append(read_image(s.path.read_bytes(), display_name(s.path, root)).pixels)
            labels.append(s.label)
        except (ImageReadError, OSError) as exc:
            print(f"unreadable: {exc}", file=sys.stderr)
    if not images:
        raise EvaluationError(f"none of the {len(samples)} images under '{root}' could be read")
    threshold = float(predictor.card.threshold if args.threshold is None else args.threshold)
    rows = stress_rows(predictor.predict_images, images, np.array(labels), threshold, conditions)
    print(format_table(rows, threshold))
    if args.out:
        write_csv(args.out, rows, threshold)
        print(f"written: {args.out}")
    return rows


def cli(argv: Optional[Sequence[str]] = None) -> int:
    return run_command(main, get_args_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
