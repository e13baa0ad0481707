"""The one transform that training and inference share; its settings live in the checkpoint.

Two steps: ``resize`` (a plain stretch to the square input size, as the Kermany images were made,
no letterbox) and ``normalize`` (per-image z-score, which removes the global brightness and
contrast differences between scanners and hospitals). Training augments between the two.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:   # torch is imported only where tensors are made: decoding workers never load it
    import torch

INTENSITY_MODES = ("zscore", "imagenet", "unit")


@dataclass(frozen=True)
class Preprocessing:
    image_size: int = 224
    in_channels: int = 1
    intensity: str = "zscore"   # "zscore": per image; "imagenet"/"unit": fixed statistics

    def __post_init__(self) -> None:
        if not (16 <= self.image_size <= 4096):
            raise ValueError(f"image_size must be between 16 and 4096 pixels, got {self.image_size}")
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got '{self.intensity}'")
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")

    def as_dict(self) -> dict:
        return asdict(self) | {"resize": "plain stretch to image_size x image_size (cv2.INTER_AREA "
                                         "when shrinking, INTER_LINEAR when enlarging)"}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(image_size=int(d["image_size"]), in_channels=int(d.get("in_channels", 1)),
                   intensity=d.get("intensity", "zscore"))

    def resize(self, pixels: np.ndarray) -> np.ndarray:
        """Stretch a float32 [0,1] grayscale image to ``image_size`` square."""
        h, w = pixels.shape[:2]
        s = self.image_size
        if (h, w) == (s, s):
            return np.ascontiguousarray(pixels, dtype=np.float32)
        interp = cv2.INTER_AREA if h > s or w > s else cv2.INTER_LINEAR
        return cv2.resize(pixels.astype(np.float32, copy=False), (s, s), interpolation=interp)

    def normalize(self, batch: "torch.Tensor") -> "torch.Tensor":
        """(N, 1, S, S) or (N, S, S) in [0, 1] -> the network's input (N, C, S, S)."""
        if batch.dim() == 3:
            batch = batch.unsqueeze(1)
        batch = batch.float()
        if self.intensity == "zscore":
            mean = batch.mean(dim=(1, 2, 3), keepdim=True)
            std = batch.std(dim=(1, 2, 3), keepdim=True)
            batch = (batch - mean) / (std + 1e-6)
        elif self.intensity == "imagenet":
            batch = (batch - 0.449) / 0.226   # ImageNet's mean/std averaged over RGB
        if self.in_channels == 3:
            batch = batch.expand(-1, 3, -1, -1)
        return batch

    def normalize_np(self, batch: np.ndarray) -> np.ndarray:
        """:meth:`normalize` in numpy (the torch-free backends): the same function, float32 out."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[:, None]
        if self.intensity == "zscore":
            # moments accumulated in float64 without a float64 copy of the batch, then one float32
            # pass, as torch does: 1.5 ms for 32 images at 224 px against 7 ms through float64
            flat = batch.reshape(len(batch), -1)
            count = flat.shape[1]
            mean = flat.mean(1, dtype=np.float64)
            squares = np.einsum("ij,ij->i", flat, flat, dtype=np.float64)
            std = np.sqrt(np.maximum(squares - count * mean * mean, 0.0) / max(count - 1, 1))  # unbiased
            scale = (1.0 / (std + 1e-6)).astype(np.float32).reshape(-1, 1, 1, 1)
            batch = batch - mean.astype(np.float32).reshape(-1, 1, 1, 1)
            batch *= scale
        elif self.intensity == "imagenet":
            batch = (batch - np.float32(0.449)) / np.float32(0.226)
        if self.in_channels == 3:
            batch = np.repeat(batch, 3, axis=1)
        return np.ascontiguousarray(batch, dtype=np.float32)

    def __call__(self, images: list[np.ndarray]) -> "torch.Tensor":
        """Decoded images (any sizes) -> one normalised batch."""
        import torch
        return self.normalize(torch.from_numpy(np.stack([self.resize(im) for im in images])))
