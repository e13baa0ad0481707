"""Pure image helpers for display: thumbnails as data URIs, display-size copies, review panels."""

from __future__ import annotations

import base64
from typing import Optional

import numpy as np

from engine.worklist.ingest import THUMBNAIL_PX, fit_within, thumbnail_data_uri  # noqa: F401 (re-exported)
from engine.inference.overlay import colorize, overlay_heatmap, to_gray_rgb, window_level
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


def window_presets(raw: np.ndarray, center: Optional[float], width: Optional[float]) -> dict[str, tuple[float, float]]:
    """Window/level presets in the DICOM's own units: the header's window (when it has one), the full
    range of values, and the 1st-99th percentile (ignores a few burned-in or collimator extremes)."""
    lo, hi = float(np.min(raw)), float(np.max(raw))
    p1, p99 = (float(v) for v in np.percentile(raw, [1, 99]))
    out = {}
    if center is not None and width is not None and width > 0:
        out[f"Header (WC {center:g} / WW {width:g})"] = (float(center), float(width))
    out[f"Full range ({lo:g} to {hi:g})"] = ((lo + hi) / 2, max(hi - lo, 1.0))
    out[f"1st-99th percentile ({p1:g} to {p99:g})"] = ((p1 + p99) / 2, max(p99 - p1, 1.0))
    return out


def window_units(raw: np.ndarray, center: float, width: float, *, monochrome1: bool, invert: bool) -> np.ndarray:
    """Display gray in [0, 1] (white = dense) from DICOM values, a window in the same units, and the
    photometric interpretation (MONOCHROME1 stores dense as low); ``invert`` flips the result."""
    out = window_level(raw.astype(np.float32), center, width)      # the same window, in the file's units
    return 1.0 - out if monochrome1 != invert else out
