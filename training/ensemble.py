"""Build a deep-ensemble checkpoint from trained members: one folder that every caller treats as one model.

    python -m training.ensemble MEMBER_DIR MEMBER_DIR [...] --out DIR [--name NAME] [--half-weights]
        [--data-dir ../shared/data/kermany224 --rule sensitivity>=0.97]

The folder holds ``model.safetensors`` (every member's weights, prefixed ``members.<i>.``) and a model
card whose architecture is ``ensemble`` and whose ``ensemble.members`` lists each member's
architecture, calibration temperature and source (name, folder, weights SHA-256). The ensemble's
output is the mean of its members' calibrated probabilities (``models.ensemble.EnsembleNet``).

With ``--data-dir``, the patient-wise validation split is rebuilt from the first member's card (the
members must share it: train them with one ``--split-seed``), and the ensemble's own temperature and
threshold are chosen on it by the same rule as a single model's. The training and validation images'
hashes are copied from the first member, so the overlap warning keeps working.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

from engine.model.checkpoint import ENSEMBLE, CheckpointError, ModelCard, load_checkpoint, save_checkpoint
from engine.evaluation.provenance import HASHES_FILE


def build_ensemble(members: Sequence[str | Path], out: str | Path, *, name: str = "", half: bool = False) -> Path:
    """Write the ensemble checkpoint of ``members`` into ``out`` (threshold from the first member's card)."""
    from engine.inference.backends.artefacts import weights_sha256
    from models.ensemble import EnsembleNet
    if len(members) < 2:
        raise CheckpointError("an ensemble needs at least two member checkpoints")
    nets, cards = zip(*(load_checkpoint(m) for m in members))
    first = cards[0]
    for path, card in zip(members, cards):
        if card.preprocessing != first.preprocessing or card.class_names != first.class_names:
            raise CheckpointError(f"{path}: its input ({card.preprocessing}) or classes ({card.class_names}) differ "
                                  f"from the first member's: members must see the same input")
    listed = [{"architecture": c.architecture, "temperature": c.temperature, "name": c.name or c.architecture,
               "source": str(Path(p)), "weights_sha256": weights_sha256(p)} for p, c in zip(members, cards)]
    model = EnsembleNet(list(nets), [c.temperature for c in cards], [c.architecture for c in cards])
    card = ModelCard(architecture=ENSEMBLE, preprocessing=first.preprocessing, class_names=list(first.class_names),
                     threshold=first.threshold, threshold_rule=f"the first member's ({first.threshold_rule})",
                     temperature=1.0, name=name or f"Ensemble of {len(members)} {first.architecture}",
                     version=first.version,
                     extra={"ensemble": {"members": listed, "combine": "mean of the members' probabilities, "
                                                                      "each at its own temperature"},
                            "training": first.extra.get("training", {})})
    folder = save_checkpoint(model, card, out, half=half)
    hashes = Path(members[0]) / HASHES_FILE
    if hashes.is_file():
        shutil.copyfile(hashes, folder / HASHES_FILE)
    return folder


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.ensemble", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("members", nargs="+", help="member checkpoint folders (at least two)")
    p.add_argument("--out", required=True)
    p.add_argument("--name", default="")
    p.add_argument("--half-weights", action="store_true")
    p.add_argument("--data-dir", help="the members' data: rebuild their validation split and calibrate the ensemble")
    p.add_argument("--rule", default="sensitivity>=0.97")
    args = p.parse_args(argv)
    try:
        folder = build_ensemble(args.members, args.out, name=args.name, half=args.half_weights)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.data_dir:
        from engine.model.checkpoint import read_card
        from training.calibrate import calibrate_checkpoint
        from training.ood import split_from_card
        _, val = split_from_card(read_card(folder).extra.get("training") or {}, args.data_dir)
        summary = calibrate_checkpoint(folder, [s.path for s in val], [s.label for s in val], args.rule)
        print(f"calibrated on {len(val)} validation images: threshold {summary['threshold']:.4f}")
    print(f"ensemble of {len(args.members)} members written to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
