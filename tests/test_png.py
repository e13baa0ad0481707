"""engine.inference.png: lossless PNGs of real heatmap panels, from fpng and from the OpenCV fallback."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import engine.inference.png as png
from engine.decode import read_image
from engine.inference.overlay import side_by_side
from helpers import DICOMS, PNEUMONIA


def _decoded(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(params=["fpng", "opencv"])
def encoder(request, monkeypatch):
    if request.param == "fpng":
        if png._fpng is None:
            pytest.skip("fpng is not installed")   # requirements.txt installs it; the fallback is tested below
    else:
        monkeypatch.setattr(png, "_fpng", None)
    return png.encode_rgb_png


@pytest.mark.parametrize("source", [PNEUMONIA[0], DICOMS[0]], ids=["jpeg", "dicom"])
def test_heatmap_panels_round_trip_pixel_exact(encoder, source):
    pixels = read_image(source).pixels
    heat = np.clip(1.0 - np.hypot(*np.meshgrid(np.linspace(-1, 1, 40), np.linspace(-1, 1, 30))), 0, 1)
    rgb = side_by_side(pixels, heat.astype(np.float32))
    data = encoder(rgb)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(_decoded(data), rgb)


def test_odd_sizes_and_strided_views(encoder):
    rgb = np.random.default_rng(0).integers(0, 256, (7, 13, 3), dtype=np.uint8)
    assert np.array_equal(_decoded(encoder(rgb)), rgb)
    view = rgb[::2, ::-1]   # not contiguous
    assert np.array_equal(_decoded(encoder(view)), view)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8),
                                 np.zeros((4, 4, 3), np.float32)], ids=["gray", "rgba", "float"])
def test_anything_but_rgb_uint8_is_refused(encoder, bad):
    with pytest.raises(ValueError, match="RGB uint8"):
        encoder(bad)
