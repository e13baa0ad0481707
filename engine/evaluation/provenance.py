"""Which images a checkpoint has seen: the SHA-256 of its training and validation images.

``training_sha256.txt`` in the checkpoint folder holds one line per image, ``train <sha256>`` or
``val <sha256>`` (the patient-wise validation split chose the threshold and stopped the training, so
it is not held out either). An evaluation of images that overlap it says so (the Performance page,
``training.evaluate``): such figures are optimistic, not a held-out measurement.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Sequence

HASHES_FILE = "training_sha256.txt"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_training_hashes(folder: Path | str, train: Sequence[Path], val: Sequence[Path]) -> Path:
    out = Path(folder) / HASHES_FILE
    lines = [f"train {file_sha256(p)}" for p in train] + [f"val {file_sha256(p)}" for p in val]
    out.write_text("\n".join(sorted(lines)) + "\n")
    return out


def training_hashes(folder: Path | str) -> dict[str, frozenset[str]]:
    """``{"train": {...}, "val": {...}}``; empty sets when the checkpoint carries no list."""
    path = Path(folder) / HASHES_FILE
    sides: dict[str, set[str]] = {"train": set(), "val": set()}
    if path.is_file():
        for line in path.read_text().splitlines():
            side, _, sha = line.partition(" ")
            if side in sides and len(sha) == 64:
                sides[side].add(sha)
    return {k: frozenset(v) for k, v in sides.items()}


def overlap_counts(folder: Path | str, shas: Iterable[str]) -> dict[str, int]:
    """How many of these images (by SHA-256) were the checkpoint's training and validation images."""
    seen = training_hashes(folder)
    shas = [s for s in shas if s]
    return {side: sum(s in seen[side] for s in shas) for side in ("train", "val")}


def overlap_warning(folder: Path | str, shas: Iterable[str]) -> str:
    """A sentence when some of these images were the checkpoint's training or validation images, else ""."""
    shas = [s for s in shas if s]
    counts = overlap_counts(folder, shas)
    n_train, n_val = counts["train"], counts["val"]
    if not n_train and not n_val:
        return ""
    return (f"{n_train} of these {len(shas)} images were in the model's training split and {n_val} in its "
            "validation split: this is not a held-out evaluation, and its figures are optimistic")
