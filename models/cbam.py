"""Convolutional Block Attention Module.

Woo, Park, Lee and Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018
(https://arxiv.org/abs/1807.06521). Channel attention (a shared MLP over average- and
max-pooled descriptors) is applied first, then spatial attention (a 7x7 convolution over the
channel-wise average and maximum maps), each as a sigmoid gate: ``x * gate(x)``.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from models.cbam_fused import fused_cbam
from models.fused import fast_path_applies


def _mean(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``x.mean(dims, keepdim=True)`` as a sum and a division: in bfloat16 on CPU ``mean`` converts
    the whole tensor to float32 first and is 4-7x slower than ``sum`` here (torch 2.14)."""
    count = 1
    for d in dims:
        count *= x.shape[d]
    if x.dtype == torch.float16:   # a float16 sum over thousands of positions can pass 65,504
        return (x.sum(dims, keepdim=True, dtype=torch.float32) / count).to(x.dtype)
    return x.sum(dims, keepdim=True) / count


# torch.fx (the predictor folds BatchNorm by tracing) records _mean as one call instead of tracing
# into its dtype test, which a symbolic tensor cannot answer.
torch.fx.wrap("_mean")


class ChannelAttention(nn.Module):
    """Gate each channel by ``sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))``."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(self.act(self.fc1(_mean(x, (2, 3)))))
        mx = self.fc2(self.act(self.fc1(x.amax((2, 3), keepdim=True))))
        return x * torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """Gate each position by ``sigmoid(conv7x7([mean_c(x), max_c(x)]))``."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([_mean(x, (1,)), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Channel attention followed by spatial attention (the paper's sequential order)."""

    fused_training = True   # see models.fused

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast_path_applies(self):
            # Same function, one autograd node: about half the time of the module-by-module
            # backward on CPU (see models/cbam_fused.py). Evaluation, explanation (Captum hooks
            # the modules) and torch.compile (which fuses the modules itself) use the modules.
            return fused_cbam(x, self.channel.fc1.weight, self.channel.fc2.weight, self.spatial.conv.weight)
        return self.spatial(self.channel(x))

