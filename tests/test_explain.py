"""engine.inference.explain: heatmap shapes and ranges, Grad-CAM on a hand-built model, hooks, threads."""

import threading

import numpy as np
import pytest
import torch
from torch import nn

from engine.model.checkpoint import ModelCard, load_checkpoint
from engine.inference.explain import METHODS, Explainer
from engine.model.preprocess import Preprocessing
from helpers import JPEGS, SHIPPED_MODEL, assert_close, module_hooks, resized_samples, tiny_card, tiny_model


class Planted(nn.Module):
    """conv 3x3 -> ReLU -> global average pool -> linear, with hand-set weights.

    Channel 0 is the local mean brightness, channel 1 the local darkness; the pneumonia logit reads
    channel 0 and the normal logit channel 1. After the per-image z-score a bright square is the
    only positive region, so Grad-CAM at ``act`` (gradients +-1/HW per channel) is the ReLU of the
    local mean there: its heat lies on the square and nowhere else.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.stack([torch.full((1, 3, 3), 1 / 9), torch.full((1, 3, 3), -1 / 9)]))
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.act(self.conv(x))), 1))


SIZE = 32
QUADRANTS = {"top-left": (slice(0, 16), slice(0, 16)), "top-right": (slice(0, 16), slice(16, 32)),
             "bottom-left": (slice(16, 32), slice(0, 16)), "bottom-right": (slice(16, 32), slice(16, 32))}


def image_with_square(quadrant: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = (0.3 + 0.05 * rng.standard_normal((SIZE, SIZE))).astype(np.float32)
    rows, cols = QUADRANTS[quadrant]
    img[rows.start + 5:rows.start + 11, cols.start + 4:cols.start + 10] = 0.9
    return img


def assert_heat_in(heatmap: np.ndarray, quadrant: str) -> None:
    rows, cols = QUADRANTS[quadrant]
    peak = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    assert rows.start <= peak[0] < rows.stop and cols.start <= peak[1] < cols.stop, f"peak {peak} not {quadrant}"
    share = heatmap[rows, cols].sum() / heatmap.sum()
    assert share > 0.9, f"only {share:.0%} of the heat is in the {quadrant} quadrant"


def planted_explainer() -> Explainer:
    card = ModelCard(architecture="planted (not in the registry)", preprocessing=Preprocessing(SIZE))
    return Explainer(Planted(), card, layer="act")


def test_gradcam_finds_squares_in_two_quadrants_in_one_batch():
    quadrants = ["top-left", "bottom-right", "top-right"]
    maps = planted_explainer().explain_images([image_with_square(q, i) for i, q in enumerate(quadrants)])
    for heatmap, quadrant in zip(maps, quadrants):
        assert_heat_in(heatmap, quadrant)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_one_map_per_image_in_0_1(method):
    model, card = tiny_model(), tiny_card(image_size=SIZE)
    maps = Explainer(model, card).explain_images(resized_samples(card.preprocessing, JPEGS[:2]), method)
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0


def test_shipped_model_gradcam_has_the_input_size():
    model, card = load_checkpoint(SHIPPED_MODEL)
    maps = Explainer(model, card).explain_images(resized_samples(card.preprocessing, JPEGS[:2]))
    size = card.preprocessing.image_size
    assert maps.shape == (2, size, size)
    assert maps.min() >= 0.0 and maps.max() <= 1.0


def test_no_hooks_or_gradients_are_left_behind():
    model, card = tiny_model(), tiny_card(image_size=SIZE)
    explainer = Explainer(model, card)
    batch = card.preprocessing(resized_samples(card.preprocessing, JPEGS[:1]))
    for method in METHODS:
        explainer.explain(batch, method)
    assert module_hooks(explainer._margin, model) == []
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is None for p in explainer._margin.parameters())


def test_unknown_method_and_layer_are_refused():
    with pytest.raises(ValueError, match="gradcam"):
        planted_explainer().explain(torch.zeros(1, 1, SIZE, SIZE), "lime")
    with pytest.raises(ValueError, match="conv"):
        Explainer(Planted(), tiny_card(), layer="layer4")


def test_two_threads_give_the_sequential_maps():
    model, card = tiny_model(seed=3), tiny_card(image_size=64)
    explainer = Explainer(model, card)
    arrays = resized_samples(card.preprocessing, JPEGS)
    halves = [arrays[:6], arrays[6:]]
    sequential = [explainer.explain_images(h) for h in halves]
    together, start = [None, None], threading.Barrier(2)

    def run(i):
        start.wait()
        together[i] = explainer.explain_images(halves[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        assert_close(together[i], sequential[i], 1e-6, f"heatmaps of thread {i}")


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_grad_cam_from_the_last_stage_input_equals_grad_cam_on_the_whole_network(backend):
    """The exported graph, and the torch backend's folded network, return layer3's output with each
    prediction; Captum on layer4 and the head alone gives the same maps as on the whole network
    (float32 here: the folded BatchNorm's rounding is all that differs)."""
    from engine.model.checkpoint import load_checkpoint
    from engine.model.device import plain_policy
    from engine.inference.predictor import Predictor
    from engine.inputs.sources import iter_inputs
    from helpers import DICOMS, JPEGS, SHIPPED_MODEL
    predictor = (Predictor.from_checkpoint(SHIPPED_MODEL, backend="onnx") if backend == "onnx" else
                 Predictor(*load_checkpoint(SHIPPED_MODEL), plain_policy(), checkpoint=SHIPPED_MODEL))
    preds = list(predictor.predict_stream(iter_inputs([*JPEGS[:6], *DICOMS]), keep_images=True))
    assert all(p.stage_input is not None and p.stage_input.shape == (256, 14, 14) for p in preds)
    explainer = Explainer(predictor.model, predictor.card, plain_policy())
    assert explainer.explains_stages
    whole = explainer.explain_images([p.model_input for p in preds])
    stage = explainer.explain_stages([p.stage_input for p in preds])
    np.testing.assert_allclose(stage, whole, atol=1e-4)


def test_the_results_writer_takes_grad_cam_from_the_graphs_layer3_output():
    """A C-STORE'd study forwarded as SR and capture, or ``engine.predict --dicom-out``: on a float32
    backend the writer's map is the one from layer3's output the exported graph returned (no second pass
    of the whole network); on a reduced-precision one, the whole network's, as Review shows it."""
    from engine.model.device import plain_policy
    from engine.inference.predictor import Predictor
    from engine.inputs.sources import iter_inputs
    from engine.pacs.dicom_out import ResultWriter
    from helpers import DICOMS, SHIPPED_MODEL
    predictor = Predictor.from_checkpoint(SHIPPED_MODEL, backend="onnx")
    [pred] = list(predictor.predict_stream(iter_inputs([DICOMS[0]]), keep_images=True))
    assert pred.stage_input is not None
    explainer = Explainer(predictor.model, predictor.card, plain_policy())
    writer = ResultWriter(predictor, explainer=explainer)
    assert predictor.exact_stage_inputs                           # ONNX Runtime float32
    heat = writer.heat(pred)
    np.testing.assert_array_equal(heat, explainer.explain_stages([pred.stage_input])[0])
    np.testing.assert_allclose(heat, explainer.explain_images([pred.model_input])[0], atol=1e-4)
    # a reduced-precision backend's layer3 output would move the map away from Review's: the whole network
    int8_predictor = Predictor.from_checkpoint(SHIPPED_MODEL, backend="onnx-int8")
    [quantised] = list(int8_predictor.predict_stream(iter_inputs([DICOMS[0]]), keep_images=True))
    assert quantised.stage_input is not None and not int8_predictor.exact_stage_inputs
    int8_writer = ResultWriter(int8_predictor, explainer=explainer)
    np.testing.assert_array_equal(int8_writer.heat(quantised), explainer.explain_images([quantised.model_input])[0])
