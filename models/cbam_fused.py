"""CBAM's forward and backward as one autograd function, for training speed on CPU.

The module-by-module CBAM (``models.cbam``) is memory-bound: autograd runs some twenty
full-size element-wise passes per block in the backward (``amax``'s backward alone compares the
whole input with its maximum, counts ties and divides; ``mean``'s expands and copies; the input's
three uses are summed). Here the full-size work is four passes each way, and only the small
parts (the channel MLP on (N, C) vectors, the 7x7 convolution on (N, 2, H, W) maps and the
sigmoids) go through autograd, in float32 at least whatever the input's dtype.

The result equals ``models.cbam.CBAM`` up to rounding (tested). One difference in the gradient:
where several elements tie for a maximum, ``amax`` splits the gradient between them and this
function gives it to one of them; both are valid subgradients, and ties only happen in low
precision. No double backward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _channel_gate(avg: torch.Tensor, mx: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """sigmoid(MLP(avg) + MLP(max)) on (N, C) float32 vectors; w1, w2 are the 1x1 conv weights."""
    def mlp(v: torch.Tensor) -> torch.Tensor:
        return F.linear(F.relu(F.linear(v, w1.flatten(1))), w2.flatten(1))
    return torch.sigmoid(mlp(avg) + mlp(mx))


def _spatial_gate(pooled: torch.Tensor, wconv: torch.Tensor) -> torch.Tensor:
    """sigmoid(conv7x7([mean_c, max_c])) on (N, 2, H, W) float32 maps, channels_last: oneDNN's
    backward for this 2-channel convolution is five times faster in that layout here."""
    pooled = pooled.contiguous(memory_format=torch.channels_last)
    return torch.sigmoid(F.conv2d(pooled, wconv, padding=wconv.shape[-1] // 2))


def _sum(t: torch.Tensor, dims: tuple[int, ...], acc: torch.dtype, keepdim: bool = False) -> torch.Tensor:
    """Sum over ``dims`` in dtype ``acc``. bfloat16 sums in its own dtype (same range as float32, and
    a float32 sum of a bfloat16 tensor converts it all first: 3-4x slower here); float16 in float32,
    since a sum over thousands of positions (or gradients under a loss scale) can pass 65,504."""
    if t.dtype == torch.float16:
        return t.sum(dims, keepdim=keepdim, dtype=acc)
    return t.sum(dims, keepdim=keepdim).to(acc)


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x in a layout whose (H, W) can be flattened by a view: contiguous or channels_last."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _like(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """t in x's memory layout (a copy only when autograd handed over another layout)."""
    fmt = torch.channels_last if (x.is_contiguous(memory_format=torch.channels_last)
                                  and not x.is_contiguous()) else torch.contiguous_format
    return t.contiguous(memory_format=fmt)


def _add_at(t: torch.Tensor, dim: int, index: torch.Tensor, values: torch.Tensor) -> None:
    """In place ``t.scatter_add_(dim, index, values)`` where ``index`` has size 1 along ``dim``.

    Each index is used once, so this is a gather, an add and a put on 1/size(dim) of the tensor
    through its storage offsets; ``scatter_add_`` converts the whole of a bfloat16 tensor to
    float32 and back on CPU (ten times slower here).
    """
    offsets = index * t.stride(dim)
    for d, (size, stride) in enumerate(zip(t.shape, t.stride())):
        if d != dim:
            shape = [1] * t.dim()
            shape[d] = size
            offsets = offsets + (torch.arange(size, device=t.device) * stride).view(shape)
    size = t.untyped_storage().nbytes() // t.element_size() - t.storage_offset()
    flat = t.as_strided((size,), (1,), t.storage_offset())
    offsets = offsets.flatten()
    flat[offsets] += values.flatten()


class _FusedCBAM(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                wconv: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            n, c, h, w = x.shape
            acc = torch.promote_types(x.dtype, torch.float32)   # the small parts' precision
            avg = _sum(x, (2, 3), acc) / (h * w)       # sum then divide: mean is slow in bfloat16 on CPU
            mx, idx_hw = x.view(n, c, h * w).max(2)
            gate_c = _channel_gate(avg, mx.to(acc), w1.to(acc), w2.to(acc))        # (N, C)
            y = x * gate_c.to(x.dtype).view(n, c, 1, 1)
            max_c, idx_c = y.max(1, keepdim=True)
            pooled = torch.cat([_sum(y, (1,), acc, keepdim=True) / c, max_c.to(acc)], 1)  # (N, 2, H, W)
            gate_s = _spatial_gate(pooled, wconv.to(acc))                       # (N, 1, H, W)
            out = y * gate_s.to(x.dtype)
        ctx.save_for_backward(x, y, avg, mx, idx_hw, gate_c, pooled, idx_c, gate_s, w1, w2, wconv)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        x, y, avg, mx, idx_hw, gate_c, pooled, idx_c, gate_s, w1, w2, wconv = ctx.saved_tensors
        n, c, h, w = x.shape
        dtype, acc = x.dtype, pooled.dtype
        with torch.autocast(x.device.type, enabled=False):
            # out = y * gate_s
            d_gate_s = _sum(grad_out * y, (1,), acc, keepdim=True).contiguous(memory_format=torch.channels_last)
            with torch.enable_grad():
                p = pooled.detach().requires_grad_()
                wc = wconv.detach().to(acc).requires_grad_()
                d_pooled, d_wconv = torch.autograd.grad(_spatial_gate(p, wc), (p, wc), d_gate_s)
            # y feeds the output and both channel poolings
            dy = _like(x, grad_out * gate_s.to(dtype))
            dy += (d_pooled[:, :1] / c).to(dtype)
            _add_at(dy, 1, idx_c, d_pooled[:, 1:].to(dtype))
            # y = x * gate_c
            d_gate_c = _sum(dy * x, (2, 3), acc)
            with torch.enable_grad():
                a, m = avg.detach().requires_grad_(), mx.detach().to(acc).requires_grad_()
                v1, v2 = w1.detach().to(acc).requires_grad_(), w2.detach().to(acc).requires_grad_()
                d_avg, d_max, d_w1, d_w2 = torch.autograd.grad(
                    _channel_gate(a, m, v1, v2), (a, m, v1, v2), d_gate_c)
            # x feeds y and both spatial poolings
            dx = dy.mul_(gate_c.to(dtype).view(n, c, 1, 1))
            dx += (d_avg / (h * w)).to(dtype).view(n, c, 1, 1)
            _add_at(dx.view(n, c, h * w), 2, idx_hw.unsqueeze(2), d_max.to(dtype).unsqueeze(2))
        return dx, d_w1.to(w1.dtype), d_w2.to(w2.dtype), d_wconv.to(wconv.dtype)


def fused_cbam(x: torch.Tensor, fc1_weight: torch.Tensor, fc2_weight: torch.Tensor,
               conv_weight: torch.Tensor) -> torch.Tensor:
    """CBAM (channel then spatial attention) on x (N, C, H, W) with the module's three weights."""
    return _FusedCBAM.apply(_dense(x), fc1_weight, fc2_weight, conv_weight)
