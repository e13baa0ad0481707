"""engine.inference.overlay: sizes, exact blending limits, RGB channel order, window/level by hand."""

import numpy as np
import pytest

from engine.decode import read_image
from engine.inference.overlay import colour_scale, COLORMAPS, colorize, overlay_heatmap, side_by_side, to_gray_rgb, window_level
from helpers import DICOMS


@pytest.fixture(scope="module")
def radiograph():
    """A real, non-square radiograph (the MONOCHROME1 JPEG 2000 DICOM), shrunk to keep it quick."""
    return read_image(DICOMS[0]).pixels[::8, ::8].copy()


def test_output_is_rgb_uint8_at_the_image_size_for_a_smaller_heatmap(radiograph):
    heat = np.random.default_rng(0).random((7, 7), dtype=np.float32)
    out = overlay_heatmap(radiograph, heat)
    assert radiograph.shape[0] != radiograph.shape[1]
    assert out.shape == (*radiograph.shape, 3) and out.dtype == np.uint8
    both = side_by_side(radiograph, heat)
    assert both.shape == (radiograph.shape[0], 2 * radiograph.shape[1], 3)


def test_opacity_zero_gives_the_gray_image_exactly(radiograph):
    gray = np.round(radiograph * 255).astype(np.uint8)
    out = overlay_heatmap(radiograph, np.ones((4, 4), np.float32), opacity=0.0)
    assert np.array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))
    assert np.array_equal(to_gray_rgb(radiograph), out)


def test_hot_is_red_and_cold_is_blue_in_rgb_order():
    image = np.full((10, 20), 0.5, np.float32)
    heat = np.zeros((10, 20), np.float32)
    heat[:, 10:] = 1.0
    out = overlay_heatmap(image, heat, colormap="jet", opacity=1.0).astype(int)
    hot, cold = out[5, 15], out[5, 5]
    assert hot[0] > 100 and hot[1] < 20 and hot[2] < 20, f"max heat shows {hot}, not red"
    assert cold[2] > 100 and cold[0] < 20 and cold[1] < 20, f"zero heat shows {cold}, not blue"


def test_min_value_leaves_faint_heat_untinted():
    image = np.full((4, 4), 0.25, np.float32)
    heat = np.array([[0.05] * 4, [0.8] * 4, [0.05] * 4, [0.8] * 4], np.float32)
    out = overlay_heatmap(image, heat, opacity=0.5, min_value=0.1)
    assert np.array_equal(out[0], to_gray_rgb(image)[0])
    assert not np.array_equal(out[1], to_gray_rgb(image)[1])


def test_the_overlay_fades_in_above_the_cut_off_without_a_hard_edge():
    image = np.full((1, 5), 0.5, np.float32)
    heat = np.array([[0.29, 0.32, 0.35, 0.38, 0.6]], np.float32)       # cut-off 0.3, ramp 0.1
    out = overlay_heatmap(image, heat, opacity=0.8, min_value=0.3).astype(int)
    base = to_gray_rgb(image).astype(int)
    change = np.abs(out - base).sum(axis=2)[0]
    assert change[0] == 0 and 0 < change[1] < change[2] < change[3]     # grows smoothly
    full = np.abs(overlay_heatmap(image, heat, opacity=0.8).astype(int) - base).sum(axis=2)[0]
    assert change[4] == full[4]                                          # full tint past the ramp


def test_the_uniform_and_the_per_pixel_blend_agree_on_a_real_radiograph(radiograph):
    """Without a cut-off the blend is one OpenCV weighted sum; past the ramp the per-pixel path
    gives the same tint (to within a rounding step)."""
    heat = 0.2 + 0.8 * np.random.default_rng(1).random((9, 9), dtype=np.float32)
    uniform = overlay_heatmap(radiograph, heat, opacity=0.4).astype(int)
    per_pixel = overlay_heatmap(radiograph, heat, opacity=0.4, min_value=0.05).astype(int)
    assert np.abs(uniform - per_pixel).max() <= 1


def test_colour_scale_runs_from_cold_to_hot():
    bar = colour_scale("jet", width=64, height=4)
    assert bar.shape == (4, 64, 3) and bar[0, 0, 2] > bar[0, 0, 0] and bar[0, -1, 0] > bar[0, -1, 2]


def test_window_level_by_hand():
    # center 0.5, width 0.2: the window runs from 0.4 (black) to 0.6 (white)
    pixels = np.array([0.3, 0.4, 0.45, 0.5, 0.6, 0.7], np.float32)
    expected = [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]
    np.testing.assert_allclose(window_level(pixels, 0.5, 0.2), expected, atol=1e-6)
    assert window_level(pixels, 0.5, 0.2).dtype == np.float32


def test_colorize_resizes_to_the_given_size():
    assert colorize(np.zeros((3, 5), np.float32), size=(30, 50)).shape == (30, 50, 3)


def test_bad_colormap_and_opacity_are_refused():
    image, heat = np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="rainbow") as err:
        overlay_heatmap(image, heat, colormap="rainbow")
    assert all(name in str(err.value) for name in COLORMAPS)
    for opacity in (-0.1, 1.5):
        with pytest.raises(ValueError, match=str(opacity)):
            overlay_heatmap(image, heat, opacity=opacity)
