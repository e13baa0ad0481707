"""Batched augmentation on (N, 1, S, S) tensors in [0, 1], applied before the engine's normalise.

Geometric: small rotation, zoom (scale) and shift; horizontal flip only when asked (chest anatomy
is not left-right symmetric). Photometric: brightness, contrast, gamma, blur and noise, which
stand in for differences between scanners and hospitals.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.15)
    shift: float = 0.06
    hflip: bool = False
    brightness: float = 0.1
    contrast: tuple[float, float] = (0.75, 1.3)
    gamma: tuple[float, float] = (0.7, 1.5)
    blur_p: float = 0.2
    noise_p: float = 0.3
    noise_std: float = 0.03

    def as_dict(self) -> dict:
        return asdict(self)


def _uniform(n: int, low: float, high: float, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=g) * (high - low) + low


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator | None = None) -> torch.Tensor:
    """Return an augmented copy of ``x`` (N, 1, S, S), float32 in [0, 1]."""
    n = x.shape[0]
    angle = _uniform(n, -cfg.rotate_deg, cfg.rotate_deg, g) * math.pi / 180
    scale = _uniform(n, *cfg.scale, g)
    tx, ty = _uniform(n, -cfg.shift, cfg.shift, g) * 2, _uniform(n, -cfg.shift, cfg.shift, g) * 2
    flip = (torch.rand(n, generator=g) < 0.5).float() * 2 - 1 if cfg.hflip else torch.ones(n)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1),
                         torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)

    shape = (n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * _uniform(n, *cfg.contrast, g).view(shape) + mean
    x = x + _uniform(n, -cfg.brightness, cfg.brightness, g).view(shape)
    x = x.clamp(0, 1) ** _uniform(n, *cfg.gamma, g).view(shape)

    blur = torch.rand(n, generator=g) < cfg.blur_p
    if blur.any():
        x[blur] = F.avg_pool2d(x[blur], 3, stride=1, padding=1, count_include_pad=False)
    noisy = torch.rand(n, generator=g) < cfg.noise_p
    std = _uniform(n, 0, cfg.noise_std, g)
    if noisy.any():  # noise drawn for the chosen images only: a full-batch randn is the costliest step
        k = int(noisy.sum())
        x[noisy] += torch.randn((k, *x.shape[1:]), generator=g) * std[noisy].view(k, 1, 1, 1)
    return x.clamp(0, 1)
