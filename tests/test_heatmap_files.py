"""engine.inference.heatmap_files: heatmaps of a stream of real predictions, a batch at a time."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.inference.explain import Explainer
from engine.inference.heatmap_files import HeatmapFolder, safe_png_name
from engine.inference.overlay import side_by_side
from engine.inference.predictor import Predictor
from engine.inputs.sources import iter_inputs
from helpers import NORMAL, PNEUMONIA, SHIPPED_MODEL


@pytest.fixture(scope="module")
def predictions():
    predictor = Predictor.from_checkpoint(SHIPPED_MODEL)
    preds = list(predictor.predict_stream(list(iter_inputs([*NORMAL[:3], *PNEUMONIA[:2]])), keep_images=True))
    assert all(p.ok for p in preds)
    return predictor, preds


def test_every_image_gets_its_own_heatmap_batch_by_batch(predictions, tmp_path):
    predictor, preds = predictions
    folder = HeatmapFolder(predictor, tmp_path / "maps", batch_size=2)
    for p in preds:
        folder.add(p.name, p)
    assert folder.close() == len(preds)
    explainer = Explainer(predictor.model, predictor.card, predictor.policy)
    for p in preds:
        written = cv2.cvtColor(cv2.imread(str(tmp_path / "maps" / safe_png_name(p.name, set()))), cv2.COLOR_BGR2RGB)
        heat = explainer.explain_images([p.model_input])[0]
        expected = side_by_side(p.image.pixels, heat)
        assert written.shape == expected.shape
        # the written map and a fresh one agree (layer4-only path vs the whole network: float tolerance)
        assert np.abs(written.astype(int) - expected.astype(int)).mean() < 2.0, p.name


def test_a_grad_cam_that_cannot_load_is_reported(predictions, tmp_path):
    predictor, preds = predictions

    class Broken:
        card, policy = predictor.card, predictor.policy
        load_explainer = Predictor.load_explainer   # the real loader, on a network that cannot load

        @property
        def model(self):
            raise RuntimeError("weights missing")

    with pytest.raises(RuntimeError, match="weights missing"):
        HeatmapFolder(Broken(), tmp_path / "early", batch_size=2).load_explainer()
    folder = HeatmapFolder(Broken(), tmp_path / "maps", batch_size=2)
    folder.add(preds[0].name, preds[0])
    with pytest.raises(RuntimeError, match="weights missing"):
        folder.add(preds[1].name, preds[1])
