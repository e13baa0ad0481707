"""Pure image helpers for display: thumbnails as data URIs, display-size copies, review panels."""

from __future__ import annotations

from typing import Optional

import numpy as np

from engine.ingest import THUMBNAIL_PX, fit_within, thumbnail_data_uri  # noqa: F401 (re-exported)
from engine.overlay import colorize, overlay_heatmap, to_gray_rgb, window_level

DISPLAY_MAX_PX = 1024      # longest side of the images the review page draws


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
