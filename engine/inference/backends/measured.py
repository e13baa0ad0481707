"""Where the choice table was never timed against OpenVINO on this kind of CPU, time the two once.

The choice table (:mod:`engine.inference.backends`) comes from measurements on the CPUs this project had. Two
rows were never timed against OpenVINO there: the AMX Xeon (torch bfloat16) and the AVX2-only EPYC
(ONNX Runtime float32). OpenVINO runs the same exported graph, in bfloat16 where the CPU has it
natively and float32 elsewhere, and which is faster depends on the CPU and the versions installed.
So on such a CPU, the first prediction times the table's choice and OpenVINO on the checkpoint's
network (one batch of :data:`BATCH` after a warm-up, median of :data:`REPEATS`; a few seconds, once)
and OpenVINO is used only when it was at least :data:`MARGIN` faster. Both candidates run at the
same precision (float32, or bfloat16 on AMX), so the choice changes speed, not what the model says
beyond that precision's rounding. The record is kept beside the exported graph, one file per CPU,
candidates and versions; ``python -m engine.inference.backends.measured`` prints it (``--again`` re-times).
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

from engine.inference import backends
from engine.inference.backends import BackendChoice, artefacts
from engine.model.checkpoint import DEFAULT_MODEL_DIR, ModelCard, read_card

BATCH = 16
REPEATS = 3
MARGIN = 1.10   # the challenger replaces the table's choice only when at least 10% faster (2 cores are noisy)
LABELS = {"onnx": "ONNX Runtime", "onnx-int8": "ONNX Runtime INT8", "openvino": "OpenVINO", "torch": "torch"}


def _versions(names: Sequence[str]) -> str:
    """The candidates' installed versions, read from their package metadata (importing torch to ask
    would cost the second that OpenVINO saves on AMX)."""
    from importlib.metadata import version
    packages = {"onnx": "onnxruntime", "onnx-int8": "onnxruntime", "openvino": "openvino", "torch": "torch"}
    wanted = dict.fromkeys(packages[n] for n in names)
    return "; ".join(f"{p} {version(p).split('+')[0]}" for p in wanted)


def timing_path(ckpt_dir: str | Path, card: Optional[ModelCard], names: Sequence[str]) -> Path:
    """Where this CPU's timing of ``names`` for these weights is kept (CPU, candidates, versions in the key)."""
    key = hashlib.sha256(f"{backends.cpu_info().summary()}|{_versions(names)}".encode()).hexdigest()[:16]
    return artefacts.artefact_dir(ckpt_dir, card) / f"timing-{'-'.join(names)}-{key}.json"


def _runner(name: str, ckpt_dir: str | Path, card: ModelCard):
    """A runner of the checkpoint's network as the product would build it on this CPU."""
    if name == "torch":
        from engine.inference.backends.torch_backend import TorchRunner
        from engine.model.checkpoint import load_checkpoint
        from engine.model.device import select_policy
        return TorchRunner(load_checkpoint(ckpt_dir)[0], select_policy())
    if name == "onnx-int8":
        from engine.inference.backends import int8
        from engine.inference.backends.ort import OrtRunner
        return OrtRunner(int8.int8_path(ckpt_dir, card), "onnx-int8")
    graph = artefacts.onnx_path(ckpt_dir, card)
    if name == "onnx":
        from engine.inference.backends.ort import OrtRunner
        return OrtRunner(graph)
    from engine.inference.backends.ov import OpenVinoRunner
    return OpenVinoRunner(graph, bfloat16=backends.cpu_info().native_bf16, cache_dir=graph.parent / "openvino")


def images_per_second(runner, batch: np.ndarray, repeats: int = REPEATS) -> float:
    """The network alone: ``batch`` through ``runner`` after a warm-up (first-call allocations and
    kernel selection), the median of ``repeats`` timings."""
    runner.logits_np(batch)
    seconds = []
    for _ in range(repeats):
        t = time.perf_counter()
        runner.logits_np(batch)
        seconds.append(time.perf_counter() - t)
    return len(batch) / statistics.median(seconds)


def measure(ckpt_dir: str | Path, card: ModelCard, names: Sequence[str], *, replace: bool = False) -> dict:
    """Time each of ``names`` (the table's choice first) on the network alone and keep the record;
    returns the kept record: another process's, if it wrote one first (unless ``replace``)."""
    p = card.preprocessing
    x = np.random.default_rng(0).standard_normal((BATCH, p.in_channels, p.image_size, p.image_size)).astype(np.float32)
    rates = {name: images_per_second(_runner(name, ckpt_dir, card), x) for name in names}
    table, fastest = names[0], max(names[1:], key=rates.get)
    record = {"cpu": backends.cpu_info().summary(), "versions": _versions(names), "batch": BATCH,
              "repeats": REPEATS, "images_per_second": {k: round(v, 1) for k, v in rates.items()},
              "margin": MARGIN, "choice": fastest if rates[fastest] >= MARGIN * rates[table] else table,
              "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = timing_path(ckpt_dir, card, names)
    if replace:
        artefacts.write_json(path, record)
        return record
    return artefacts.write_json_once(path, record)


def recorded(ckpt_dir: str | Path, card: Optional[ModelCard], names: Sequence[str]) -> Optional[dict]:
    path = timing_path(ckpt_dir, card, names)
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def timed_choice(ckpt_dir: str | Path, card: ModelCard, table: BackendChoice) -> BackendChoice:
    """The table's choice, or the fastest challenger where that timed at least 10% faster on this CPU."""
    if not table.challengers:
        return table
    names = (table.name, *table.challengers)
    record = recorded(ckpt_dir, card, names) or measure(ckpt_dir, card, names)
    rates = record["images_per_second"]
    figures = (", ".join(f"{LABELS[n]} {rates[n]:.0f} img/s" for n in names) +
               f" for the network alone, timed here on {record['measured'][:10]}")
    if record["choice"] != table.name:
        return BackendChoice(record["choice"], f"{backends.cpu_info().kind}: {figures}")
    return BackendChoice(table.name, f"{table.reason}; {figures}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.inference.backends.measured", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--candidates", default="",
                    help="backends to time, the table's first (default: this CPU's, e.g. onnx,openvino,onnx-int8)")
    ap.add_argument("--again", action="store_true", help="time again, replacing the record")
    args = ap.parse_args(argv)
    card = read_card(args.checkpoint)
    if args.candidates:
        names = tuple(args.candidates.split(","))
    else:
        from engine.inference.backends import int8
        table = backends.choose_backend(int8_ready=int8.ready(args.checkpoint, card))
        if not table.challengers:
            print(f"nothing to time here: {table.name} ({table.reason})", file=sys.stderr)
            return 0
        names = (table.name, *table.challengers)
    if len(names) < 2 or len(set(names)) != len(names) or not set(names) <= set(LABELS):
        print(f"error: --candidates takes two or more of {', '.join(LABELS)}", file=sys.stderr)
        return 2
    record = None if args.again else recorded(args.checkpoint, card, names)
    print(json.dumps(record or measure(args.checkpoint, card, names, replace=args.again), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
