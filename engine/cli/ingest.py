"""Add files, folders and ZIP archives to the worklist store and score them: the batch way in.

    python -m engine.ingest PATH [PATH ...] --store DIR [--source NAME] [--checkpoint DIR]
                            [--worklist TOKEN] [--threshold T] [--quiet]

The same pipeline as the dashboard's uploads and the DICOM receiver (:mod:`engine.worklist.ingest`):
each input (a file, every file of a folder, every member of a ZIP) is one study row, read once,
cached once, scored once per model; an unreadable input is a row with the reason. Studies go to the
shared inbox, which every worklist shows, or to the worklist whose link token is given. The
monitoring period follows the checkpoint (and ``--threshold``: engine.monitoring.periods), and the
unflagged studies are drawn for the audit sample. One summary line, counts only; exit 0 when the batch
ran (refused inputs included), 2 on a usage error, 3 when the model cannot be loaded.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from tqdm import tqdm

from engine.errors import CheckpointError
from engine.evaluation.metrics import flagged as flag_rule
from engine.inference.backends import CHOICES as BACKEND_CHOICES
from engine.inputs import limits
from engine.inputs.sources import iter_inputs
from engine.monitoring import audit, periods
from engine.worklist.ingest import ingest, score_pending
from engine.worklist.store import Store, StudyRow
from engine.inputs import arguments

SOURCE = "batch"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.ingest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, folders or ZIP archives")
    p.add_argument("--store", help="store folder (default: $CXR_STORE_DIR or the user's data folder)")
    p.add_argument("--source", default=SOURCE, help=f"the studies' source label (default {SOURCE})")
    p.add_argument("--checkpoint", help="checkpoint folder (default: the shipped model)")
    p.add_argument("--worklist", metavar="TOKEN", help="a worklist's link token (?w=...); default: the shared inbox")
    p.add_argument("--threshold", type=arguments.threshold, help="monitoring threshold (default: the period's, or the card's)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default=None, help="inference backend (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _summary(new: Sequence[StudyRow], offered: int, where: str, label: str, threshold: float, drawn: int) -> str:
    scored = [r for r in new if r.ok]
    flagged = sum(bool(flag_rule(r.probability, threshold)) for r in scored)
    return (f"{offered:,} inputs: {len(new):,} added to {where} ({offered - len(new):,} already there); "
            f"{len(scored):,} scored by {label} ({flagged:,} flagged at {threshold:.3f}), "
            f"{len(new) - len(scored):,} unreadable; {drawn:,} drawn for the audit sample.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    if not args.source.strip() or len(args.source) > 40:
        print("error: --source must be 1-40 characters", file=sys.stderr)
        return 2
    store = Store(args.store)
    worklist = store.worklist(args.worklist) if args.worklist else None
    if args.worklist and worklist is None:
        print("error: --worklist: no worklist has this token", file=sys.stderr)
        return 2
    try:
        model = periods.model_info(args.checkpoint)
        from engine.inference.predictor import Predictor    # torch loads only once the arguments are checked
        predictor = Predictor.from_checkpoint(args.checkpoint, backend=args.backend)
    except CheckpointError as exc:
        print(f"error: cannot load the model: {exc}", file=sys.stderr)
        return 3
    period = periods.ensure(store, model, args.threshold)
    before = {r.id for r in store.studies(worklist, model.key)}
    items = list(iter_inputs(args.paths))
    ingest(store, worklist, items, source=args.source.strip(), max_files=limits.MAX_BATCH_FILES)
    bar = tqdm(total=None, unit="file", file=sys.stderr, disable=args.quiet, desc="scoring")

    def progress(done: int, total: Optional[int]) -> None:
        bar.total = total
        bar.update(done - bar.n)

    score_pending(store, worklist, predictor, model.key, progress=progress)
    bar.close()
    drawn = audit.draw(store, period)
    store.evict(protect_threshold=period.threshold, model_key=model.key)
    new = [r for r in store.studies(worklist, model.key) if r.id not in before]
    where = "the shared inbox" if worklist is None else "the worklist"
    print(_summary(new, len(items), where, model.label, period.threshold, drawn))
    return 0


if __name__ == "__main__":
    from engine.fast_exit import exit_now
    exit_now(main())
