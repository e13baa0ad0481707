"""A deep ensemble as one network (Lakshminarayanan et al., NeurIPS 2017).

``EnsembleNet`` holds independently trained members and outputs the log of their mean probability,
each member at its own calibration temperature: softmax of the output is the mean of the members'
calibrated probabilities, so every caller (the predictor, the exported graph, the CLI, the dashboard)
treats an ensemble checkpoint as one model. Grad-CAM explains each member at its own layer and
averages the maps (:mod:`engine.explain`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class EnsembleNet(nn.Module):
    def __init__(self, members: Sequence[nn.Module], temperatures: Sequence[float],
                 architectures: Sequence[str]) -> None:
        super().__init__()
        if len(members) < 2 or len(members) != len(temperatures) or len(members) != len(architectures):
            raise ValueError("an ensemble needs at least two members, each with its temperature and architecture")
        self.members = nn.ModuleList(members)
        self.architectures = list(architectures)
        self.register_buffer("temperatures", torch.tensor([float(t) for t in temperatures]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = [torch.softmax(m(x).float() / self.temperatures[i], dim=1) for i, m in enumerate(self.members)]
        return torch.log(torch.stack(probs).mean(0).clamp(min=1e-12))
