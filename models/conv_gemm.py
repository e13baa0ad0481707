"""A Conv2d whose weight gradient is one matrix product when its output map is small (CPU training).

oneDNN computes a convolution's weight gradient by reducing over batch x output positions; with
ResNet18's layer4 at 224 px (7x7 maps, 512 channels) that reduction is short and the kernel runs
at a fraction of the matrix units' speed here: 50 ms for one 512->512 3x3 layer at batch 32,
against 17 ms for gathering the 3x3 neighbourhoods (im2col, 14 MB) and one bfloat16 GEMM. Forward
and input gradient stay with oneDNN. Same function, same parameters (``nn.Conv2d`` subclass):
checkpoints, evaluation and Captum see an ordinary convolution.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.fused import fast_path_applies

# Output maps up to this many positions take the GEMM path (layer4 at 224 px is 7x7 = 49).
# Measured here, batch 32, bfloat16: at 7x7 the GEMM takes 35-40% of oneDNN's time; at 14x14 (layer3)
# the two are about even, so layer3 stays with oneDNN.
GEMM_MAX_OUTPUT_POSITIONS = 64


def weight_grad_gemm(x: torch.Tensor, grad_out: torch.Tensor, kernel: tuple[int, int],
                     stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """dL/dW (OC, C, kh, kw) of a dense (groups=1, dilation=1) convolution, as im2col + one GEMM."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oc, ho, wo = grad_out.shape[1:]
    c = x.shape[1]
    xp = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1)                         # (N, Hp, Wp, C) view
    cols = torch.stack([xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
                        for i in range(kh) for j in range(kw)], dim=3)          # (N, Ho, Wo, kh*kw, C)
    rows = grad_out.permute(1, 0, 2, 3).reshape(oc, -1)                        # (OC, N*Ho*Wo), contiguous
    grad_w = rows @ cols.view(-1, kh * kw * c)                                  # (OC, kh*kw*C)
    return grad_w.view(oc, kh, kw, c).permute(0, 3, 1, 2)


class _ConvGemmWeightGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int],
                padding: tuple[int, int]) -> torch.Tensor:
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        with torch.autocast(device, enabled=False):
            xc, wc = x.to(dtype), weight.to(dtype)
            out = F.conv2d(xc, wc, None, stride, padding)
        ctx.save_for_backward(xc, wc)
        ctx.stride, ctx.padding, ctx.dtypes = stride, padding, (x.dtype, weight.dtype)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        xc, wc = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        grad_out = grad_out.to(xc.dtype)
        grad_x = grad_w = None
        with torch.autocast(xc.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                grad_x = torch.nn.grad.conv2d_input(xc.shape, wc, grad_out, ctx.stride, ctx.padding).to(x_dtype)
            if ctx.needs_input_grad[1]:
                grad_w = weight_grad_gemm(xc, grad_out, tuple(wc.shape[2:]), ctx.stride,
                                          ctx.padding).to(w_dtype)
        return grad_x, grad_w, None, None


class Conv2d(nn.Conv2d):
    """``nn.Conv2d``; in CPU training with a small output map, the weight gradient is one GEMM."""

    fused_training = True

    def _gemm_applies(self, x: torch.Tensor) -> bool:
        if not (fast_path_applies(self) and x.device.type == "cpu" and x.dim() == 4):
            return False
        if (self.groups != 1 or self.bias is not None or self.padding_mode != "zeros"
                or self.dilation != (1, 1) or isinstance(self.padding, str)):
            return False
        ho = (x.shape[2] + 2 * self.padding[0] - self.kernel_size[0]) // self.stride[0] + 1
        wo = (x.shape[3] + 2 * self.padding[1] - self.kernel_size[1]) // self.stride[1] + 1
        return ho * wo <= GEMM_MAX_OUTPUT_POSITIONS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._gemm_applies(x):
            return _ConvGemmWeightGrad.apply(x, self.weight, self.stride, self.padding)
        return super().forward(x)


def to_plain_conv2d(model: nn.Module) -> nn.Module:
    """In place: every ``Conv2d`` here becomes a ``torch.nn.Conv2d`` with the same parameters.

    For inference copies: ``torch.fx`` treats only ``torch.nn`` modules as leaves, and folding
    BatchNorm into the preceding convolution needs the convolution to be one.
    """
    for module in model.modules():
        if isinstance(module, Conv2d):
            module.__class__ = nn.Conv2d
    return model
