"""Pure image helpers for display: thumbnails as data URIs, display-size copies, review panels."""

from __future__ import annotations

import base64
import math
import zlib
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from engine.worklist.ingest import THUMBNAIL_PX, fit_within, thumbnail_data_uri  # noqa: F401 (re-exported)
from engine.inference.overlay import RAMP, colorize, overlay_heatmap, to_gray_rgb, window_level
from engine.inference.png import encode_rgb_png

DISPLAY_MAX_PX = 1024      # longest side of the images the review page draws side by side
FULL_RES_MAX_PX = 4096     # longest side of the linked zoom view: a radiograph's own pixels (CR/DX films
#                            are up to about 4,300 px; larger ones are shrunk to this)


def png_data_uri(rgb: np.ndarray) -> str:
    """A lossless PNG of an RGB uint8 image as a ``data:`` URI (for Plotly's image ``source``: the
    browser gets the compressed file, not a JSON array of every pixel)."""
    return "data:image/png;base64," + base64.b64encode(encode_rgb_png(rgb)).decode("ascii")


def review_panels(display: np.ndarray, heatmap: Optional[np.ndarray], *, center: float = 0.5,
                  width: float = 1.0, colormap: str = "jet", opacity: float = 0.4, min_heat: float = 0.0
                  ) -> tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
    """(original, overlay, heatmap alone) as RGB uint8 at the display size.

    The window/level applies to the radiograph only (a display setting, never a model input);
    the overlay tints only where the heat (0-1) reaches ``min_heat``, so the rest of the film reads
    as it is; the heatmap alone is drawn whole, at the same size, so the three panels line up.
    """
    shown = window_level(display, center, width)
    original = to_gray_rgb(shown)
    if heatmap is None:
        return original, None, None
    overlay = overlay_heatmap(shown, heatmap, colormap=colormap, opacity=opacity, min_value=min_heat)
    alone = colorize(heatmap, colormap, size=display.shape[:2])
    return original, overlay, alone


@dataclass(frozen=True)
class WindowScale:
    """The range of a study's values and the precision its window is shown and stepped in: a step of
    about a thousandth of the range rounded down to a power of ten (10 for values 0-30,000, 0.001 for
    the 0-1 display scale), and as many decimals as that step has."""

    lo: float
    hi: float
    step: float
    decimals: int

    @classmethod
    def of(cls, lo: float, hi: float) -> "WindowScale":
        span = max(float(hi) - float(lo), 1e-6)
        step = 10.0 ** math.floor(math.log10(span / 1000))
        return cls(float(lo), float(hi), step, max(0, -math.floor(math.log10(step))))

    def fmt(self, value: float) -> str:
        """A value as the reader sees it: 12476, not 12475.53348388672."""
        return f"{round(float(value), self.decimals):.{self.decimals}f}"

    def round(self, value: float) -> float:
        return round(float(value), self.decimals)


def heat_alone(heatmap: np.ndarray, size: tuple[int, int], colormap: str = "jet") -> np.ndarray:
    """The heatmap by itself, coloured, at ``size`` (H, W): the panel that lines up with the radiograph."""
    return colorize(heatmap, colormap, size=size)


def window_presets(raw: np.ndarray, center: Optional[float], width: Optional[float],
                   scale: Optional[WindowScale] = None) -> dict[str, tuple[float, float]]:
    """Window/level presets in the DICOM's own units: the header's window (when it has one), the full
    range of values, and the 1st-99th percentile (ignores a few burned-in or collimator extremes).
    Values and labels at the precision of ``scale`` (by default, that of the image's range)."""
    lo, hi = float(np.min(raw)), float(np.max(raw))
    sc = scale or WindowScale.of(lo, hi)
    p1, p99 = (float(v) for v in np.percentile(raw, [1, 99]))
    f, r = sc.fmt, sc.round
    out = {}
    if center is not None and width is not None and width > 0:
        out[f"Header (WC {f(center)} / WW {f(width)})"] = (r(center), r(width))
    out[f"Full range ({f(lo)} to {f(hi)})"] = (r((lo + hi) / 2), r(max(hi - lo, sc.step)))
    out[f"1st-99th percentile ({f(p1)} to {f(p99)})"] = (r((p1 + p99) / 2), r(max(p99 - p1, sc.step)))
    return out


def packed_values(values: np.ndarray, lo: float, hi: float) -> tuple[str, float]:
    """A study's values for the browser as (payload, unit): value = lo + q * unit with q 16-bit, exact for
    whole numbers spanning up to 65,535 (unit 1; CR/DX values are), else the range in 65,535 steps (far
    below what a window shows). The high bytes then the low bytes (zlib packs them a fifth smaller than
    interleaved), zlib-compressed, base64: the viewer inflates them with the browser's DecompressionStream."""
    shifted = values.astype(np.float64) - lo
    span = max(hi - lo, 1e-12)
    unit = 1.0 if span <= 65535 and np.array_equal(shifted, np.rint(shifted)) else span / 65535
    q = np.clip(np.rint(shifted / unit), 0, 65535).astype(np.uint16).ravel()
    planes = np.concatenate([(q >> 8).astype(np.uint8), (q & 0xFF).astype(np.uint8)])
    return base64.b64encode(zlib.compress(planes.tobytes(), 1)).decode("ascii"), unit


def heat_layer(heatmap: np.ndarray, size: tuple[int, int], *, colormap: str = "jet", opacity: float = 0.4,
               min_heat: float = 0.0) -> np.ndarray:
    """The heatmap as an RGBA uint8 layer of ``size`` (H, W) whose alpha is the engine's blend weight
    (``engine.inference.overlay``: the opacity, faded in over ``RAMP`` above ``min_heat``): drawn over the
    windowed radiograph, it gives the overlay panel (to within one grey level) without the server
    redrawing it for each window."""
    heat = np.clip(heatmap, 0, 1).astype(np.float32)
    if heat.shape != tuple(size):
        heat = cv2.resize(heat, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    if min_heat <= 0:
        alpha = np.full(heat.shape, opacity, np.float32)
    else:
        ramp = np.clip((heat - min_heat) / RAMP, 0.0, 1.0)
        alpha = opacity * ramp * ramp * (3.0 - 2.0 * ramp)
    a = np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.dstack([colorize(heat, colormap), a])


def rgba_png_data_uri(rgba: np.ndarray) -> str:
    """A lossless PNG of an RGBA uint8 image as a ``data:`` URI."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgba), cv2.COLOR_RGBA2BGRA),
                           [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ValueError("OpenCV could not encode the heat layer as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def window_units(raw: np.ndarray, center: float, width: float, *, monochrome1: bool, invert: bool) -> np.ndarray:
    """Display gray in [0, 1] (white = dense) from DICOM values, a window in the same units, and the
    photometric interpretation (MONOCHROME1 stores dense as low); ``invert`` flips the result."""
    out = window_level(raw.astype(np.float32), center, width)      # the same window, in the file's units
    return 1.0 - out if monochrome1 != invert else out
