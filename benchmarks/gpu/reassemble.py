"""Reassemble the members a device run packed (``members.tar.xz.part*``) into checkpoint folders.

    python benchmarks/gpu/reassemble.py FILES_DIR [--dest .gpu/members]

Concatenates the parts in order, checks the stream against the sha256 that ``device.log`` printed,
unpacks, checks every file against its folder's ``SHA256SUMS`` and loads each ``seedN/`` with
``engine.model.checkpoint.load_checkpoint`` (cheap: no evaluation). Prints one line per member.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import shutil
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files_dir", type=Path)
    ap.add_argument("--dest", type=Path, default=ROOT / ".gpu" / "members")
    args = ap.parse_args()
    parts = sorted(args.files_dir.rglob("members.tar.xz.part*"), key=lambda p: p.name)
    if not parts:
        print(f"no members.tar.xz.part* under {args.files_dir}")
        return 1
    blob = b"".join(p.read_bytes() for p in parts)
    digest = hashlib.sha256(blob).hexdigest()
    logs = list(args.files_dir.rglob("device.log"))
    expected = None
    if logs:
        m = re.search(r"^([0-9a-f]{64})\s+members\.tar\.xz$", logs[0].read_text(errors="replace"), re.M)
        expected = m.group(1) if m else None
    print(f"{len(parts)} parts, {len(blob):,} bytes, sha256 {digest} "
          f"({'matches device.log' if digest == expected else 'device.log says ' + str(expected)})")
    if expected and digest != expected:
        return 1
    args.dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:xz") as tf:
        tmp = args.dest.with_name(args.dest.name + ".unpack")
        shutil.rmtree(tmp, ignore_errors=True)
        tf.extractall(tmp, filter="data")
    for item in sorted(tmp.iterdir()):
        target = args.dest / item.name
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        item.rename(target)
    tmp.rmdir()

    sys.path.insert(0, str(ROOT))
    from engine.model.checkpoint import load_checkpoint
    ok = True
    for folder in sorted(p for p in args.dest.iterdir() if p.is_dir() and p.name.startswith("seed")):
        bad = []
        sums = folder / "SHA256SUMS"
        for line in (sums.read_text().splitlines() if sums.is_file() else []):
            h, name = line.split(None, 1)
            if hashlib.sha256((folder / name).read_bytes()).hexdigest() != h:
                bad.append(name)
        summary = json.loads((folder / "run_summary.json").read_text()) if (folder / "run_summary.json").is_file() else {}
        try:
            model, card = load_checkpoint(folder)
            v, tr = card.extra.get("validation", {}), card.extra.get("training", {})
            print(f"{folder}: loads ({card.architecture}, {sum(p.numel() for p in model.parameters()):,} params); "
                  f"epochs completed {summary.get('epochs_completed')}, finished {summary.get('finished_normally')}, "
                  f"best epoch {tr.get('best_epoch')}, val AUC {v.get('auc')}, threshold {card.threshold:.4f}, "
                  f"T {card.temperature:.3f}, sens {v.get('sensitivity')}, spec {v.get('specificity')}, "
                  f"n_val {v.get('n')}; sha256 {'ok' if not bad else 'MISMATCH ' + str(bad)}")
            ok &= not bad
        except Exception as exc:
            ok = False
            print(f"{folder}: FAILS to load: {type(exc).__name__}: {exc}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
