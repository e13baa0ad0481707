"""training/augment.py on real sample radiographs: identity when switched off, seeded, bounded."""

from pathlib import Path

import dataclasses

import pytest
import torch

from engine.model.preprocess import Preprocessing
from training import data as ds
from training.augment import AugmentConfig, augment_batch
from training.cache import decode_samples

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "sample" / "kermany"
OFF = AugmentConfig(rotate_deg=0, scale=(1, 1), shift=0, brightness=0, contrast=(1, 1), gamma=(1, 1),
                    blur_p=0, noise_p=0)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    images, _ = decode_samples(ds.index_folder(SAMPLE)[:6], Preprocessing(image_size=64))
    return images.unsqueeze(1)


def test_everything_off_is_the_identity(batch):
    torch.testing.assert_close(augment_batch(batch, OFF), batch, atol=1e-5, rtol=0)


def test_same_seed_same_batch_and_values_stay_in_range(batch):
    a = augment_batch(batch, AugmentConfig(), torch.Generator().manual_seed(3))
    b = augment_batch(batch, AugmentConfig(), torch.Generator().manual_seed(3))
    c = augment_batch(batch, AugmentConfig(), torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert a.shape == batch.shape and float(a.min()) >= 0 and float(a.max()) <= 1


@pytest.mark.parametrize("p, changed", [(0.0, 0), (1.0, 6)])
def test_noise_reaches_exactly_the_chosen_images(batch, p, changed):
    cfg = AugmentConfig(**{**OFF.as_dict(), "noise_p": p, "noise_std": 0.05})
    out = augment_batch(batch, cfg, torch.Generator().manual_seed(0))
    differs = (out - batch).abs().flatten(1).amax(1) > 1e-4
    assert int(differs.sum()) == changed


def test_the_input_batch_is_not_modified(batch):
    before = batch.clone()
    augment_batch(batch, AugmentConfig(noise_p=1.0, blur_p=1.0))
    torch.testing.assert_close(batch, before)


def test_black_border_puts_every_chosen_film_on_black(batch):
    out = augment_batch(batch, dataclasses.replace(OFF, border_p=1.0), torch.Generator().manual_seed(1))
    black = (out == 0).flatten(1).float().mean(1)
    before = (batch == 0).flatten(1).float().mean(1)     # some films have a little pure black already
    assert bool((black - before > 0.05).all())     # shrunk to at most 95%: about 10% or more is border


def test_full_equalisation_gives_a_flat_histogram(batch):
    out = augment_batch(batch, dataclasses.replace(OFF, equalize_p=1.0, equalize_mix=(1.0, 1.0)))
    values = out.flatten(1).sort(1).values
    torch.testing.assert_close(values, torch.linspace(0, 1, values.shape[1]).expand_as(values))


def test_clahe_is_opencvs_with_the_drawn_settings(batch):
    import cv2
    import numpy as np
    cfg = dataclasses.replace(OFF, clahe_p=1.0, clahe_clip=(2.0, 2.0), clahe_tiles=(8, 8))
    out = augment_batch(batch, cfg, torch.Generator().manual_seed(3))
    for before, after in zip(batch, out):
        eight_bit = (before[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        expected = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(eight_bit).astype(np.float32) / 255
        torch.testing.assert_close(after[0], torch.from_numpy(expected), atol=1e-6, rtol=0)
    # off by default, and drawn per image when on: two seeds give two different batches
    assert AugmentConfig().clahe_p == 0.0
    some = dataclasses.replace(OFF, clahe_p=1.0)
    assert not torch.equal(augment_batch(batch, some, torch.Generator().manual_seed(1)),
                           augment_batch(batch, some, torch.Generator().manual_seed(2)))
