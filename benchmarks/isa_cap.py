"""The network alone with oneDNN capped to a lower instruction set: an emulation, not a measurement.

    PYTHONPATH=. python benchmarks/isa_cap.py [--isa AVX2] [--repeats 5]

For a CPU kind that no machine here has (the AVX2-only AMD EPYC), this runs the shipped network
(batch 32, both cores, after a warm-up, median of ``--repeats``) on torch float32 (BatchNorm folded,
channels_last), OpenVINO float32 and OpenVINO on the checkpoint's INT8 graph (its QDQ nodes run as
OpenVINO's low-precision convolutions), each in a fresh process, uncapped and then with
``ONEDNN_MAX_CPU_ISA`` (torch's oneDNN and OpenVINO's) and ``ATEN_CPU_CAPABILITY`` capped. ONNX
Runtime's kernels cannot be capped, and OpenVINO's own kernels outside oneDNN are capped only in
its debug builds, so the capped figures suggest which backend may win on such a CPU; they do not
say how fast that CPU is. Prints the CPU it ran on.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def time_network(backend: str, repeats: int) -> float:
    """Images per second for one batch of 32 through ``backend`` ("torch" or "openvino"), float32."""
    import numpy as np

    from engine.inference.backends import artefacts
    from engine.inference.backends.measured import images_per_second
    from engine.model.checkpoint import DEFAULT_MODEL_DIR, read_card
    x = np.random.default_rng(0).standard_normal((32, 1, 224, 224)).astype(np.float32)
    if backend.startswith("openvino"):
        from engine.inference.backends import int8
        from engine.inference.backends.ov import OpenVinoRunner
        card = read_card(DEFAULT_MODEL_DIR)
        graph = int8.int8_path(DEFAULT_MODEL_DIR, card) if backend == "openvino-int8" else \
            artefacts.onnx_path(DEFAULT_MODEL_DIR, card)
        runner = OpenVinoRunner(graph, bfloat16=False)
    else:
        os.environ["CXR_PRECISION"] = "float32"
        from engine.inference.predictor import Predictor
        runner = Predictor.from_checkpoint(backend="torch").runner
    return images_per_second(runner, x, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--isa", default="AVX2", help="oneDNN's name for the cap (AVX2, AVX512_CORE, ...)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(f"{time_network(args.child, args.repeats):.1f}")
        return
    from engine.inference.backends import cpu_info
    print(f"CPU: {cpu_info().summary()}")
    print(f"network alone, float32, batch 32, median of {args.repeats}; capped: ONEDNN_MAX_CPU_ISA={args.isa}")
    capped_env = {"ONEDNN_MAX_CPU_ISA": args.isa, "DNNL_MAX_CPU_ISA": args.isa,
                  "ATEN_CPU_CAPABILITY": args.isa.lower() if args.isa.upper() == "AVX2" else "default"}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    figures = {}
    for backend in ("torch", "openvino", "openvino-int8"):
        for label, extra in (("uncapped", {}), ("capped", capped_env)):
            out = subprocess.run([sys.executable, __file__, "--child", backend, "--repeats", str(args.repeats)],
                                 env={**env, **extra}, capture_output=True, text=True, check=True)
            figures[backend, label] = float(out.stdout.strip().splitlines()[-1])
            print(f"  {backend:<9} {label:<9} {figures[backend, label]:7.1f} img/s")
    print(f"OpenVINO / torch: uncapped {figures['openvino', 'uncapped'] / figures['torch', 'uncapped']:.2f}x, "
          f"capped {figures['openvino', 'capped'] / figures['torch', 'capped']:.2f}x")
    print(f"the shipped INT8 graph on OpenVINO / OpenVINO float32: uncapped "
          f"{figures['openvino-int8', 'uncapped'] / figures['openvino', 'uncapped']:.2f}x, capped "
          f"{figures['openvino-int8', 'capped'] / figures['openvino', 'capped']:.2f}x")


if __name__ == "__main__":
    main()
