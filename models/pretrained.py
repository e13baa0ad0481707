"""Find and load ImageNet weights that are already on disk (nothing is downloaded here)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn


class PretrainedWeightsNotFound(FileNotFoundError):
    """Raised when pretrained weights are asked for but no file is on disk."""


def search_dirs() -> list[Path]:
    """Folders searched for ImageNet weight files, in order."""
    dirs = []
    if os.environ.get("CXR_PRETRAINED_DIR"):
        dirs.append(Path(os.environ["CXR_PRETRAINED_DIR"]))
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def find_weights_file(filename: str) -> Path:
    for d in search_dirs():
        for candidate in (d / filename, d / Path(filename).with_suffix(".safetensors").name):
            if candidate.is_file():
                return candidate
    where = " or ".join(str(d / filename) for d in search_dirs())
    raise PretrainedWeightsNotFound(
        f"Pretrained ImageNet weights '{filename}' are not on disk and cannot be downloaded here. "
        f"Copy the file to {where} (set CXR_PRETRAINED_DIR to use another folder), "
        "or train from scratch without --pretrained.")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a weights file without executing pickled code (safetensors, or torch's weights_only)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def load_imagenet_weights(model: nn.Module, filename: str, first_conv: str, classifier: str) -> None:
    """Load ImageNet weights into ``model``, adapting the first conv and skipping the classifier.

    A one-channel first convolution gets the RGB kernels summed (the usual grayscale adaptation);
    the classifier keeps its fresh initialisation because the class count differs.
    """
    state = read_state_dict(find_weights_file(filename))
    state = {(_DENSENET_OLD_KEY.sub(r"\1\2", k)): v for k, v in state.items()}
    own = model.state_dict()
    conv_key = first_conv + ".weight"
    if conv_key in state and own[conv_key].shape[1] == 1 and state[conv_key].shape[1] == 3:
        state[conv_key] = state[conv_key].sum(dim=1, keepdim=True)
    state = {k: v for k, v in state.items()
             if not k.startswith(classifier + ".") and k in own and own[k].shape == v.shape}
    model.load_state_dict(state, strict=False)
