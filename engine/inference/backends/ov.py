"""The OpenVINO backend: the checkpoint's exported graph on the CPU in bfloat16 where the CPU has
native bfloat16 (AVX512-BF16 or AMX), float32 elsewhere, without importing torch.

ONNX Runtime's CPU provider has no bfloat16 convolutions, so on a CPU with AVX512-BF16 and no AMX
(the AMD EPYC here) it runs float32 while OpenVINO's CPU plugin runs oneDNN's bfloat16 kernels on the
same graph: 235 img/s against 121 for the network alone (batch 32, 2 cores). Measured against float32
on the shipped model's 782 validation images there: AUC unchanged (0.99732), 2 of 782 flags at the
card's threshold changed (99.74% agreement), largest probability difference 0.023, closer to float32
than torch's bfloat16 autocast on the same images (0.036, 2 flags). See README, "Speed".

The compiled network is cached beside the exported graph (OpenVINO's ``CACHE_DIR``), so later starts
skip compilation. One infer request serves the process; calls are serialised (OpenVINO's requests
are not thread-safe, and one request already uses every core it is given).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import numpy as np
from engine.settings import settings


class OpenVinoRunner:
    """Every output of the exported graph by name, from OpenVINO's CPU plugin."""

    name = "openvino"

    def __init__(self, path: str | Path, *, bfloat16: bool, cache_dir: Optional[Path] = None,
                 threads: int = 0) -> None:
        import openvino as ov
        self.path = Path(path)
        self.bfloat16 = bfloat16
        self.version = ov.__version__.split("-")[0]
        core = ov.Core()
        if cache_dir is not None:
            core.set_property({"CACHE_DIR": str(cache_dir)})
        config = {"INFERENCE_PRECISION_HINT": "bf16" if bfloat16 else "f32",
                  # one request, lowest latency: the batch is the parallelism (THROUGHPUT's streams
                  # need several requests in flight and ran at half the speed with one)
                  "PERFORMANCE_HINT": "LATENCY"}
        threads = threads or settings().ov_threads
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = core.compile_model(str(self.path), "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._outputs = [(o.get_any_name(), o) for o in self._compiled.outputs]
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        return f"OpenVINO {self.version} {'bfloat16' if self.bfloat16 else 'float32'}"

    def logits_np(self, batch: np.ndarray) -> np.ndarray:
        return self.run_all(batch)["logits"]

    def outputs_np(self, batch: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        out = self.run_all(batch)
        return out["logits"], out.get("features")

    def run_all(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:
            result = self._request.infer({0: x})
            return {name: np.array(result[port], dtype=np.float32) for name, port in self._outputs}
