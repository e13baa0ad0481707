"""Batch prediction from the command line.

    python -m engine.predict PATH [PATH ...] --out results.csv [--checkpoint DIR]
                             [--threshold T] [--heatmaps DIR] [--dicom-out DIR]

PATH: files, folders (recursive) or ZIP archives. One CSV row per input file; unreadable files
(and unreadable folders, and ZIP members that cannot be read) get ``status=error`` and a message, and
the rest of the batch still runs. Exit code 0 when the batch ran (even with refused files); 2 for a
usage error; 3 when the model cannot be loaded. File names are relative to the folder given (a
folder's own name, often a patient's, is never written); ``--anonymise-names`` replaces them with a
hash. No patient identifiers are written unless ``--include-identifiers`` is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from tqdm import tqdm

from engine.inference.backends import CHOICES as BACKEND_CHOICES
from engine.model.checkpoint import DEFAULT_MODEL_DIR
from engine.worklist.csvsafe import IDENTIFIER_COLUMNS, RESULT_COLUMNS, anonymous_name, result_row, row_writer
from engine.errors import CheckpointError
from engine.inputs.sources import iter_inputs
from engine.evaluation.metrics import flagged as flag_rule
from engine.model.operating_point import OperatingPoint, for_study
from engine.inputs import arguments

CSV_COLUMNS = RESULT_COLUMNS


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, folders or ZIP archives")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--checkpoint", default=str(DEFAULT_MODEL_DIR), help="checkpoint folder (default: the shipped model)")
    p.add_argument("--threshold", type=arguments.threshold, help="decision threshold (default: the model card's)")
    p.add_argument("--profile", metavar="NAME",
                   help="a saved site profile's threshold (engine.evaluation.site; the dashboard's Performance page saves them)")
    p.add_argument("--heatmaps", help="folder for one PNG per readable file: original | Grad-CAM overlay")
    p.add_argument("--dicom-out", help="folder for a DICOM structured report, heatmap parametric map and heatmap "
                                       "capture per scored DICOM file, in its study (engine/pacs/dicom_out.py, "
                                       "docs/CONFORMANCE.md)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--backend", choices=BACKEND_CHOICES, default=None,
                   help="inference backend (default: $CXR_BACKEND or auto, the fastest measured on this CPU; "
                        "see engine/backends)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network (torch backend): about a minute to start, then faster (long batches)")
    p.add_argument("--include-identifiers", action="store_true", help="add patient identifier columns (off by default)")
    p.add_argument("--anonymise-names", "--anonymize-names", dest="anonymise_names", action="store_true",
                   help="write file-<hash> instead of file names (in the CSV and the heatmap names)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def prediction_row(pred, threshold: float, model_label: str, *, label: Optional[str] = None,
                   include_identifiers: bool = False, operating_point: str = "") -> dict:
    """The results row (``engine.worklist.csvsafe.result_row``) of a Prediction, under ``label`` if given."""
    label = pred.name if label is None else label
    return result_row(file=label, status=pred.status,
                      message=pred.message.replace(pred.name, label) if label != pred.name else pred.message,
                      probability=pred.probability, threshold=threshold, model=model_label,
                      warnings=pred.warnings, modality=pred.metadata.modality or "",
                      view_position=pred.metadata.view_position or "", sha256=pred.sha256,
                      identifiers=pred.identifiers.as_dict() if include_identifiers else None,
                      operating_point=operating_point)


class _Stop(Exception):
    """Ends :func:`main` early: ``message`` goes to stderr, ``code`` is the exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _check_args(args: argparse.Namespace) -> None:
    """Usage errors (exit code 2), before anything heavy loads."""
    if args.batch_size < 1:
        raise _Stop(2, f"error: --batch-size must be at least 1, got {args.batch_size}")
    if args.profile and args.threshold is not None:
        raise _Stop(2, "error: give --threshold or --profile, not both")


def _apply_profile(args: argparse.Namespace):
    """``--profile``: load the site profile and take its threshold into ``args`` (None without it)."""
    if not args.profile:
        return None
    from engine.evaluation.site import ProfileError, load_profile
    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        raise _Stop(2, f"error: {exc}") from None
    args.threshold = profile.threshold
    if not args.quiet:
        print(f"site profile {profile.summary()}", file=sys.stderr)
    return profile


def _load_predictor(args: argparse.Namespace):
    """The predictor on the chosen backend (exit code 3 when it cannot load or start)."""
    from engine.decode.pool import default_pool
    from engine.gc_pause import paused_gc
    if args.heatmaps:   # the decoding workers start up while the model and Grad-CAM load
        default_pool().start()
    try:
        with paused_gc(freeze=True):   # a batch process: what loads here lives until it exits
            from engine.inference.predictor import Predictor  # torch loads only after the arguments are checked
            predictor = Predictor.from_checkpoint(args.checkpoint, compile=args.compile, backend=args.backend)
    except CheckpointError as exc:
        raise _Stop(3, f"error: cannot load the model: {exc}") from None
    except Exception as exc:   # a forced backend that cannot start (no onnxruntime, no INT8 graph)
        raise _Stop(3, f"error: cannot start the {args.backend} backend: {type(exc).__name__}: {exc}") from None
    if not args.quiet:
        print(f"backend: {predictor.backend_label} ({predictor.backend.reason})", file=sys.stderr)
    return predictor


def _heatmap_folder(args: argparse.Namespace, predictor):
    """``--heatmaps``: the PNG writer with its explainer loaded (None without the option)."""
    if not args.heatmaps:
        return None
    from engine.inference.heatmap_files import HeatmapFolder
    heatmaps = HeatmapFolder(predictor, args.heatmaps, args.batch_size)
    try:
        heatmaps.load_explainer()   # before the first batch: nothing waits on it half-way
    except Exception as exc:
        raise _Stop(3, f"error: cannot load the network for heatmaps: {type(exc).__name__}: {exc}") from None
    return heatmaps


def _override(args: argparse.Namespace, profile) -> Optional[OperatingPoint]:
    """The threshold given (``--threshold`` or a profile's), which replaces the card's points."""
    if args.threshold is None:
        return None
    return OperatingPoint(f"site profile {args.profile}" if profile else "given threshold", float(args.threshold))


def _write_results(args: argparse.Namespace, predictor, threshold: float, override: Optional[OperatingPoint],
                   heatmaps, out: Path) -> tuple[dict[str, int], object]:
    """Predict every input and write one CSV row each (and the heatmaps and DICOM objects asked for).

    Returns the counts (ok, error, flagged) and the ``--dicom-out`` writer (None without it)."""
    items = list(iter_inputs(args.paths))
    bar = tqdm(total=len(items), unit="file", file=sys.stderr, disable=args.quiet, desc="predicting")
    columns = CSV_COLUMNS + (IDENTIFIER_COLUMNS if args.include_identifiers else [])
    counts = {"ok": 0, "error": 0, "flagged": 0}
    points = predictor.card.operating_points
    model_label = predictor.card.label
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        write_row = row_writer(f, columns)
        dicom_out = _dicom_out(args, predictor, threshold)
        sources = iter(items)
        stream = predictor.predict_stream(items, batch_size=args.batch_size,
                                          keep_images=heatmaps is not None or dicom_out is not None,
                                          progress=lambda done, total: bar.update(done - bar.n), total=len(items))
        for pred in stream:
            if dicom_out is not None:
                dicom_out.add(next(sources), pred)
            counts[pred.status] += 1
            point = for_study(predictor.threshold, points, pred.metadata.age_band, override)
            counts["flagged"] += int(pred.ok and flag_rule(pred.probability, point.threshold))
            label = anonymous_name(pred.name) if args.anonymise_names else pred.name
            write_row(prediction_row(pred, point.threshold, model_label, label=label,
                                     include_identifiers=args.include_identifiers, operating_point=point.name))
            if heatmaps is not None and pred.image is not None:
                heatmaps.add(label, pred)
        if heatmaps is not None:
            heatmaps.close()
    bar.close()
    return counts, dicom_out


def _report(counts: dict[str, int], threshold: float, override: Optional[OperatingPoint], points: dict,
            out: Path, dicom_out) -> None:
    """The one-line summary on stderr (and the DICOM writer's)."""
    at = f"threshold {threshold:.3f}" if override or not points else (
        f"the card's operating points: {threshold:.3f}, " + ", ".join(f"{n} {p.threshold:.3f}" for n, p in points.items()))
    print(f"{counts['ok'] + counts['error']} files: {counts['ok']} read ({counts['flagged']} flagged at "
          f"{at}), {counts['error']} refused. Results: {out}", file=sys.stderr)
    if dicom_out is not None:
        print(dicom_out.summary(), file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command; the exit code (see the module docstring)."""
    args = get_args_parser().parse_args(argv)
    try:
        _check_args(args)
        profile = _apply_profile(args)
        predictor = _load_predictor(args)
        heatmaps = _heatmap_folder(args, predictor)
    except _Stop as stop:
        print(stop.message, file=sys.stderr)
        return stop.code
    threshold = predictor.threshold if args.threshold is None else args.threshold
    override = _override(args, profile)
    out = Path(args.out)
    counts, dicom_out = _write_results(args, predictor, threshold, override, heatmaps, out)
    _report(counts, threshold, override, predictor.card.operating_points, out, dicom_out)
    return 0

def _dicom_out(args, predictor, threshold: float):
    """``--dicom-out``: the SR, parametric map and heatmap capture writer (None without the option)."""
    if not args.dicom_out:
        return None
    from engine.pacs.dicom_out import DicomOutFolder
    origin = (f"site profile {args.profile}" if args.profile else
              "--threshold on the command line" if args.threshold is not None else None)
    return DicomOutFolder(args.dicom_out, predictor, threshold if args.threshold is not None else None, origin)


if __name__ == "__main__":
    from engine.fast_exit import exit_now
    exit_now(main())
