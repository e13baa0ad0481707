"""INT8: static quantization of the exported graph, calibrated and gated on validation images.

    python -m engine.inference.backends.int8 [--checkpoint DIR] --data-dir ../shared/data/kermany224
                                   [--calibration-every 4] [--out-report FILE]

The validation images are the checkpoint's own patient-wise validation split (the file names in
its ``val_predictions.csv``, found under ``--data-dir``); every ``--calibration-every``-th of them
calibrates the activation ranges. The quantized graph (ONNX Runtime, QDQ, per-channel int8
weights, uint8 activations, MinMax ranges) keeps in float what measured sensitive here: CBAM's
attention convolutions, the stem and layer1. Then it is compared with torch float32 on *all* the
validation images, and it is used only if it keeps the model's behaviour (the issue's gate):

* largest probability difference at most 0.02,
* AUC within 0.002,
* the flags at the card's threshold unchanged for at least 99% of the images.

The graph and a report (``int8_report.json``: the figures, the gate, passed or not) are written
into the checkpoint's artefact folder (:mod:`engine.inference.backends.artefacts`); :func:`ready` is true
only when the report says passed, so a graph that fails is kept for inspection but never chosen.
Building needs torch, onnx and onnxruntime; using the result needs onnxruntime only.

``--convs W1,W2,... --dev-dir DIR`` builds into the checkpoint itself instead, with exactly those
convolutions in INT8 (as ``benchmarks/int8_sensitivity.py`` chose them, least sensitive first), gated on
every validation and dev-half image; a checkpoint's own graph is preferred to the cache's.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from engine.inference.backends import artefacts, cpu_info
from engine.model.checkpoint import DEFAULT_MODEL_DIR, VAL_PREDICTIONS_FILE, ModelCard, read_card
from engine.evaluation.metrics import flagged as flag_rule

GATE = {"max_probability_difference": 0.02, "auc_difference": 0.002, "flag_agreement": 0.99}
RECIPE = ("QDQ, per-channel int8 weights, uint8 activations, MinMax calibration; Conv only; int8: layer4 "
          "(its convolutions and downsample); float: CBAM attention, the stem and layers 1-3")


def _read_report(folder: Path) -> Optional[dict]:
    path = folder / artefacts.INT8_REPORT
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def _shipped(ckpt_dir: str | Path) -> Optional[Path]:
    """The checkpoint's own INT8 graph (``training.qat``), when its report names these weights."""
    folder = Path(ckpt_dir)
    report = _read_report(folder)
    if not (report and (folder / artefacts.INT8_FILE).is_file()):
        return None
    try:
        same = report.get("weights_sha256") == artefacts.weights_sha256(folder)
    except Exception:
        return None
    return folder if same else None


def _folder(ckpt_dir: str | Path, card: Optional[ModelCard] = None) -> Path:
    """Where this checkpoint's INT8 graph and report are: the checkpoint's own (shipped with it, built
    by quantization-aware distillation), else the cache (built from the weights by :func:`build`)."""
    return _shipped(ckpt_dir) or artefacts.artefact_dir(ckpt_dir, card)


def int8_path(ckpt_dir: str | Path, card: Optional[ModelCard] = None) -> Optional[Path]:
    path = _folder(ckpt_dir, card) / artefacts.INT8_FILE
    return path if path.is_file() else None


def report_for(ckpt_dir: str | Path, card: Optional[ModelCard] = None) -> Optional[dict]:
    """The INT8 graph's gate report (figures, recipe, passed), or None where there is no graph."""
    try:
        return _read_report(_folder(ckpt_dir, card))
    except Exception:
        return None


def ready(ckpt_dir: str | Path, card: Optional[ModelCard] = None) -> bool:
    """An INT8 graph exists for these weights and passed its agreement gate."""
    try:
        folder = _folder(ckpt_dir, card)
    except Exception:
        return False
    report = _read_report(folder)
    return bool(report and report.get("passed") and (folder / artefacts.INT8_FILE).is_file())


def validation_files(ckpt_dir: Path, data_dir: Path) -> tuple[list[Path], np.ndarray]:
    """The checkpoint's validation images (names in val_predictions.csv) found under ``data_dir``."""
    rows = list(csv.DictReader(open(ckpt_dir / VAL_PREDICTIONS_FILE, newline="")))
    where = {p.name: p for p in data_dir.rglob("*") if p.is_file()}
    found = [(where[r["file"]], int(r["label"])) for r in rows if r["file"] in where]
    if not found:
        raise SystemExit(f"none of the {len(rows)} validation images of {ckpt_dir} is under {data_dir}")
    return [p for p, _ in found], np.array([y for _, y in found])


def network_inputs(card: ModelCard, paths: Sequence[Path], chunk: int = 64) -> np.ndarray:
    """The network inputs (N, C, S, S) of image files as the product preprocesses them, decoded a chunk at
    a time (no list of full-size images held)."""
    from engine.decode import read_image
    prep = card.preprocessing
    out = np.empty((len(paths), prep.in_channels, prep.image_size, prep.image_size), np.float32)
    for i in range(0, len(paths), chunk):
        part = paths[i:i + chunk]
        out[i:i + len(part)] = prep.normalize_np(np.stack([prep.resize(read_image(p).pixels) for p in part]))
    return out


def batched(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, size: int = 64) -> np.ndarray:
    """``fn`` over ``x`` in batches of ``size``, the results concatenated."""
    return np.concatenate([fn(x[i:i + size]) for i in range(0, len(x), size)])


def torch_logits(model, x: np.ndarray) -> np.ndarray:
    """A torch network's logits for ``x`` (inference mode, batches of 64)."""
    import torch
    with torch.inference_mode():
        return batched(lambda b: model(torch.from_numpy(b)).numpy(), x)


def _excluded_nodes(model) -> list[str]:
    """Convolutions kept in float (by their weights' names): CBAM's attention, the stem and layers 1-3.

    Measured on the shipped model's 782 validation images (AMD EPYC, AVX512-VNNI): quantising layers
    2-4 gave a 1.7x faster network but a largest probability difference of 0.058 against float32 (the
    gate allows 0.02; the card's temperature 0.43 magnifies logit errors); layers 3-4, 0.025; layer4
    alone, 0.008 with no flag changed, at 1.17x."""
    def keep_float(weight: str) -> bool:
        weight = weight.removeprefix("net.")   # the export wraps the network (WithFeatures) as ``net``
        return ".attn." in weight or weight.startswith(("conv1.", "layer1.", "layer2.", "layer3."))
    return [n.name for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 1 and keep_float(n.input[1])]


def _attention_only(model) -> list[str]:
    """Convolutions kept in float by the quantization-aware graph: CBAM's attention alone."""
    return [n.name for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 1
            and ".attn." in f".{n.input[1].removeprefix('net.')}"]


def conv_nodes(fp32: Path) -> list[tuple[str, str]]:
    """(node name, weight name) of every convolution of an exported graph, in graph order."""
    import onnx
    graph = onnx.load(str(fp32), load_external_data=False)
    return [(n.name, n.input[1].removeprefix("net.")) for n in graph.graph.node
            if n.op_type == "Conv" and len(n.input) > 1]


def quantize(fp32: Path, out: Path, calibration: np.ndarray, batch: int = 16, *,
             whole: bool = False) -> None:
    """``whole``: every convolution but CBAM's attention in INT8, with 7-bit weights (ONNX Runtime's
    ``reduce_range``: u8 x s7 products cannot saturate the 16-bit sums of AVX2 without VNNI, so every
    x86 CPU computes the same integers); else the cache recipe (:data:`RECIPE`)."""
    import onnx
    graph = onnx.load(str(fp32), load_external_data=False)
    excluded = _attention_only(graph) if whole else _excluded_nodes(graph)
    quantize_except(fp32, out, calibration, excluded, batch, reduce_range=whole)


def quantize_except(fp32: Path, out: Path, calibration: np.ndarray, keep_float: Sequence[str], batch: int = 16,
                    *, reduce_range: bool = True, method: str = "minmax") -> None:
    """Every convolution in INT8 (QDQ, per-channel weights, uint8 activations) but the nodes named in
    ``keep_float``; activation ranges by ``method`` ("minmax", "percentile" or "entropy")."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    batch = max(1, min(batch, len(calibration)))   # equal batches: the calibrator stacks them
    batches = [calibration[i:i + batch] for i in range(0, len(calibration) - batch + 1, batch)]
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter({"input": b} for b in batches)

        def get_next(self):
            return next(self.it, None)

    def write(tmp: str) -> None:
        quantize_static(str(fp32), tmp, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method], op_types_to_quantize=["Conv"],
                        nodes_to_exclude=list(keep_float))
    artefacts.atomic_write(out, write)


def agreement(p_ref: np.ndarray, p_new: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    from engine.evaluation import metrics
    both = len(set(labels.tolist())) == 2
    auc_ref = metrics.roc_auc(labels, p_ref) if both else float("nan")
    auc_new = metrics.roc_auc(labels, p_new) if both else float("nan")
    return {"n": int(len(p_ref)), "max_probability_difference": float(np.abs(p_new - p_ref).max()),
            "auc_float32": auc_ref, "auc": auc_new, "auc_difference": abs(auc_new - auc_ref),
            "flag_agreement": float(np.mean(flag_rule(p_new, threshold) == flag_rule(p_ref, threshold))),
            "flags_changed": int(np.sum(flag_rule(p_new, threshold) != flag_rule(p_ref, threshold)))}


def passes(a: dict) -> bool:
    return (a["max_probability_difference"] <= GATE["max_probability_difference"]
            and a["auc_difference"] <= GATE["auc_difference"] and a["flag_agreement"] >= GATE["flag_agreement"])


def build(ckpt_dir: Path, paths: Sequence[Path], labels: np.ndarray, every: int = 4) -> dict:
    """Quantize, compare with torch float32 on every image, write the graph and the report."""
    from engine.inference.backends.ort import OrtRunner
    from engine.model.checkpoint import load_checkpoint
    from engine.model.probability import positive_probability
    card = read_card(ckpt_dir)
    folder = artefacts.artefact_dir(ckpt_dir, card)
    x = network_inputs(card, paths)
    calib = np.arange(0, len(x), every)
    t = time.perf_counter()
    quantize(artefacts.onnx_path(ckpt_dir, card), folder / artefacts.INT8_FILE, x[calib])
    seconds = time.perf_counter() - t
    model, _ = load_checkpoint(ckpt_dir)
    ref = torch_logits(model, x)
    runner = OrtRunner(folder / artefacts.INT8_FILE, "onnx-int8")
    new = batched(runner.logits_np, x)
    prob = lambda z: positive_probability(z, card.temperature, card.positive_index)
    held = np.setdiff1d(np.arange(len(x)), calib)
    a_all = agreement(prob(ref), prob(new), labels, card.threshold)
    report = {"passed": passes(a_all), "gate": GATE, "recipe": RECIPE, "threshold": card.threshold,
              "all_validation": a_all,
              "held_out": (agreement(prob(ref)[held], prob(new)[held], labels[held], card.threshold)
                           if held.size else None),   # the images not used for calibration
              "calibration_images": int(len(calib)), "quantize_seconds": round(seconds, 1),
              "cpu": cpu_info().summary(), "weights_sha256": artefacts.weights_sha256(ckpt_dir)}
    artefacts.write_json(folder / artefacts.INT8_REPORT, report)
    return report


QAT_RECIPE = ("QDQ, per-channel 7-bit symmetric weights, uint8 activations, MinMax calibration on training "
              "images; every convolution in INT8 but CBAM's attention")


def gate_sets(ckpt_dir: Path, data_dir: Path, dev_dir: Optional[Path]) -> dict[str, tuple[list[Path], np.ndarray]]:
    """The images the gate compares on: the checkpoint's validation images, and the dev half of the
    official test split when given (its class folders NORMAL and PNEUMONIA)."""
    sets = {"validation": validation_files(ckpt_dir, data_dir)}
    if dev_dir is not None:
        found = [(p, int(p.parent.name.upper() == "PNEUMONIA")) for p in sorted(dev_dir.rglob("*"))
                 if p.suffix.lower() in {".jpeg", ".jpg", ".png"} and p.parent.name.upper() in {"NORMAL", "PNEUMONIA"}]
        if found:
            sets["kermany-test-dev"] = ([p for p, _ in found], np.array([y for _, y in found]))
    return sets


def build_from_module(ckpt_dir: Path, folded, calibration: np.ndarray, recipe: dict,
                      gate_sets: dict[str, tuple[list[Path], np.ndarray]]) -> dict:
    """Quantise a (fine-tuned) folded network into the checkpoint's own ``model.int8.onnx``, gate it
    against the checkpoint's float32 network on every image of every gate set, write the report
    beside it and record the gate in the card (``int8``)."""
    import tempfile
    card = read_card(ckpt_dir)
    out = Path(ckpt_dir) / artefacts.INT8_FILE
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = artefacts.export_module(folded, card, Path(tmp) / "qat.onnx")
        t = time.perf_counter()
        quantize(fp32, out, calibration, whole=True)
        seconds = time.perf_counter() - t
    return gate_into_checkpoint(ckpt_dir, QAT_RECIPE, gate_sets, {"training": recipe},
                                calibration_images=len(calibration), quantize_seconds=seconds)


def build_selected(ckpt_dir: Path, int8_weights: Sequence[str], gate_sets: dict[str, tuple[list[Path], np.ndarray]],
                   calibration_images: int = 64, method: str = "minmax") -> dict:
    """The checkpoint's exported graph with the convolutions named by their weights (e.g. ``layer4.0.conv2.weight``,
    as ``benchmarks/int8_sensitivity.py`` chose them) in INT8 and the rest in float, calibrated on evenly
    spaced validation images, gated on every image of every gate set, written into the checkpoint."""
    card = read_card(ckpt_dir)
    convs = conv_nodes(artefacts.onnx_path(ckpt_dir, card))
    unknown = sorted(set(int8_weights) - {w for _, w in convs})
    if unknown:
        raise SystemExit(f"--convs: no convolution with weights {', '.join(unknown)} in this network")
    paths = gate_sets["validation"][0]
    every = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), calibration_images)).round().astype(int))
    calibration = network_inputs(card, [paths[i] for i in every])
    keep = [name for name, weight in convs if weight not in set(int8_weights)]
    t = time.perf_counter()
    quantize_except(artefacts.onnx_path(ckpt_dir, card), Path(ckpt_dir) / artefacts.INT8_FILE, calibration, keep,
                    method=method)
    recipe = (f"QDQ, per-channel 7-bit symmetric weights, uint8 activations, {method} calibration on "
              f"{len(calibration)} validation images; INT8: {len(int8_weights)} convolutions chosen least "
              f"sensitive first ({', '.join(w.removesuffix('.weight') for w in int8_weights)}); float: the "
              "rest and CBAM's attention")
    return gate_into_checkpoint(ckpt_dir, recipe, gate_sets, {"int8_convolutions": list(int8_weights)},
                                calibration_images=len(calibration), quantize_seconds=time.perf_counter() - t)


def gate_into_checkpoint(ckpt_dir: Path, recipe: str, gate_sets: dict[str, tuple[list[Path], np.ndarray]],
                         extra: dict, *, calibration_images: int, quantize_seconds: float) -> dict:
    """Gate the checkpoint's own ``model.int8.onnx`` against its float32 network on every image of every
    gate set; write the report beside it and record the gate in the card (``int8``)."""
    from engine.inference.backends.ort import OrtRunner
    from engine.model.checkpoint import CARD_FILE, load_checkpoint
    from engine.model.probability import positive_probability
    card = read_card(ckpt_dir)
    out = Path(ckpt_dir) / artefacts.INT8_FILE
    model, _ = load_checkpoint(ckpt_dir)
    runner = OrtRunner(out, "onnx-int8")
    prob = lambda z: positive_probability(z, card.temperature, card.positive_index)
    figures = {}
    for name, (paths, labels) in gate_sets.items():
        x = network_inputs(card, paths)
        figures[name] = agreement(prob(torch_logits(model, x)), prob(batched(runner.logits_np, x)), labels,
                                  card.threshold)
    report = {"passed": all(passes(a) for a in figures.values()), "gate": GATE, "recipe": recipe, **extra,
              "threshold": card.threshold, "sets": figures, "calibration_images": int(calibration_images),
              "quantize_seconds": round(quantize_seconds, 1), "cpu": cpu_info().summary(),
              "weights_sha256": artefacts.weights_sha256(ckpt_dir), "graph_sha256": artefacts.file_sha256(out)}
    artefacts.write_json(Path(ckpt_dir) / artefacts.INT8_REPORT, report)
    card_path = Path(ckpt_dir) / CARD_FILE
    raw = json.loads(card_path.read_text())
    raw["int8"] = {"file": artefacts.INT8_FILE, "report": artefacts.INT8_REPORT, "passed": report["passed"],
                   "recipe": recipe, "gate": GATE, "graph_sha256": report["graph_sha256"],
                   "max_probability_difference": {k: round(v["max_probability_difference"], 4)
                                                  for k, v in figures.items()},
                   "flags_changed": {k: v["flags_changed"] for k, v in figures.items()}}
    card_path.write_text(json.dumps(raw, indent=2) + "\n")
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.inference.backends.int8", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--data-dir", type=Path, required=True, help="where the validation images are (searched)")
    ap.add_argument("--calibration-every", type=int, default=4)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N validation images")
    ap.add_argument("--convs", default="", metavar="W1,W2,...",
                    help="build into the checkpoint itself, with these convolutions (by weight name, as "
                         "benchmarks/int8_sensitivity.py chose them) in INT8 and the rest in float")
    ap.add_argument("--dev-dir", type=Path, help="with --convs: also gate on these NORMAL/PNEUMONIA images")
    args = ap.parse_args(argv)
    if args.convs:
        report = build_selected(args.checkpoint, [w.strip() for w in args.convs.split(",") if w.strip()],
                                gate_sets(args.checkpoint, args.data_dir, args.dev_dir))
        print(json.dumps(report, indent=1))
        return 0 if report["passed"] else 1
    paths, labels = validation_files(args.checkpoint, args.data_dir)
    if args.limit:
        paths, labels = paths[:args.limit], labels[:args.limit]
    report = build(args.checkpoint, paths, labels, args.calibration_every)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
