"""Pure image helpers for display: thumbnails as data URIs, display-size copies, review panels."""

from __future__ import annotations

import base64
from typing import Optional

import cv2
import numpy as np

from engine.overlay import colorize, overlay_heatmap, to_gray_rgb, window_level

THUMBNAIL_PX = 64          # longest side of a worklist thumbnail
DISPLAY_MAX_PX = 1024      # longest side of the images the review page draws


def fit_within(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink (never enlarge) a float [0, 1] image so its longest side is at most ``max_side``."""
    h, w = pixels.shape[:2]
    scale = max_side / max(h, w, 1)
    if scale >= 1.0:
        return np.ascontiguousarray(pixels, dtype=np.float32)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(pixels.astype(np.float32, copy=False), size, interpolation=cv2.INTER_AREA)


def thumbnail_data_uri(pixels: np.ndarray, max_side: int = THUMBNAIL_PX) -> str:
    """A small grayscale PNG of the image as a ``data:image/png;base64,...`` URI ("" if empty)."""
    if pixels is None or pixels.size == 0:
        return ""
    small = fit_within(pixels, max_side)
    ok, png = cv2.imencode(".png", np.clip(small * 255.0 + 0.5, 0, 255).astype(np.uint8),
                           [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii") if ok else ""


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
