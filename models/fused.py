"""Switch for the training-only fast paths (fused CBAM, GEMM weight gradients).

Modules with a ``fused_training`` attribute (``models.cbam.CBAM``, ``models.conv_gemm.Conv2d``)
compute the same function either way; the switch exists so that benchmarks can time the plain
module-by-module path against them and tests can compare the two.
"""

from __future__ import annotations

from torch import nn


def set_fused_training(model: nn.Module, enabled: bool) -> None:
    """Turn every training fast path inside ``model`` on or off."""
    for module in model.modules():
        if hasattr(module, "fused_training"):
            module.fused_training = enabled
