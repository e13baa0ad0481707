"""One training epoch and batched prediction over in-memory images."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from engine.model.device import DevicePolicy
from engine.model.preprocess import Preprocessing
from training.augment import AugmentConfig, augment_batch


@dataclass
class BatchCollator:
    """Gathers a batch of cached images, augments it (training only), returns (x, y)."""

    images: torch.Tensor          # (N, S, S) in [0, 1]
    labels: torch.Tensor          # (N,)
    prep: Preprocessing
    augment: Optional[AugmentConfig] = None

    def __call__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        x = self.images[idx].unsqueeze(1)
        if self.augment is not None:
            x = augment_batch(x, self.augment)
        return self.prep.normalize(x), self.labels[idx]


def train_one_epoch(model: nn.Module, batches: Iterable, loss_fn: nn.Module,
                    optimizer: torch.optim.Optimizer, policy: DevicePolicy, *,
                    step_scheduler: Optional[Callable[[], None]] = None,
                    ema: Optional[nn.Module] = None, grad_clip: float = 0.0,
                    scaler: Optional[torch.amp.GradScaler] = None,
                    progress: Optional[Callable[[int, float], None]] = None,
                    teacher: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> dict:
    """Train over ``batches``; returns mean loss, images/s and seconds.

    With a ``teacher`` (distillation), ``loss_fn`` also takes the teacher's probabilities for the
    same batch.
    """
    model.train()
    total, count, start = 0.0, 0, time.perf_counter()
    for x, y in batches:
        x, y = policy.to_device(x), y.to(policy.device)
        target = teacher(x) if teacher is not None else None
        with policy.autocast():
            logits = model(x).float()
            loss = loss_fn(logits, y) if target is None else loss_fn(logits, y, target)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"training loss became {loss.item()}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if step_scheduler is not None:
            step_scheduler()
        if ema is not None:
            ema.update_parameters(model)
        total += loss.item() * len(y)
        count += len(y)
        if progress is not None:
            progress(len(y), loss.item())
    seconds = time.perf_counter() - start
    return {"train_loss": total / max(count, 1), "train_images_per_s": count / seconds,
            "train_seconds": seconds}


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, prep: Preprocessing,
                   policy: DevicePolicy, batch_size: int = 64) -> torch.Tensor:
    """Logits (N, classes) in float32 for cached images (N, S, S)."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = policy.to_device(prep.normalize(images[i:i + batch_size].unsqueeze(1)))
        with policy.autocast():
            out.append(model(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0, 2)
