"""Temperature and decision threshold, chosen on validation from the checkpoint as shipped.

    python -m training.calibrate CKPT_DIR --split RUN/split.json [--rule sensitivity>=0.97]

The validation images are scored through the engine's own Predictor on the saved weights
(float16 storage, folded BatchNorm, the device policy), so the threshold is chosen on exactly the
probabilities the product will compute. Writes the temperature, threshold, rule and validation
metrics into the model card, and ``val_predictions.csv`` (file, label, probability) beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from engine.evaluation import metrics
from engine.model.checkpoint import CARD_FILE, VAL_PREDICTIONS_FILE
from engine.inference.predictor import Predictor
from training.report import write_predictions_csv


def _margins(pred: Predictor, paths: Sequence[Path], batch_size: int = 64) -> np.ndarray:
    """Pneumonia-vs-normal logit margins (before temperature) for image files."""
    from engine.decode import read_image
    out = []
    for i in range(0, len(paths), batch_size):
        resized = [pred.prep.resize(read_image(p).pixels) for p in paths[i:i + batch_size]]
        logits = pred.logits(pred.prep.normalize(torch.from_numpy(np.stack(resized))))
        pos = pred.card.positive_index
        out.append((logits[:, pos] - logits[:, 1 - pos]).numpy().astype(np.float64))
    return np.concatenate(out)


def with_margin(scores: np.ndarray, threshold: float) -> float:
    """Move a threshold that sits exactly on a score halfway down to the next lower score.

    The same studies are flagged on validation, but none sits on the boundary, where the last bit
    of a different batch size or kernel would flip it.
    """
    below = scores[scores < threshold]
    return float((threshold + below.max()) / 2) if below.size else float(threshold)


def calibrate_checkpoint(ckpt_dir: str | Path, val_paths: Sequence[Path], val_labels: Sequence[int],
                         rule: str) -> dict:
    """Fit temperature, choose the threshold by ``rule``, update the card; return the summary."""
    ckpt_dir = Path(ckpt_dir)
    pred = Predictor.from_checkpoint(ckpt_dir)
    y = np.asarray(val_labels, dtype=np.int64)
    z = _margins(pred, list(val_paths))
    both = len(set(y.tolist())) == 2
    temperature = metrics.fit_temperature(z, y) if both else 1.0
    if not both:
        rule = "fixed:0.5"
    prob = 1.0 / (1.0 + np.exp(-z / temperature))
    threshold = with_margin(prob, metrics.choose_threshold(y, prob, rule).threshold)
    summary = metrics.summarize(y, prob, threshold)
    card_path = ckpt_dir / CARD_FILE
    card = json.loads(card_path.read_text())
    card["temperature"] = float(temperature)
    card["decision_threshold"] = {
        "value": float(threshold),
        "rule": f"{rule} on the patient-wise validation split, after temperature scaling, scored "
                "by the engine's predictor on the stored weights"}
    card["validation"] = summary
    card_path.write_text(json.dumps(card, indent=2, default=_json_default) + "\n")
    write_predictions_csv(ckpt_dir / VAL_PREDICTIONS_FILE, [Path(p).name for p in val_paths], y, prob)
    return summary


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--split", required=True, help="the run's split.json (its 'val' list is used)")
    ap.add_argument("--rule", default="sensitivity>=0.97")
    args = ap.parse_args(argv)
    val = json.loads(Path(args.split).read_text())["val"]
    s = calibrate_checkpoint(args.checkpoint, [Path(v["path"]) for v in val], [v["label"] for v in val], args.rule)
    print(json.dumps({k: s[k] for k in ("auc", "sensitivity", "specificity", "threshold", "n")}, indent=1))


if __name__ == "__main__":
    main()
