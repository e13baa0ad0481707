"""On CPUs whose fastest float32 runtime is not known from a measurement here, measure it once.

The choice table (:mod:`engine.backends`) comes from measurements on the CPUs this project had. For
a CPU without native bfloat16 it says ONNX Runtime float32, which beat torch on the AVX2-only EPYC;
OpenVINO's CPU plugin runs the same graph in float32 too, and which of the two is faster depends on
the CPU and the versions installed. So where both are installed, the first prediction on such a CPU
times each on the exported graph (network alone, one batch of :data:`BATCH` after a warm-up,
median of :data:`REPEATS`; a few seconds, once) and OpenVINO is used only when it was at least
:data:`MARGIN` faster. Both run the graph in float32 and agree to about 1e-6, so the choice changes
speed, never results. The timing is kept beside the exported graph, one file per CPU and versions,
and ``python -m engine.backends.measured`` prints (and re-measures with ``--again``) it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from engine import backends
from engine.backends import BackendChoice, artefacts
from engine.checkpoint import DEFAULT_MODEL_DIR, ModelCard, read_card

BATCH = 16
REPEATS = 3
MARGIN = 1.10   # OpenVINO replaces ONNX Runtime only when at least 10% faster (timings on 2 cores are noisy)


def _versions() -> str:
    import onnxruntime
    import openvino
    return f"onnxruntime {onnxruntime.__version__}; openvino {openvino.__version__.split('-')[0]}"


def timing_path(ckpt_dir: str | Path, card: Optional[ModelCard] = None) -> Path:
    """Where this CPU's timing for these weights is kept (the CPU and the runtimes' versions in the name)."""
    key = hashlib.sha256(f"{backends.cpu_info().summary()}|{_versions()}".encode()).hexdigest()[:16]
    return artefacts.artefact_dir(ckpt_dir, card) / f"float32_timing-{key}.json"


def measure(ckpt_dir: str | Path, card: Optional[ModelCard] = None) -> dict:
    """Time ONNX Runtime and OpenVINO, both float32, on the exported graph; write and return the record."""
    from engine.backends.ort import OrtRunner
    from engine.backends.ov import OpenVinoRunner
    card = card or read_card(ckpt_dir)
    graph = artefacts.onnx_path(ckpt_dir, card)
    p = card.preprocessing
    x = np.random.default_rng(0).standard_normal((BATCH, p.in_channels, p.image_size, p.image_size)).astype(np.float32)
    runners = {"onnx": OrtRunner(graph),
               "openvino": OpenVinoRunner(graph, bfloat16=False, cache_dir=graph.parent / "openvino")}
    rates = {}
    for name, runner in runners.items():
        runner.logits_np(x)   # warm-up: first-call allocations and kernel selection
        seconds = []
        for _ in range(REPEATS):
            t = time.perf_counter()
            runner.logits_np(x)
            seconds.append(time.perf_counter() - t)
        rates[name] = BATCH / statistics.median(seconds)
    faster = "openvino" if rates["openvino"] >= MARGIN * rates["onnx"] else "onnx"
    record = {"cpu": backends.cpu_info().summary(), "versions": _versions(), "batch": BATCH, "repeats": REPEATS,
              "images_per_second": {k: round(v, 1) for k, v in rates.items()}, "margin": MARGIN,
              "choice": faster, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    artefacts.write_json(timing_path(ckpt_dir, card), record)
    return record


def recorded(ckpt_dir: str | Path, card: Optional[ModelCard] = None) -> Optional[dict]:
    path = timing_path(ckpt_dir, card)
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def float32_choice(ckpt_dir: str | Path, card: ModelCard, default: BackendChoice) -> BackendChoice:
    """``default`` (ONNX Runtime float32), or OpenVINO float32 where it measured faster on this CPU."""
    if not (backends.openvino_available() and backends.onnxruntime_available()):
        return default
    record = recorded(ckpt_dir, card)
    if record is None:
        record = measure(ckpt_dir, card)
    rates = record["images_per_second"]
    figures = (f"OpenVINO float32 {rates['openvino']:.0f} img/s, ONNX Runtime float32 {rates['onnx']:.0f} "
               f"img/s for the network alone, measured here on {record['measured'][:10]}")
    if record["choice"] == "openvino":
        return BackendChoice("openvino", f"no native bfloat16 ({backends.cpu_info().kind}); {figures}")
    return BackendChoice(default.name, f"{default.reason}; {figures}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.backends.measured", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--again", action="store_true", help="measure again, replacing the record")
    args = ap.parse_args(argv)
    if not (backends.openvino_available() and backends.onnxruntime_available()):
        print("needs both onnxruntime and openvino", file=sys.stderr)
        return 2
    record = None if args.again else recorded(args.checkpoint)
    print(json.dumps(record or measure(args.checkpoint), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
