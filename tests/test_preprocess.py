"""engine.model.preprocess: the numpy normalisation (torch-free backends) is the torch one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.model.preprocess import Preprocessing
from helpers import NORMAL, PNEUMONIA, resized_samples


@pytest.mark.parametrize("intensity,channels", [("zscore", 1), ("zscore", 3), ("imagenet", 1)])
def test_numpy_and_torch_normalise_real_radiographs_alike(intensity, channels):
    prep = Preprocessing(image_size=224, intensity=intensity, in_channels=channels)
    batch = np.stack(resized_samples(prep, [*NORMAL[:3], *PNEUMONIA[:3]]))
    expected = prep.normalize(torch.from_numpy(batch)).numpy()
    actual = prep.normalize_np(batch)
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    assert np.abs(actual - expected).max() < 1e-5
    if intensity == "zscore":   # each image: mean 0, unbiased standard deviation 1
        flat = actual[:, 0].reshape(len(actual), -1).astype(np.float64)
        assert np.abs(flat.mean(1)).max() < 1e-5 and np.abs(flat.std(1, ddof=1) - 1).max() < 1e-4


def test_a_blank_image_normalises_to_zeros_not_to_noise():
    prep = Preprocessing(image_size=16)
    blank = np.full((2, 16, 16), 0.7, np.float32)
    assert np.array_equal(prep.normalize_np(blank), np.zeros((2, 1, 16, 16), np.float32))
