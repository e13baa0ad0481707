"""Switch for the training-only fast paths (fused CBAM, GEMM weight gradients).

Modules with a ``fused_training`` attribute (``models.cbam.CBAM``, ``models.conv_gemm.Conv2d``)
compute the same function either way; the switch exists so that benchmarks can time the plain
module-by-module path against them and tests can compare the two.
"""

from __future__ import annotations

import torch
from torch import nn


def set_fused_training(model: nn.Module, enabled: bool) -> None:
    """Turn every training fast path inside ``model`` on or off."""
    for module in model.modules():
        if hasattr(module, "fused_training"):
            module.fused_training = enabled


def fast_path_applies(module: nn.Module) -> bool:
    """True when ``module`` may take its training fast path: switched on, in training mode, with
    gradients recorded, and not being traced by torch.compile (which fuses the plain modules itself)."""
    return (getattr(module, "fused_training", False) and module.training and torch.is_grad_enabled()
            and not torch.compiler.is_compiling())
