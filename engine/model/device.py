"""The one device and precision policy that training and inference share.

CUDA with float16 autocast (AMP), channels_last and cuDNN autotuning when a GPU is present;
bfloat16 autocast with channels_last on a CPU with native bfloat16 matrix support (AVX512-BF16 or
AMX, detected, not assumed); float32 otherwise. ``CXR_PRECISION=float32`` forces the plain path.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from functools import lru_cache

import torch
from engine.settings import settings


@dataclass(frozen=True)
class DevicePolicy:
    device: torch.device
    autocast_dtype: torch.dtype | None   # None: run in float32
    channels_last: bool
    # Set when predictions run on another backend (ONNX Runtime); this policy then serves torch's
    # work only (Grad-CAM), and the label says both.
    inference: str = ""

    @property
    def label(self) -> str:
        """A short human description, e.g. ``cpu, bfloat16 autocast, channels_last``."""
        prec = {None: "float32", torch.bfloat16: "bfloat16 autocast",
                torch.float16: "float16 autocast (AMP)"}[self.autocast_dtype]
        torch_label = f"{self.device.type}, {prec}" + (", channels_last" if self.channels_last else "")
        if self.inference:
            return f"{self.device.type}, {self.inference} (Grad-CAM: torch {torch_label.split(', ', 1)[1]})"
        return torch_label

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bfloat16 matrix instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    if " avx512_bf16" in flags or " amx_bf16" in flags:
        return True
    if flags:
        # The flags were read and name neither: oneDNN's own check below says True on any AVX-512 CPU
        # (it *emulates* bfloat16 there, about 10x slower than float32: an Ice Lake Xeon trained at 5 img/s).
        return False
    try:  # other platforms (no /proc/cpuinfo): ask oneDNN through torch
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def plain_policy(device: str = "cpu") -> DevicePolicy:
    """float32, eager, contiguous: the baseline the benchmarks compare against."""
    return DevicePolicy(torch.device(device), None, False)


def select_policy(prefer: str | None = None) -> DevicePolicy:
    """Pick the fastest safe policy for this machine (``prefer`` or $CXR_PRECISION can force float32)."""
    prefer = (prefer or settings().precision or "auto").lower()
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        if prefer == "float32":
            return DevicePolicy(torch.device("cuda"), None, True)
        return DevicePolicy(torch.device("cuda"), torch.float16, True)
    if prefer == "float32" or not cpu_supports_bf16():
        return plain_policy("cpu") if prefer == "float32" else DevicePolicy(torch.device("cpu"), None, True)
    return DevicePolicy(torch.device("cpu"), torch.bfloat16, True)


def hardware_summary(policy: DevicePolicy | None = None) -> dict:
    """CPU/GPU model, core count and library versions, for model cards and benchmark reports."""
    import platform
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "cpu_bf16": cpu_supports_bf16(), "gpu": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    if policy is not None:
        info["policy"] = policy.label
    return info
