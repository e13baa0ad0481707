"""Fit a checkpoint's out-of-population score and measure how often it warns.

    python -m training.ood --checkpoint assets/models/default --data-dir ../shared/data/kermany224 \\
        [--probe ../shared/data/adult-probe/hannover ../shared/data/dicom] [--out ood_report.json]

Rebuilds the checkpoint's patient-wise split from its model card (same pooled splits, duplicates
dropped, validation fraction and seed), extracts the penultimate features of the training and the
validation images with the checkpoint's own preprocessing, fits :class:`engine.model.ood.FeatureOOD` (the
cut-off puts ~5% of validation images over it), saves ``ood.safetensors`` beside the weights, and
reports the share of warnings on the validation images, on each ``--probe`` folder, and on altered
validation films (rotated 90 degrees, inverted, cropped to a quarter, blank noise), with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from engine.model.checkpoint import load_checkpoint
from engine.decode import read_image
from engine.model.device import hardware_summary
from engine.errors import ImageReadError
from engine.model.ood import fit
from engine.model.preprocess import Preprocessing
from training import data as ds

ALTERATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "rotated 90 degrees": lambda im: np.ascontiguousarray(np.rot90(im)),
    "inverted": lambda im: 1.0 - im,
    "cropped to the upper-left quarter": lambda im: np.ascontiguousarray(im[: im.shape[0] // 2, : im.shape[1] // 2]),
    "noise (no radiograph)": lambda im: np.random.default_rng(0).random(im.shape).astype(np.float32),
}


@torch.inference_mode()
def features(model: torch.nn.Module, prep: Preprocessing, images: Iterable[np.ndarray],
             batch_size: int = 32) -> np.ndarray:
    """Penultimate features (global average pool of the last block) of decoded images."""
    model = model.eval().float()
    out, batch = [], []

    def flush() -> None:
        x = prep.normalize(torch.from_numpy(np.stack(batch)))
        out.append(torch.flatten(model.avgpool(model.forward_features(x)), 1).numpy())
        batch.clear()

    for im in images:
        batch.append(prep.resize(im))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return np.concatenate(out) if out else np.empty((0, 512), np.float32)


def _decoded(paths: Sequence[Path]) -> Iterable[np.ndarray]:
    for p in paths:
        try:
            yield read_image(p).pixels
        except ImageReadError:
            continue


def _probe_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg", ".dcm"))


def split_from_card(card_training: dict, data_dir: str) -> tuple[list[ds.Sample], list[ds.Sample]]:
    """The checkpoint's own patient-wise split, rebuilt from what its card records."""
    splits = card_training.get("pooled_splits") or None
    samples, _ = ds.drop_duplicates(ds.index_dataset(data_dir, splits))
    rule = card_training.get("split_rule", "")
    fraction = float(card_training.get("val_fraction") or _after(rule, "val_fraction=") or 0.15)
    # the split's own seed (--split-seed), else --seed (runs before --split-seed split by it)
    seed = card_training.get("split_seed")
    if seed is None:
        seed = card_training.get("seed")
    seed = int(seed if seed is not None else (_after(rule, "seed=") or 0))
    return ds.patient_split(samples, fraction, seed)


def _after(text: str, key: str) -> Optional[str]:
    if key not in text:
        return None
    return text.split(key, 1)[1].split(",")[0].split()[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.ood", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-dir", required=True, help="the data the checkpoint was trained on")
    p.add_argument("--probe", nargs="*", default=[], help="folders of images from elsewhere, to measure")
    p.add_argument("--target-rate", type=float, default=0.05)
    p.add_argument("--out", help="JSON report")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, card = load_checkpoint(args.checkpoint)
    train, val = split_from_card(card.extra.get("training") or {}, args.data_dir)
    t0 = time.perf_counter()
    f_train = features(model, card.preprocessing, _decoded([s.path for s in train]))
    val_images = list(_decoded([s.path for s in val]))
    f_val = features(model, card.preprocessing, val_images)
    ood = fit(f_train, f_val, args.target_rate)
    ood.save(args.checkpoint)
    report = {"hardware": hardware_summary(), "checkpoint": str(args.checkpoint), "train_images": len(f_train),
              "val_images": len(f_val), "cutoff": ood.cutoff, "rates": {"validation (in population)": ood.validation_rate}}
    for folder in args.probe:
        files = _probe_files(Path(folder))
        f = features(model, card.preprocessing, _decoded(files))
        report["rates"][f"{folder} ({len(f)} images)"] = float(np.mean(ood.distances(f) > ood.cutoff)) if len(f) else None
    for label, change in ALTERATIONS.items():
        f = features(model, card.preprocessing, (change(im) for im in val_images))
        report["rates"][f"validation, {label}"] = float(np.mean(ood.distances(f) > ood.cutoff))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
