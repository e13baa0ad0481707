"""Build a training manifest that pools Kermany's children with NIH's adults, under a written label policy.

Label policy for ``nih-cxr`` (its ``metadata.csv``), documented in docs/MODEL_SELECTION.md:

* Where RSNA radiologists read the image (``rsna_class`` present), their class wins:
  ``Lung Opacity`` -> pneumonia, ``Normal`` -> normal, ``No Lung Opacity / Not Normal`` -> excluded
  (abnormal without opacity: neither a clean normal nor a pneumonia, so it would only teach noise).
* Otherwise NIH's report-mined label is kept (``No Finding`` -> normal, ``Pneumonia`` -> pneumonia).

NIH patients are split by a hash of the patient id: a fixed share is held out (never trained on) as the
adult in-distribution signal; the rest joins Kermany train+val in the training manifest, whose own
patient-wise validation split is carved by ``training.train``.

    python -m training.manifest --kermany ../shared/data/kermany224 --nih ../shared/data/nih-cxr --out runs/manifests
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from pathlib import Path
from typing import NamedTuple, Optional

from training.data import index_folder

RSNA_POLICY = {"lung opacity": "pneumonia", "normal": "normal", "no lung opacity / not normal": None}
MANIFEST_COLUMNS = ["path", "label", "patient_id", "source", "view", "age", "label_origin", "weight"]


class NihLabel(NamedTuple):
    label: Optional[str]   # "normal", "pneumonia" or None (excluded)
    origin: str            # "rsna", "nih" or "excluded:<reason>"


def nih_label(nih_label_text: str, rsna_class: str) -> NihLabel:
    """The policy above for one row of NIH metadata."""
    rsna = (rsna_class or "").strip().lower()
    if rsna:
        if rsna not in RSNA_POLICY:
            return NihLabel(None, f"excluded:unknown rsna class {rsna_class!r}")
        mapped = RSNA_POLICY[rsna]
        return NihLabel(mapped, "rsna") if mapped else NihLabel(None, "excluded:rsna abnormal without opacity")
    nih = (nih_label_text or "").strip().lower()
    if nih in ("normal", "pneumonia"):
        return NihLabel(nih, "nih")
    return NihLabel(None, f"excluded:unknown nih label {nih_label_text!r}")


def holdout_patient(patient_id: str, share: float) -> bool:
    """Deterministic patient-wise hold-out: the same patient always lands on the same side."""
    digest = hashlib.sha256(f"nih-holdout:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < share


def nih_rows(nih_dir: Path, holdout_share: float) -> tuple[list[dict], list[dict], list[dict]]:
    """(train rows, held-out rows, excluded rows) from ``nih_dir/metadata.csv``."""
    train, held, excluded = [], [], []
    with open(nih_dir / "metadata.csv", newline="") as f:
        for row in csv.DictReader(f):
            decided = nih_label(row["label"], row.get("rsna_class", ""))
            out = {"path": str((nih_dir / row["file"]).resolve()), "label": decided.label or "",
                   "patient_id": f"nih-{row['patient_id']}", "source": "nih", "view": row.get("view", ""),
                   "age": row.get("age", ""), "label_origin": decided.origin}
            if decided.label is None:
                excluded.append(out)
            elif holdout_patient(row["patient_id"], holdout_share):
                held.append(out)
            else:
                train.append(out)
    return train, held, excluded


def kermany_rows(kermany_dir: Path, splits: tuple[str, ...] = ("train", "val")) -> list[dict]:
    return [{"path": str(s.path.resolve()), "label": ("normal", "pneumonia")[s.label], "patient_id": s.patient_id,
             "source": "kermany", "view": "", "age": "child", "label_origin": "folder"}
            for s in index_folder(kermany_dir, splits)]


def write_manifest(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kermany", required=True, help="kermany224 folder (train/val/NORMAL|PNEUMONIA)")
    p.add_argument("--nih", required=True, help="nih-cxr folder with metadata.csv")
    p.add_argument("--out", required=True, help="folder for train.csv, nih_holdout.csv, nih_excluded.csv")
    p.add_argument("--nih-holdout", type=float, default=0.2, help="share of NIH patients never trained on")
    p.add_argument("--nih-weight", type=float, default=1.0, metavar="W",
                   help="sampling weight of each NIH training row (train with --sampler weighted)")
    args = p.parse_args(argv)
    if not args.nih_weight > 0:
        p.error("--nih-weight must be a positive number")
    out = Path(args.out)
    n_train, n_held, n_excl = nih_rows(Path(args.nih), args.nih_holdout)
    for row in n_train:
        row["weight"] = f"{args.nih_weight:g}"
    write_manifest(kermany_rows(Path(args.kermany)) + n_train, out / "train.csv")
    write_manifest(n_held, out / "nih_holdout.csv")
    write_manifest(n_excl, out / "nih_excluded.csv")
    for name, rows in (("NIH train", n_train), ("NIH held out", n_held), ("NIH excluded", n_excl)):
        normal = sum(r["label"] == "normal" for r in rows)
        print(f"{name}: {len(rows)} images ({normal} normal, {sum(r['label'] == 'pneumonia' for r in rows)} pneumonia), "
              f"{len({r['patient_id'] for r in rows})} patients")
    print(f"wrote {out / 'train.csv'}, {out / 'nih_holdout.csv'}, {out / 'nih_excluded.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
