"""Index a chest X-ray data set: folders or a CSV manifest, duplicates, patient-wise splits."""

from __future__ import annotations

import csv
import hashlib
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

CLASS_NAMES = ("normal", "pneumonia")
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".dcm", ""}

_PNEUMONIA_PATIENT = re.compile(r"^(person\d+)_", re.IGNORECASE)
_NORMAL_PATIENT = re.compile(r"^(?:NORMAL2-)?IM-(\d+)-", re.IGNORECASE)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int            # 0 normal, 1 pneumonia
    patient_id: str
    split: str = ""       # the folder split it came from ("train", "val", ...), if any
    weight: float = 1.0   # sampling weight from a manifest's optional ``weight`` column


def label_from_folder(name: str) -> Optional[int]:
    key = name.lower()
    if key in ("normal", "0", "negative"):
        return 0
    if key in ("pneumonia", "1", "positive"):
        return 1
    return None


def patient_id_from_name(filename: str) -> str:
    """Kermany names carry the patient: ``person12_bacteria_3`` or ``[NORMAL2-]IM-0115-0001``.

    Normal names with and without the ``NORMAL2-`` prefix share one number space and are grouped
    together (a possible same patient must never straddle the split). Other names are their own
    patient.
    """
    stem = Path(filename).stem
    m = _PNEUMONIA_PATIENT.match(stem)
    if m:
        return "p-" + m.group(1).lower()
    m = _NORMAL_PATIENT.match(stem)
    if m:
        return f"n-im{int(m.group(1)):04d}"
    return "f-" + stem


def _class_folders(root: Path) -> list[tuple[Path, int]]:
    found = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        label = label_from_folder(child.name)
        if label is not None:
            found.append((child, label))
    return found


def _files_in(folder: Path) -> Iterable[Path]:
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            yield p


def index_folder(root: str | Path, splits: Optional[Iterable[str]] = None) -> list[Sample]:
    """Samples under ``root/SPLIT/CLASS/*`` or, for an unsplit folder, ``root/CLASS/*``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Data folder '{root}' does not exist")
    samples: list[Sample] = []
    direct = _class_folders(root)
    if direct:
        groups = [("", direct)]
    else:
        split_dirs = sorted(p for p in root.iterdir() if p.is_dir())
        if splits is not None:
            wanted = set(splits)
            split_dirs = [d for d in split_dirs if d.name in wanted]
        groups = [(d.name, _class_folders(d)) for d in split_dirs]
    for split, classes in groups:
        for folder, label in classes:
            samples += [Sample(p, label, patient_id_from_name(p.name), split) for p in _files_in(folder)]
    if not samples:
        raise FileNotFoundError(
            f"No images found under '{root}': expected SPLIT/NORMAL|PNEUMONIA/* or NORMAL|PNEUMONIA/*")
    return samples


def index_manifest(csv_path: str | Path) -> list[Sample]:
    """A CSV with columns ``path,label[,patient_id]``; paths relative to the CSV's folder."""
    csv_path = Path(csv_path)
    samples = []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)}; need path,label[,patient_id]")
        for i, row in enumerate(reader, start=2):
            label = label_from_folder(str(row["label"]).strip())
            if label is None:
                raise ValueError(f"{csv_path} line {i}: label '{row['label']}' is not normal/pneumonia/0/1")
            path = (csv_path.parent / row["path"]).resolve()
            pid = (row.get("patient_id") or "").strip() or patient_id_from_name(path.name)
            samples.append(Sample(path, label, pid, "manifest", _sampling_weight(row.get("weight"), csv_path, i)))
    return samples


def _sampling_weight(text: Optional[str], csv_path: Path, line: int) -> float:
    """A manifest row's ``weight`` (default 1); refuses what is not a positive finite number."""
    if text is None or not str(text).strip():
        return 1.0
    try:
        weight = float(text)
    except ValueError:
        weight = float("nan")
    if not (0 < weight < float("inf")):
        raise ValueError(f"{csv_path} line {line}: weight '{text}' is not a positive number")
    return weight


def index_dataset(source: str | Path, splits: Optional[Iterable[str]] = None) -> list[Sample]:
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return index_manifest(source)
    return index_folder(source, splits)


def drop_duplicates(samples: list[Sample]) -> tuple[list[Sample], list[tuple[Path, Path]]]:
    """Keep the first of each group of byte-identical files; return (kept, [(dropped, kept_as)])."""
    seen: dict[str, Path] = {}
    kept, dropped = [], []
    for s in samples:
        digest = hashlib.sha1(s.path.read_bytes()).hexdigest()
        if digest in seen:
            dropped.append((s.path, seen[digest]))
        else:
            seen[digest] = s.path
            kept.append(s)
    return kept, dropped


def patient_split(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Stratified split by patient: each class's patients are shuffled and ~val_fraction go to val.

    A patient's images all land on one side. Patients are stratified by their majority label.
    """
    by_patient: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_patient[s.patient_id].append(s)
    rng = random.Random(seed)
    val_ids: set[str] = set()
    for label in (0, 1):
        ids = sorted(p for p, ss in by_patient.items()
                     if round(sum(x.label for x in ss) / len(ss)) == label)
        rng.shuffle(ids)
        target = val_fraction * sum(len(by_patient[p]) for p in ids)
        count = 0
        for pid in ids:
            if count >= target:
                break
            val_ids.add(pid)
            count += len(by_patient[pid])
    train = [s for s in samples if s.patient_id not in val_ids]
    val = [s for s in samples if s.patient_id in val_ids]
    return train, val


def counts(samples: list[Sample]) -> dict[str, int]:
    return {"n": len(samples), "normal": sum(s.label == 0 for s in samples),
            "pneumonia": sum(s.label == 1 for s in samples),
            "patients": len({s.patient_id for s in samples})}
