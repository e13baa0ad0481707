"""Which inference backend runs the network on this machine, and why (this module never imports torch).

The engine has one device and precision policy (:mod:`engine.model.device`); the backend is a choice
inside it, made from what the hardware offers and what was measured on each kind of CPU here
(README, "Speed"):

=========================================  ================================================
machine                                    backend
=========================================  ================================================
an NVIDIA GPU                              ``torch``: CUDA, float16 autocast, channels_last
a CPU with AMX (Intel Xeon, Sapphire       ``torch``: bfloat16, channels_last, BatchNorm
Rapids class)                              folded (oneDNN's AMX kernels; measured 3.3x there)
AVX512-BF16 without AMX (AMD EPYC here)    ``openvino``: OpenVINO bfloat16 on the exported
                                           graph (network alone 1.9x ONNX Runtime float32
                                           here; agreement with float32 in engine.inference.backends.ov)
any other CPU: AVX2 only, AVX-512 without  ``onnx``: ONNX Runtime float32 on the exported
BF16, ...; or OpenVINO not installed       graph (on AVX2, 1.3x torch's best float32 path
                                           for the network alone)
=========================================  ================================================

Two rows were never timed against OpenVINO on their CPUs (the AMX Xeon and the AVX2-only EPYC were
measured with torch and ONNX Runtime only). There, when OpenVINO is installed, the first prediction
times the table's choice against OpenVINO on this CPU and uses OpenVINO only where it was at least
10% faster (:mod:`engine.inference.backends.measured`; kept, so once per CPU and weights). On a CPU
without 8-bit dot products (the AVX2-only row), a checkpoint's own INT8 graph that passed its gate
joins that timing as a third candidate: INT8 halves the multiply-adds' cost there only in theory, and
its quantize/dequantize steps cost time, so it is used only where it measured faster here.

``onnx-int8`` (ONNX Runtime on a statically quantised graph) is chosen only where an INT8
artefact was built for these weights *and* passed its agreement gate against float32 on the
validation images (:mod:`engine.inference.backends.int8`) *and* the CPU has 8-bit dot-product instructions
(VNNI or AMX-INT8) *and* OpenVINO bfloat16 was not chosen before it (where the CPU has native
bfloat16, that is faster than the INT8 graph, which keeps layers 1-3 in float32). ``CXR_BACKEND`` (or ``--backend``) forces one: ``torch``, ``onnx``,
``onnx-int8``, ``openvino`` (bfloat16 where native, else float32) or ``auto``. ``CXR_PRECISION=float32`` keeps its meaning: torch float32.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional
from engine.settings import settings

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")
CHOICES = ("auto",) + BACKENDS

# The flags that decide the backend, printed with every benchmark figure.
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
                  "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    cores: int
    flags: frozenset[str]

    @property
    def native_bf16(self) -> bool:
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def int8_dot(self) -> bool:
        """8-bit dot-product instructions that make INT8 convolutions pay (VNNI or AMX-INT8)."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    @property
    def kind(self) -> str:
        if "amx_bf16" in self.flags:
            return "AMX"
        if "avx512_bf16" in self.flags:
            return "AVX512-BF16 (no AMX)"
        if "avx512f" in self.flags:
            return "AVX-512 (no BF16)"
        if "avx2" in self.flags:
            return "AVX2 (no AVX-512)"
        return "baseline x86/other"

    def summary(self) -> str:
        shown = [f for f in RELEVANT_FLAGS if f in self.flags]
        return f"{self.model} ({self.cores} cores; {self.kind}; flags: {' '.join(shown) or 'none of note'})"


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """The CPU's model name and flags from /proc/cpuinfo (Linux), without importing torch."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return CpuInfo(model, os.cpu_count() or 1, frozenset(flags))


def has_nvidia_gpu() -> bool:
    """An NVIDIA driver is loaded (checked without importing torch)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


@dataclass(frozen=True)
class BackendChoice:
    name: str       # one of BACKENDS
    reason: str
    # Backends never timed against this one on this kind of CPU: :mod:`engine.inference.backends.measured`
    # times them once on first use and keeps the fastest (none: the table's choice stands).
    challengers: tuple[str, ...] = ()


def choose_backend(prefer: Optional[str] = None, *, int8_ready: bool = False) -> BackendChoice:
    """The backend for this machine (``prefer`` or $CXR_BACKEND forces one; see the module doc).

    ``int8_ready``: an INT8 artefact for these weights exists and passed its agreement gate.
    """
    prefer = (prefer or settings().backend or "auto").lower()
    if prefer not in CHOICES:
        raise ValueError(f"unknown backend '{prefer}'; choose one of {', '.join(CHOICES)}")
    if prefer != "auto":
        return BackendChoice(prefer, "asked for (--backend or CXR_BACKEND)")
    if settings().precision.lower() == "float32":
        return BackendChoice("torch", "CXR_PRECISION=float32 asks for the plain torch path")
    cpu = cpu_info()
    if has_nvidia_gpu():
        return BackendChoice("torch", "an NVIDIA GPU is present: torch with CUDA and float16 autocast")
    if "amx_bf16" in cpu.flags:
        return BackendChoice("torch", f"the CPU has AMX ({cpu.kind}): torch bfloat16 + channels_last "
                                      "is the fastest measured path there",
                             ("openvino",) if openvino_available() else ())
    if cpu.native_bf16 and openvino_available():
        return BackendChoice("openvino", f"native bfloat16 without AMX ({cpu.kind}): OpenVINO bfloat16 "
                                         "is the fastest measured path there (and starts without torch)")
    if not onnxruntime_available():
        return BackendChoice("torch", "onnxruntime is not installed: torch" +
                             (" bfloat16" if cpu.native_bf16 else " float32"))
    if int8_ready and cpu.int8_dot:
        return BackendChoice("onnx-int8", f"no AMX, 8-bit dot products ({cpu.kind}) and an INT8 graph "
                                          "that passed its agreement gate")
    # Without 8-bit dot products (AVX2 only) a gated INT8 graph is timed against float32 here: it does
    # half the multiply-adds' work per instruction but pays for its quantize/dequantize steps.
    challengers = (("openvino",) if openvino_available() else ()) + (("onnx-int8",) if int8_ready else ())
    return BackendChoice("onnx", f"no AMX ({cpu.kind}): ONNX Runtime float32 is the fastest measured "
                                 "path there (and starts without torch)", challengers)


def choose_for_checkpoint(ckpt_dir: str | Path, card, prefer: Optional[str] = None) -> BackendChoice:
    """:func:`choose_backend` for one checkpoint: with its INT8 graph's gate and, where the table's
    choice was never timed against OpenVINO on this kind of CPU, the faster of the two as timed here
    once (:mod:`engine.inference.backends.measured`)."""
    from engine.inference.backends import int8, measured
    choice = choose_backend(prefer, int8_ready=int8.ready(ckpt_dir, card))
    if not choice.challengers:
        return choice
    try:
        return measured.timed_choice(ckpt_dir, card, choice)
    except Exception as exc:   # cannot export or time here: keep the table's choice
        log.warning("%s and %s not timed (%s: %s); using %s", choice.name, ", ".join(choice.challengers),
                    type(exc).__name__, exc, choice.name)
        return choice
