"""Which convolutions can run in INT8 and keep the gate (issue 23): per-convolution sensitivity, then the
largest set, least sensitive first, that passes.

    PYTHONPATH=. python benchmarks/int8_sensitivity.py --data-dir ../shared/data/kermany224 \\
        --dev-dir ../shared/data/kermany-test-dev [--images 256] [--out FILE.json]

Every graph is ONNX Runtime's static QDQ quantization of the checkpoint's exported float32 graph
(per-channel 7-bit weights, so that AVX2 without VNNI computes the same integers as this CPU; uint8
activations calibrated on the checkpoint's validation images only), compared with torch float32 on
``--images`` images of the validation split and of the dev half each. The steps:

1. the whole network (CBAM's attention always in float) under each calibration method;
2. each of the 20 ResNet convolutions alone in INT8, with the best method of step 1;
3. convolutions added least sensitive first, each kept only if the set still passes the gate with a
   margin (largest probability difference at most ``--margin`` times 0.02), else left in float;
4. the chosen graph timed against float32 on this CPU (ONNX Runtime, one batch of 32, best of 5).

What this cannot show: the speed on another CPU. ONNX Runtime picks its INT8 kernels by the CPU's
instructions (VNNI, AVX512 or AVX2) and has no switch to cap them; the share of multiply-adds in INT8
(printed) is what carries over. The probabilities do carry over: 7-bit weights make the integer
results the same on every x86 kernel.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from engine.inference.backends import artefacts, cpu_info, int8
from engine.inference.backends.ort import OrtRunner
from engine.model.checkpoint import DEFAULT_MODEL_DIR, load_checkpoint, read_card
from engine.model.probability import positive_probability

_STAGE_SIDE = {"conv1": 112, "layer1": 56, "layer2": 28, "layer3": 14, "layer4": 7}


def _macs(weight_name: str, shape: Sequence[int]) -> int:
    side = _STAGE_SIDE[weight_name.split(".")[0]]
    return int(np.prod(shape)) * side * side


def _evenly(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))


class Trial:
    """Quantise with a given set of convolutions in INT8 and compare with float32 on the gate images."""

    def __init__(self, fp32: Path, calibration: np.ndarray, sets: dict, ref: dict, card, convs) -> None:
        self.fp32, self.calibration, self.sets, self.ref, self.card = fp32, calibration, sets, ref, card
        self.all_convs = convs
        self.tmp = Path(tempfile.mkdtemp(prefix="int8-sens-"))
        self.count = 0

    def prob(self, z: np.ndarray) -> np.ndarray:
        return positive_probability(z, self.card.temperature, self.card.positive_index)

    def graph(self, int8_nodes: set[str], method: str) -> Path:
        self.count += 1
        out = self.tmp / f"g{self.count}.onnx"
        keep = [name for name, _ in self.all_convs if name not in int8_nodes]
        int8.quantize_except(self.fp32, out, self.calibration, keep, method=method)
        return out

    def __call__(self, int8_nodes: set[str], method: str = "minmax") -> dict:
        path = self.graph(int8_nodes, method)
        runner = OrtRunner(path, "onnx-int8")
        figures = {}
        for name, (x, labels) in self.sets.items():
            new = self.prob(int8.batched(runner.logits_np, x))
            figures[name] = int8.agreement(self.ref[name], new, labels, self.card.threshold)
        path.unlink(missing_ok=True)
        worst = max(a["max_probability_difference"] for a in figures.values())
        return {"max_probability_difference": worst, "passes": all(int8.passes(a) for a in figures.values()),
                "flags_changed": sum(a["flags_changed"] for a in figures.values()),
                "auc_difference": max(a["auc_difference"] for a in figures.values()), "sets": figures}


def _time(path: Path, x: np.ndarray) -> float:
    runner = OrtRunner(path, "timing")
    runner.logits_np(x)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        runner.logits_np(x)
        best = min(best, time.perf_counter() - t)
    return len(x) / best


def _steps_1_and_2(trial: Trial, main_convs, macs: dict, methods: Sequence[str], report: dict
                   ) -> tuple[str, dict[str, float]]:
    """The whole network under each calibration method, then each convolution alone with the best one."""
    whole = {n for n, _ in main_convs}
    report["whole"] = {}
    for method in methods:
        r = trial(whole, method)
        report["whole"][method] = {k: r[k] for k in ("max_probability_difference", "flags_changed", "auc_difference")}
        print(f"whole network, {method}: largest difference {r['max_probability_difference']:.4f}, "
              f"{r['flags_changed']} flags changed")
    method = min(report["whole"], key=lambda m: report["whole"][m]["max_probability_difference"])
    single = {}
    for name, weight in main_convs:
        single[name] = trial({name}, method)["max_probability_difference"]
        print(f"  {weight:32s} alone: {single[name]:.4f}  ({macs[name] / 1e6:.0f} M multiply-adds)")
    return method, single


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--dev-dir", type=Path)
    ap.add_argument("--images", type=int, default=256, help="gate images per set, evenly spaced (0: all)")
    ap.add_argument("--order-from", type=Path, help="take steps 1-2 (method, each convolution alone) from a report")
    ap.add_argument("--calibration", type=int, default=64, help="validation images that calibrate")
    ap.add_argument("--margin", type=float, default=0.75, help="search target: this share of the gate's 0.02")
    ap.add_argument("--methods", default="minmax,percentile,entropy")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    print(f"CPU: {cpu_info().summary()}")
    card = read_card(args.checkpoint)
    model, _ = load_checkpoint(args.checkpoint)
    fp32 = artefacts.onnx_path(args.checkpoint, card)
    import onnx
    weights = {t.name.removeprefix("net."): list(t.dims)
               for t in onnx.load(str(fp32), load_external_data=False).graph.initializer}
    convs = int8.conv_nodes(fp32)
    main_convs = [(n, w) for n, w in convs if ".attn." not in f".{w}"]
    macs = {n: _macs(w, weights[w]) for n, w in main_convs}
    sets, ref = {}, {}
    for name, (paths, labels) in int8.gate_sets(args.checkpoint, args.data_dir, args.dev_dir).items():
        keep = _evenly(len(paths), args.images or len(paths))
        x = int8.network_inputs(card, [paths[i] for i in keep])
        sets[name] = (x, labels[keep])
        ref[name] = positive_probability(int8.torch_logits(model, x), card.temperature, card.positive_index)
    val_x = sets["validation"][0]
    calibration = val_x[_evenly(len(val_x), args.calibration)]
    trial = Trial(fp32, calibration, sets, ref, card, convs)
    report: dict = {"cpu": cpu_info().summary(), "images": {k: len(v[1]) for k, v in sets.items()},
                    "calibration_images": len(calibration), "gate": int8.GATE}

    names = dict(main_convs)
    by_weight = {w: n for n, w in main_convs}
    if args.order_from:                      # steps 1 and 2 as an earlier run measured them
        earlier = json.loads(args.order_from.read_text())
        method, report["whole"] = earlier["method"], earlier["whole"]
        single = {by_weight[w]: d for w, d in earlier["single"].items()}
        print(f"steps 1-2 from {args.order_from}: method {method}")
    else:
        method, single = _steps_1_and_2(trial, main_convs, macs, args.methods.split(","), report)
    report["single"] = {names[n]: round(single[n], 5) for n in single}

    target = args.margin * int8.GATE["max_probability_difference"]
    chosen, best = [], None
    for name in sorted(single, key=single.get):   # least sensitive first; one that breaks the target is skipped
        r = trial(set(chosen) | {name}, method)
        ok = r["passes"] and r["max_probability_difference"] <= target
        print(f"  + {names[name]:32s} {r['max_probability_difference']:.4f}, {r['flags_changed']} flags changed: "
              f"{'kept' if ok else 'left in float'}")
        if ok:
            chosen.append(name)
            best = (len(chosen), r)
    total = sum(macs.values())
    share = sum(macs[n] for n in chosen) / total
    report["method"] = method
    report["chosen_int8"] = [names[n] for n in chosen]
    report["int8_share_of_multiply_adds"] = round(share, 3)
    if best:
        report["chosen_figures"] = best[1]["sets"]
        path = trial.graph(set(chosen), method)
        x = sets["validation"][0][:32]
        report["images_per_s_float32"] = round(_time(fp32, x), 1)
        report["images_per_s_int8"] = round(_time(path, x), 1)
    print(f"chosen: {len(chosen)} of {len(main_convs)} convolutions in INT8 ({share:.0%} of multiply-adds), "
          f"method {method}")
    if best:
        print(f"network alone on this CPU, batch 32: float32 {report['images_per_s_float32']} img/s, "
              f"INT8 {report['images_per_s_int8']} img/s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
