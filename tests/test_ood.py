"""The feature-space out-of-population score shipped with the model: fitted, stored, and telling."""

import numpy as np
import pytest

from engine.model.checkpoint import load_checkpoint
from engine.decode import read_image
from engine.model.ood import FeatureOOD, fit
from helpers import DICOMS, JPEGS, SHIPPED_MODEL
from training.ood import features


def test_fit_puts_the_target_share_of_validation_over_the_cutoff_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    train, val = rng.normal(size=(2000, 8)), rng.normal(size=(1000, 8))
    ood = fit(train, val, target_rate=0.05)
    assert ood.validation_rate == pytest.approx(0.05, abs=0.002)
    far = rng.normal(loc=6.0, size=(100, 8))
    assert np.mean(ood.distances(far) > ood.cutoff) == 1.0
    ood.save(tmp_path)
    again = FeatureOOD.load(tmp_path)
    assert again.cutoff == pytest.approx(ood.cutoff) and np.allclose(again.distances(far), ood.distances(far), rtol=1e-4)
    assert FeatureOOD.load(tmp_path / "nowhere") is None


def test_the_shipped_score_warns_on_the_adult_dicoms_and_not_on_kermany_samples():
    ood = FeatureOOD.load(SHIPPED_MODEL)
    assert ood is not None and ood.validation_rate == pytest.approx(0.05, abs=0.01)
    model, card = load_checkpoint(SHIPPED_MODEL)
    adult = ood.distances(features(model, card.preprocessing, [read_image(p).pixels for p in DICOMS]))
    kermany = ood.distances(features(model, card.preprocessing, [read_image(p).pixels for p in JPEGS]))
    assert (adult > ood.cutoff).all(), adult
    assert (kermany > ood.cutoff).sum() <= 2, kermany          # ~5% of in-population images warn by design
    assert "outside the training population" in ood.warning(float(adult[0]))
    assert ood.warning(float(kermany.min())) is None


def test_the_shipped_model_knows_its_training_images_and_an_evaluation_on_them_says_so():
    from engine.evaluation.provenance import overlap_warning, training_hashes, file_sha256
    seen = training_hashes(SHIPPED_MODEL)
    assert (len(seen["train"]), len(seen["val"])) == (4424, 782)        # the card's split counts
    samples = [file_sha256(p) for p in JPEGS]
    in_train = sum(s in seen["train"] for s in samples)
    assert in_train > 0                                                # the bundled sample is from train
    text = overlap_warning(SHIPPED_MODEL, samples)
    assert text.startswith(f"{in_train} of these {len(samples)} images were in the model's training split")
    assert overlap_warning(SHIPPED_MODEL, [file_sha256(p) for p in DICOMS]) == ""


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_every_backend_carries_the_feature_warning_to_the_prediction(backend):
    from engine.inference.predictor import Predictor
    from engine.inputs.sources import iter_inputs
    predictor = Predictor.from_checkpoint(SHIPPED_MODEL, backend=backend)
    assert predictor.ood is not None
    preds = {p.name: p for p in predictor.predict_stream(iter_inputs([*DICOMS, *JPEGS]))}
    for path in DICOMS:                               # adult films from elsewhere: header and image warn
        p = preds[path.name]
        assert p.ood_distance > predictor.ood.cutoff
        assert any("looks unlike the training images" in w for w in p.warnings)
        assert any("the patient is an adult" in w for w in p.warnings)
    kermany = [preds[path.name] for path in JPEGS]
    assert sum(p.ood_distance > predictor.ood.cutoff for p in kermany) <= 2
    assert all(p.probability is not None for p in kermany)          # a warning never hides the probability
