"""Distillation of a trained model (usually an ensemble) into the network being trained.

The teacher sees exactly the augmented batch the student sees ("consistent teaching": Beyer et al.,
CVPR 2022, found a patient teacher on identical views distils best), so the student learns the
teacher's calibrated probabilities on every view the augmentation makes, not only on clean images.
The teacher is any checkpoint the engine loads; an ensemble's output is already the mean of its
members' calibrated probabilities.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engine.model.checkpoint import CheckpointError, load_checkpoint
from engine.model.device import DevicePolicy
from engine.model.preprocess import Preprocessing


class Teacher:
    """A frozen checkpoint that returns its calibrated class probabilities for a normalised batch."""

    def __init__(self, folder: str | Path, prep: Preprocessing, policy: DevicePolicy) -> None:
        model, card = load_checkpoint(folder)
        if card.preprocessing != prep:
            raise CheckpointError(f"--distill-from {folder}: the teacher's input ({card.preprocessing}) differs "
                                  f"from the student's ({prep}); both must see the same batch")
        self.card = card
        self.folder = Path(folder)
        self.temperature = float(card.temperature)
        self.policy = policy
        self.model: nn.Module = policy.prepare_model(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()   # not inference_mode: its tensors cannot enter the student's loss graph
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with self.policy.autocast():
            logits = self.model(x).float()
        return torch.softmax(logits / self.temperature, dim=1)

    def describe(self) -> dict:
        from engine.inference.backends.artefacts import weights_sha256
        members = self.card.extra.get("ensemble", {}).get("members", [])
        return {"teacher": str(self.folder), "teacher_name": self.card.name,
                "teacher_weights_sha256": weights_sha256(self.folder),
                "teacher_members": [m.get("source") for m in members]}
