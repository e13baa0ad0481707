"""Heatmaps with Captum: Grad-CAM by default; Guided Grad-CAM, Integrated Gradients, Occlusion.

Grad-CAM (Selvaraju et al., 2017) weights the target layer's activations by the spatial mean of
their gradients, sums over channels and keeps the positive part (``relu_attributions=True``).
The explained output is the pneumonia-vs-normal logit margin, so the map shows evidence *for*
pneumonia. Maps are upsampled to the network input with ``LayerAttribution.interpolate`` and
scaled to [0, 1] per image (an all-zero map stays zero: no evidence found).

The explainer owns a private copy of the network: Captum's temporary hooks never touch the model
the predictor shares between sessions, and a lock makes concurrent calls safe.
"""

from __future__ import annotations

import copy
from dataclasses import replace
import threading
from typing import Optional, Sequence

import numpy as np
import torch
from captum.attr import GuidedGradCam, IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion
from torch import nn

from engine.model.checkpoint import ModelCard
from engine.model.device import DevicePolicy, select_policy
from models import get_architecture

METHODS = ("gradcam", "guided_gradcam", "integrated_gradients", "occlusion")


class _Margin(nn.Module):
    """Wraps a classifier to output ``logit[positive] - logit[other]`` as shape (N, 1)."""

    def __init__(self, net: nn.Module, positive: int) -> None:
        super().__init__()
        self.net = net
        self.positive = positive

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x).float()
        others = torch.cat([logits[:, :self.positive], logits[:, self.positive + 1:]], 1)
        return (logits[:, self.positive] - others.logsumexp(1)).unsqueeze(1)


class _LastStage(nn.Module):
    """A ResNet from its last stage on: layer4, pooling and the classifier (input: layer3's output)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.layer4(a))


def _resolve(model: nn.Module, dotted: str) -> nn.Module:
    try:
        return model.get_submodule(dotted)
    except AttributeError:
        names = [n for n, _ in model.named_children()]
        raise ValueError(f"layer '{dotted}' is not in the model; top-level layers: {names}") from None


def _normalise(maps: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) -> (N, H, W) float32, each map scaled to [0, 1] by its maximum."""
    maps = maps.detach().float().clamp(min=0).squeeze(1)
    peak = maps.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    return (maps / peak).cpu().numpy().astype(np.float32)


class Explainer:
    """Batched heatmaps for normalised input batches from one checkpoint's model."""

    def __init__(self, model: nn.Module, card: ModelCard, policy: Optional[DevicePolicy] = None,
                 layer: Optional[str] = None) -> None:
        self.card = card
        self.policy = policy or select_policy()
        from models.ensemble import EnsembleNet
        self._members: list["Explainer"] = []
        if isinstance(model, EnsembleNet):   # each member at its own layer; the maps are averaged
            self._members = [Explainer(m, replace(card, architecture=arch), self.policy)
                             for m, arch in zip(model.members, model.architectures)]
            self.layer_name = self._members[0].layer_name
            return
        net = self.policy.prepare_model(copy.deepcopy(model).eval())
        for p in net.parameters():
            p.requires_grad_(False)   # gradients flow to activations only, never accumulate in weights
        self.layer_name = layer or get_architecture(card.architecture).gradcam_layer
        self._margin = _Margin(net, card.positive_index).eval()
        self._layer = _resolve(net, self.layer_name)
        self._lock = threading.Lock()
        # Grad-CAM at a ResNet's layer4 needs only layer4 and the head: given layer3's output (the
        # exported graph returns it with the prediction), Captum runs a quarter of the network.
        self._tail = _Margin(_LastStage(net), card.positive_index).eval() \
            if self.layer_name == "layer4" and hasattr(net, "forward_head") else None

    @property
    def explains_stages(self) -> bool:
        """Whether :meth:`explain_stages` can take the last stage's inputs (a single ResNet)."""
        return self._tail is not None and not self._members

    def explain_stages(self, stage_inputs: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Grad-CAM maps (N, S, S) from layer3's outputs: Captum's LayerGradCam on layer4 and the head
        only. The gradients at layer4 do not depend on anything before it, so the maps are those of
        :meth:`explain` on the whole network (within float tolerance)."""
        size = (self.card.preprocessing.image_size,) * 2
        out = []
        for i in range(0, len(stage_inputs), batch_size):
            a = self.policy.to_device(torch.from_numpy(np.stack(stage_inputs[i:i + batch_size])).float())
            with self._lock, torch.enable_grad(), self.policy.autocast():
                attr = LayerGradCam(self._tail, self._layer).attribute(a, target=0, relu_attributions=True)
                attr = LayerAttribution.interpolate(attr.float(), size, interpolate_mode="bilinear")
            out.append(_normalise(attr))
        return np.concatenate(out) if out else np.empty((0, *size), np.float32)

    def explain(self, batch: torch.Tensor, method: str = "gradcam") -> np.ndarray:
        """Heatmaps (N, S, S) in [0, 1] for a normalised batch (N, C, S, S)."""
        if method not in METHODS:
            raise ValueError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
        if self._members:
            maps = np.mean([m.explain(batch, method) for m in self._members], axis=0)
            return (maps / np.maximum(maps.reshape(len(maps), -1).max(1), 1e-12)[:, None, None]).astype(np.float32)
        x = self.policy.to_device(batch.float()).requires_grad_(method != "gradcam")
        size = tuple(x.shape[-2:])
        with self._lock, torch.enable_grad(), self.policy.autocast():
            if method == "gradcam":
                cam = LayerGradCam(self._margin, self._layer)
                attr = cam.attribute(x, target=0, relu_attributions=True)
                attr = LayerAttribution.interpolate(attr.float(), size, interpolate_mode="bilinear")
            elif method == "guided_gradcam":
                attr = GuidedGradCam(self._margin, self._layer).attribute(x, target=0).abs().sum(1, keepdim=True)
            elif method == "integrated_gradients":
                attr = IntegratedGradients(self._margin).attribute(
                    x, baselines=x.mean(dim=(2, 3), keepdim=True).expand_as(x), target=0,
                    n_steps=16, internal_batch_size=64).abs().sum(1, keepdim=True)
            else:
                win = max(size[0] // 8, 4)
                attr = Occlusion(self._margin).attribute(
                    x, target=0, sliding_window_shapes=(x.shape[1], win, win),
                    strides=(x.shape[1], win // 2, win // 2), baselines=0.0,
                    perturbations_per_eval=32)[:, :1]
        return _normalise(attr)

    def explain_images(self, resized: Sequence[np.ndarray], method: str = "gradcam",
                       batch_size: int = 32) -> np.ndarray:
        """Heatmaps for images already resized to the input size (S, S) in [0, 1]."""
        prep = self.card.preprocessing
        out = [self.explain(prep.normalize(torch.from_numpy(np.stack(resized[i:i + batch_size]))), method)
               for i in range(0, len(resized), batch_size)]
        return np.concatenate(out) if out else np.empty((0, prep.image_size, prep.image_size), np.float32)
