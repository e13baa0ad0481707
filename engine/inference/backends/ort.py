"""The ONNX Runtime backend: the checkpoint's exported graph on the CPU, without importing torch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from engine.settings import settings


class OrtRunner:
    """Logits from an ONNX graph (float32 or INT8) with ONNX Runtime's CPU execution provider."""

    def __init__(self, path: str | Path, name: str = "onnx", threads: int = 0) -> None:
        import onnxruntime as ort
        self.name = name
        self.path = Path(path)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = threads or settings().ort_threads
        if threads:
            so.intra_op_num_threads = threads
        # Idle ONNX Runtime threads spin by default; the decoding workers need those cores.
        so.add_session_config_entry("session.intra_op.allow_spinning",
                                    "1" if settings().ort_spin else "0")
        self.session = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.version = ort.__version__

    @property
    def label(self) -> str:
        kind = "INT8 (static, QDQ)" if self.name == "onnx-int8" else "float32"
        return f"ONNX Runtime {self.version} {kind}"

    def logits_np(self, batch: np.ndarray) -> np.ndarray:
        return self.outputs_np(batch)[0]

    def outputs_np(self, batch: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Logits and, when the graph has them (exports from version 2 on), the penultimate features."""
        out = self.run_all(batch)
        return out["logits"], out.get("features")

    def run_all(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the graph by name: logits, features and (ResNets, export v3) stage_input."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        names = [o.name for o in self.session.get_outputs()]
        out = self.session.run(None, {self.input_name: x})
        return {n: v.astype(np.float32, copy=False) for n, v in zip(names, out)}
