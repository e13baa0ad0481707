"""Shared helpers for the engine and model tests: sample paths, tiny checkpoints, one assert helper.

The real sample images live in ``assets/sample`` (committed, so the tests run on a fresh clone);
the shipped model in ``assets/models/default``. Tiny checkpoints are real networks with seeded
random weights, small enough to run in milliseconds at 32 pixels.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from engine.model.checkpoint import DEFAULT_MODEL_DIR, ModelCard, save_checkpoint
from engine.decode import read_image
from engine.model.preprocess import Preprocessing
from models import build_model

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "assets" / "sample"
NORMAL = sorted((SAMPLE / "kermany" / "NORMAL").glob("*.jpeg"))
PNEUMONIA = sorted((SAMPLE / "kermany" / "PNEUMONIA").glob("*.jpeg"))
JPEGS = NORMAL + PNEUMONIA
DICOMS = sorted((SAMPLE / "dicom").glob("*.dcm"))
SHIPPED_MODEL = DEFAULT_MODEL_DIR   # assets/models/default, unless $CXR_MODEL_DIR points elsewhere
SHARED_DATA = ROOT.parent / "shared" / "data"


def randomize_batchnorm_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random affine parameters and running statistics.

    The ResNet builder zero-initialises the last BN of each residual branch, so a freshly built
    network skips every branch (and its CBAM); random BN parameters make all of it compute.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


def tiny_model(arch: str = "resnet18_cbam", *, in_channels: int = 1, seed: int = 0) -> nn.Module:
    """A real registry network with seeded random weights (BN included), in eval mode."""
    torch.manual_seed(seed)
    return randomize_batchnorm_(build_model(arch, in_channels=in_channels), seed).eval()


def tiny_card(arch: str = "resnet18_cbam", *, image_size: int = 32, in_channels: int = 1,
              **kwargs) -> ModelCard:
    return ModelCard(architecture=arch, preprocessing=Preprocessing(image_size, in_channels), **kwargs)


def write_tiny_checkpoint(folder: Path, arch: str = "resnet18_cbam", *, image_size: int = 32,
                          in_channels: int = 1, seed: int = 0, half: bool = False,
                          **card_kwargs) -> Path:
    """Save a tiny random checkpoint with :func:`engine.model.checkpoint.save_checkpoint`."""
    model = tiny_model(arch, in_channels=in_channels, seed=seed)
    card = tiny_card(arch, image_size=image_size, in_channels=in_channels, **card_kwargs)
    return save_checkpoint(model, card, folder, half=half)


def resized_samples(prep: Preprocessing, paths: Sequence[Path]) -> list[np.ndarray]:
    """Real files decoded by the engine and resized to the model's input size."""
    return [prep.resize(read_image(p).pixels) for p in paths]


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def module_hooks(*models: nn.Module) -> list[str]:
    """Names of the modules that still carry a forward, pre-forward or backward hook."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return [f"{name or '<root>'}.{kind}" for model in models for name, m in model.named_modules()
            for kind in kinds if getattr(m, kind, None)]


def tree(folder: Path) -> set[str]:
    """Every path under ``folder``, relative, to check that nothing else was written."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def assert_close(actual, expected, atol: float, what: str = "values") -> float:
    """Assert elementwise ``|actual - expected| <= atol``; return the largest difference."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    diff = float(np.max(np.abs(a - e))) if a.size else 0.0
    assert diff <= atol, (f"{what}: max |difference| {diff:.3g} > {atol:g} "
                          f"at index {np.unravel_index(np.argmax(np.abs(a - e)), a.shape)}")
    return diff


def logit(p) -> np.ndarray:
    """log(p / (1 - p)): for two classes, the logit margin the probability came from."""
    p = np.asarray(p, dtype=np.float64)
    return np.log(p) - np.log1p(-p)
