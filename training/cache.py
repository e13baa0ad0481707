"""Decode every image of a run once, up front, into one in-memory tensor."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from engine.decode import read_image
from engine.errors import ImageReadError
from engine.model.preprocess import Preprocessing
from training.data import Sample

log = logging.getLogger(__name__)


def decode_samples(samples: list[Sample], prep: Preprocessing,
                   workers: int | None = None) -> tuple[torch.Tensor, list[Sample]]:
    """Return (images (N, S, S) float32 in [0, 1], the samples that decoded); skip unreadable files."""
    def load(s: Sample) -> np.ndarray | None:
        try:
            return prep.resize(read_image(s.path).pixels)
        except ImageReadError as exc:
            log.warning("skipped: %s", exc)
            return None

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        arrays = list(pool.map(load, samples))
    kept = [(a, s) for a, s in zip(arrays, samples) if a is not None]
    if not kept:
        raise RuntimeError("none of the images could be decoded")
    images = torch.from_numpy(np.stack([a for a, _ in kept]))
    return images, [s for _, s in kept]
