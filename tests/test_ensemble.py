"""A deep ensemble built from small real checkpoints is one model to every caller."""

import numpy as np
import pytest
import torch

from engine.model.checkpoint import ENSEMBLE, load_checkpoint, read_card
from engine.inference.explain import Explainer
from engine.inference.predictor import Predictor
from engine.inputs.sources import iter_inputs
from helpers import JPEGS, write_tiny_checkpoint
from training.ensemble import build_ensemble


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    members = [write_tiny_checkpoint(root / f"m{i}", seed=i, temperature=0.5 + i) for i in range(2)]
    return build_ensemble(members, root / "ensemble", name="tiny ensemble"), members


def test_the_card_lists_the_members_and_the_output_is_their_mean_probability(ensemble):
    folder, members = ensemble
    card = read_card(folder)
    assert card.architecture == ENSEMBLE and card.name == "tiny ensemble"
    listed = card.extra["ensemble"]["members"]
    assert [m["temperature"] for m in listed] == [0.5, 1.5] and all(len(m["weights_sha256"]) == 64 for m in listed)
    net, _ = load_checkpoint(folder)
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        expected = np.mean([torch.softmax(load_checkpoint(m)[0](x) / t, 1).numpy()
                            for m, t in zip(members, (0.5, 1.5))], axis=0)
        got = torch.softmax(net(x), 1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_predictor_scores_an_ensemble_folder_like_any_checkpoint(ensemble, backend):
    folder, members = ensemble
    predictor = Predictor.from_checkpoint(folder, backend=backend)
    preds = list(predictor.predict_stream(iter_inputs(JPEGS[:4])))
    assert all(p.ok for p in preds)
    singles = [Predictor.from_checkpoint(m, backend="torch").predict_stream(iter_inputs(JPEGS[:4])) for m in members]
    mean = np.mean([[p.probability for p in s] for s in singles], axis=0)
    np.testing.assert_allclose([p.probability for p in preds], mean, atol=2e-3)


def test_grad_cam_averages_the_members_maps(ensemble):
    folder, members = ensemble
    net, card = load_checkpoint(folder)
    images = [np.random.default_rng(i).random((32, 32)).astype(np.float32) for i in range(2)]
    maps = Explainer(net, card).explain_images(images)
    per_member = [Explainer(*load_checkpoint(m)).explain_images(images) for m in members]
    mean = np.mean(per_member, axis=0)
    peak = mean.reshape(2, -1).max(1)[:, None, None]
    np.testing.assert_allclose(maps, mean / peak, atol=1e-5)
    assert maps.shape == (2, 32, 32) and np.isclose(maps.reshape(2, -1).max(1), 1.0).all()


def test_the_cli_writes_an_ensemble_and_refuses_a_single_member(ensemble, tmp_path, capsys):
    from training.ensemble import main
    _, members = ensemble
    assert main([str(members[0]), "--out", str(tmp_path / "one")]) == 2
    assert "at least two member checkpoints" in capsys.readouterr().err
    assert main([*map(str, members), "--out", str(tmp_path / "two"), "--half-weights"]) == 0
    assert read_card(tmp_path / "two").architecture == ENSEMBLE
