"""Losses for an imbalanced two-class problem."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def class_weights(labels: torch.Tensor, num_classes: int = 2) -> torch.Tensor:
    """Inverse-frequency weights ``n / (k * n_c)``: each class contributes equally to the loss."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    return counts.sum() / (num_classes * counts)


class FocalLoss(nn.Module):
    """Lin et al. (2017): ``-alpha_c (1 - p_t)^gamma log p_t`` with per-class alpha."""

    def __init__(self, weight: torch.Tensor | None = None, gamma: float = 2.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", weight if weight is not None else None)
        self.gamma = gamma
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        ce = F.nll_loss(logp, target, reduction="none")
        pt = logp.gather(1, target[:, None]).squeeze(1).exp()
        loss = (1 - pt) ** self.gamma * ce
        if self.label_smoothing:
            loss = (1 - self.label_smoothing) * loss - self.label_smoothing * logp.mean(1)
        if self.weight is not None:
            w = self.weight[target]
            return (loss * w).sum() / w.sum()
        return loss.mean()


def build_loss(kind: str, labels: torch.Tensor, label_smoothing: float) -> nn.Module:
    if kind == "weighted_ce":
        return nn.CrossEntropyLoss(weight=class_weights(labels), label_smoothing=label_smoothing)
    if kind == "ce":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if kind == "focal":
        return FocalLoss(class_weights(labels), label_smoothing=label_smoothing)
    raise ValueError(f"unknown loss '{kind}'; choose weighted_ce, ce or focal")


class DistillationLoss(nn.Module):
    """``(1 - w) * hard(logits, labels) + w * CE(teacher probabilities, softmax(logits))``.

    The soft term is the cross-entropy to the teacher's calibrated probabilities (KL divergence up to
    a constant), each image weighted like its class in the hard loss so that the classes keep equal
    shares of the gradient.
    """

    def __init__(self, hard: nn.Module, weight: float, class_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"the distillation weight must lie in [0, 1], got {weight}")
        self.hard = hard
        self.weight = weight
        self.register_buffer("class_weight", class_weight if class_weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        soft = -(teacher * F.log_softmax(logits.float(), dim=1)).sum(1)
        if self.class_weight is not None:
            w = self.class_weight[target]
            soft = (soft * w).sum() / w.sum()
        else:
            soft = soft.mean()
        return (1 - self.weight) * self.hard(logits, target) + self.weight * soft
