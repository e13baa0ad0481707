"""engine.model.checkpoint: safetensors + model card round trip, and every way a folder can be wrong."""

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from engine.model.checkpoint import CARD_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint
from engine.model.device import plain_policy
from engine.errors import CheckpointError
from engine.inference.predictor import Predictor
from helpers import (JPEGS, SHIPPED_MODEL, assert_close, resized_samples, tiny_card, tiny_model,
                     write_tiny_checkpoint)


@pytest.fixture(scope="module")
def _saved(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def ckpt(_saved, tmp_path):
    """A fresh copy of a tiny resnet18_cbam checkpoint (32 px, random weights) to spoil."""
    return Path(shutil.copytree(_saved, tmp_path / "ckpt"))


def probabilities(model, card, paths=JPEGS):
    predictor = Predictor(model, card, plain_policy(), fuse=False)
    return predictor.predict_arrays(resized_samples(card.preprocessing, paths))


def test_float32_round_trip_gives_identical_probabilities(tmp_path):
    model, card = tiny_model(), tiny_card(temperature=1.5, threshold=0.3, name="tiny")
    save_checkpoint(model, card, tmp_path)
    loaded, loaded_card = load_checkpoint(tmp_path)
    assert loaded_card == card
    assert not loaded.training
    assert np.array_equal(probabilities(loaded, loaded_card), probabilities(model, card))


def test_float16_storage_changes_real_probabilities_by_less_than_1e_2(tmp_path):
    model, card = load_checkpoint(SHIPPED_MODEL)
    save_checkpoint(model, card, tmp_path, half=True)
    with safe_open(str(tmp_path / WEIGHTS_FILE), "pt") as f:
        assert f.get_tensor("conv1.weight").dtype == torch.float16
    half_model, _ = load_checkpoint(tmp_path)
    assert next(half_model.parameters()).dtype == torch.float32   # loaded back as float32
    assert_close(probabilities(half_model, card), probabilities(model, card), 1e-2, "probability")


# ------------------------------------------------------------------ folders that are not right

def edit_card(folder: Path, **change) -> None:
    card = json.loads((folder / CARD_FILE).read_text())
    (folder / CARD_FILE).write_text(json.dumps(card | change))


def test_card_naming_another_architecture_fails_naming_the_file(ckpt):
    edit_card(ckpt, architecture="resnet18")   # the weights are resnet18_cbam's
    with pytest.raises(CheckpointError, match="'resnet18'") as err:
        load_checkpoint(ckpt)
    assert str(ckpt / WEIGHTS_FILE) in str(err.value)


@pytest.mark.parametrize("change", [{"input": {"image_size": 32, "in_channels": 3}},
                                    {"class_names": ["normal", "bacterial", "viral"]}],
                         ids=["3-channel", "3-class"])
def test_card_declaring_another_shape_fails_naming_the_file(ckpt, change):
    edit_card(ckpt, **change)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt)
    assert str(ckpt / WEIGHTS_FILE) in str(err.value)


def test_unknown_architecture_in_card_names_the_card(ckpt):
    edit_card(ckpt, architecture="resnet19")
    with pytest.raises(CheckpointError, match="resnet19") as err:
        load_checkpoint(ckpt)
    assert str(ckpt / CARD_FILE) in str(err.value) and "resnet18_cbam" in str(err.value)


@pytest.mark.parametrize("remove", [CARD_FILE, WEIGHTS_FILE])
def test_missing_file_names_it(ckpt, remove):
    (ckpt / remove).unlink()
    with pytest.raises(CheckpointError, match=remove.replace(".", r"\.")):
        load_checkpoint(ckpt)


def test_non_existent_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_invalid_card_json(ckpt):
    (ckpt / CARD_FILE).write_text('{"architecture": "resnet18_cbam", ')
    with pytest.raises(CheckpointError, match="not a valid model card"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("change", [{"temperature": 0.0}, {"temperature": -1.0},
                                    {"decision_threshold": {"value": 1.7, "rule": "typo"}}],
                         ids=["temperature-0", "temperature-negative", "threshold-1.7"])
def test_card_with_impossible_calibration_is_refused(ckpt, change):
    edit_card(ckpt, **change)
    with pytest.raises(CheckpointError, match=str(ckpt / CARD_FILE)):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("corrupt", [lambda b: b[: len(b) // 2], lambda b: b"\xff" * 64, lambda b: b""],
                         ids=["truncated", "garbage", "empty"])
def test_corrupt_safetensors(ckpt, corrupt):
    weights = ckpt / WEIGHTS_FILE
    weights.write_bytes(corrupt(weights.read_bytes()))
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(ckpt)


class _Planted:
    """Unpickling this object creates a file: proof that pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_loading_never_unpickles(ckpt, tmp_path, writer):
    folder, marker = ckpt, tmp_path / "unpickled"
    payload = {"conv1.weight": torch.zeros(1), "planted": _Planted(marker)}
    if writer == "pickle":
        (folder / WEIGHTS_FILE).write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, folder / WEIGHTS_FILE)
    with pytest.raises(CheckpointError):
        load_checkpoint(folder)
    assert not marker.exists()


@pytest.mark.parametrize("folder", [SHIPPED_MODEL, SHIPPED_MODEL.parent / "previous" / "resnet18_cbam_v1"],
                         ids=["default", "previous"])
def test_the_committed_models_are_complete_checkpoints(folder):
    """The default and the model it replaced (docs/MODEL_SELECTION.md): loadable by every caller,
    with a card, an out-of-population score and their training images' hashes."""
    from engine.model.checkpoint import read_card
    from engine.model.ood import FeatureOOD
    from engine.inference.predictor import Predictor
    from engine.evaluation.provenance import overlap_warning
    from engine.inputs.sources import iter_inputs
    card = read_card(folder)
    assert card.architecture == "resnet18_cbam" and 0 < card.threshold < 1 and card.version
    assert FeatureOOD.load(folder) is not None
    preds = list(Predictor.from_checkpoint(folder).predict_stream(iter_inputs([str(p) for p in JPEGS])))
    assert all(p.ok and 0 <= p.probability <= 1 for p in preds)
    shas = [p.sha256 for p in preds]
    assert "training split" in overlap_warning(folder, shas)      # the samples come from its training images


@pytest.mark.parametrize("change", [{"temperature": 1e-310}, {"temperature": 1e308},
                                    {"decision_threshold": float("nan")},
                                    {"input": {"image_size": 0, "in_channels": 1, "intensity": "zscore"}},
                                    {"architecture": None}],
                         ids=["temperature-1e-310", "temperature-1e308", "threshold-nan", "image-size-0",
                              "architecture-none"])
def test_cards_that_would_make_every_probability_degenerate_are_refused(ckpt, change):
    edit_card(ckpt, **change)
    with pytest.raises(CheckpointError, match=str(ckpt / CARD_FILE)):
        load_checkpoint(ckpt)


def test_a_card_that_is_not_an_object_is_refused_with_one_message(ckpt):
    (ckpt / CARD_FILE).write_text("[1, 2, 3]")
    with pytest.raises(CheckpointError, match="is not a valid model card: a model card is a JSON object"):
        load_checkpoint(ckpt)


def test_a_bare_number_threshold_is_read_as_the_threshold(ckpt):
    edit_card(ckpt, decision_threshold=0.3)
    assert load_checkpoint(ckpt)[1].threshold == 0.3
