"""engine.inference.predictor on real files: order, errors, ZIPs, temperature, precision policy, BN folding."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from engine.model.device import plain_policy
from engine.inference.predictor import Predictor
from engine.inputs.sources import iter_inputs
from helpers import (DICOMS, JPEGS, NORMAL, PNEUMONIA, SHARED_DATA, SHIPPED_MODEL, assert_close, logit,
                     resized_samples, write_tiny_checkpoint, zip_bytes)

BF16_ATOL = 2e-2   # probabilities under bfloat16 autocast vs float32, or another batch composition
REAL = [str(p) for p in JPEGS + DICOMS]


@pytest.fixture(scope="module")
def shipped():
    """The shipped model on this machine's selected policy (bfloat16 autocast on a bf16 CPU)."""
    return Predictor.from_checkpoint(SHIPPED_MODEL)


@pytest.fixture(scope="module")
def shipped_plain(shipped):
    return Predictor(shipped.model, shipped.card, plain_policy(), fuse=False)


def stream(predictor, paths, **kwargs):
    return list(predictor.predict_stream(iter_inputs(paths), **kwargs))


def test_batch_size_does_not_change_probabilities(shipped):
    one = stream(shipped, REAL, batch_size=1)
    eight = stream(shipped, REAL, batch_size=8)
    assert [p.name for p in one] == [p.name for p in eight] == [Path(r).name for r in REAL]
    assert_close([p.probability for p in one], [p.probability for p in eight], BF16_ATOL, "probability")


def test_one_result_per_input_in_order_with_broken_files(shipped, tmp_path):
    good = JPEGS[0].read_bytes()
    files = {"good.jpeg": good, "truncated.jpeg": good[: len(good) // 2],
             "notes.jpg": b"patient notes, not an image\n", "empty.jpeg": b""}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    paths = [str(tmp_path / n) for n in files] + [str(tmp_path / "missing.jpeg"), str(DICOMS[0])]
    preds = stream(shipped, paths, batch_size=4)
    assert [p.name for p in preds] == [Path(p).name for p in paths]
    assert [p.status for p in preds] == ["ok", "error", "error", "error", "error", "ok"]
    for p in preds:
        assert (p.probability is None) == (not p.ok)
        assert p.ok or p.name in p.message
    alone = stream(shipped, [paths[0], paths[-1]])
    assert_close([preds[0].probability, preds[-1].probability], [p.probability for p in alone],
                 BF16_ATOL, "probability")


def test_zip_members_are_predicted_like_the_loose_files(shipped, tmp_path):
    archive = tmp_path / "batch.zip"
    archive.write_bytes(zip_bytes({"a/normal.jpeg": NORMAL[0].read_bytes(),
                                   "pneumonia.jpeg": PNEUMONIA[0].read_bytes()}))
    in_zip = stream(shipped, [archive])
    loose = stream(shipped, [NORMAL[0], PNEUMONIA[0]])
    assert [p.name for p in in_zip] == ["batch.zip/a/normal.jpeg", "batch.zip/pneumonia.jpeg"]
    assert [p.sha256 for p in in_zip] == [hashlib.sha256(f.read_bytes()).hexdigest()
                                          for f in (NORMAL[0], PNEUMONIA[0])]
    assert_close([p.probability for p in in_zip], [p.probability for p in loose], 1e-6, "probability")


def test_temperature_from_the_card_divides_the_logit_margin(tmp_path):
    cold = Predictor.from_checkpoint(write_tiny_checkpoint(tmp_path / "t1", temperature=1.0), plain_policy())
    warm = Predictor.from_checkpoint(write_tiny_checkpoint(tmp_path / "t2", temperature=2.0), plain_policy())
    assert warm.card.temperature == 2.0
    arrays = resized_samples(cold.prep, JPEGS)
    margin_cold, margin_warm = logit(cold.predict_arrays(arrays)), logit(warm.predict_arrays(arrays))
    assert np.all(np.abs(margin_cold) > 1e-3)     # not all at 0.5, where halving shows nothing
    assert_close(margin_warm, margin_cold / 2, 1e-4 * np.abs(margin_cold).max(), "logit margin")


def test_selected_policy_matches_float32_on_real_images(shipped, shipped_plain, record_property):
    fast = [p.probability for p in stream(shipped, REAL)]
    plain = [p.probability for p in stream(shipped_plain, REAL)]
    diff = assert_close(fast, plain, BF16_ATOL, f"probability ({shipped.policy.label} vs float32)")
    record_property("max_probability_difference", diff)
    print(f"\n{shipped.policy.label} vs float32: max |probability difference| {diff:.2e} "
          f"over {len(REAL)} real images")


def test_folded_batchnorm_matches_the_unfolded_model(shipped_plain):
    folded = Predictor(shipped_plain.model, shipped_plain.card, plain_policy(), fuse=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.runner._fast.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in folded.model.modules())  # the shared model is untouched
    arrays = resized_samples(folded.prep, JPEGS + DICOMS)
    assert_close(folded.predict_arrays(arrays), shipped_plain.predict_arrays(arrays), 1e-5, "probability")


def test_shipped_model_ranks_pneumonia_above_normal(shipped):
    """Real probabilities: the sample's pneumonia images score higher than its normal ones on average."""
    arrays = resized_samples(shipped.prep, NORMAL + PNEUMONIA)
    probs = shipped.predict_arrays(arrays)
    assert probs[len(NORMAL):].mean() > probs[:len(NORMAL)].mean()


@pytest.mark.skipif(not (SHARED_DATA / "kermany224" / "train").is_dir(), reason="../shared/data is not here")
def test_selected_policy_matches_float32_on_more_shared_images(shipped, shipped_plain, record_property):
    folder = SHARED_DATA / "kermany224" / "train"   # precision only: the split does not matter
    paths = [str(p) for c in ("NORMAL", "PNEUMONIA") for p in sorted((folder / c).glob("*.jpeg"))[:16]]
    fast = [p.probability for p in stream(shipped, paths)]
    plain = [p.probability for p in stream(shipped_plain, paths)]
    diff = assert_close(fast, plain, BF16_ATOL, "probability")
    record_property("max_probability_difference", diff)
    print(f"\n{shipped.policy.label} vs float32: max |probability difference| {diff:.2e} "
          f"over {len(paths)} shared Kermany images")
