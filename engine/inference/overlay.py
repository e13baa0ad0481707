"""Pure numpy/OpenCV rendering of heatmaps over radiographs (RGB uint8 out, never BGR)."""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO,
             "viridis": cv2.COLORMAP_VIRIDIS, "hot": cv2.COLORMAP_HOT, "magma": cv2.COLORMAP_MAGMA}


def to_gray_rgb(image: np.ndarray) -> np.ndarray:
    """float [0, 1] (H, W) -> uint8 RGB (H, W, 3)."""
    return cv2.cvtColor(np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)


def window_level(image: np.ndarray, center: float, width: float) -> np.ndarray:
    """Display window on [0, 1] pixels: values below ``center - width/2`` black, above white."""
    width = max(float(width), 1e-6)
    return np.clip((image - (center - width / 2)) / width, 0.0, 1.0).astype(np.float32)


def colorize(heatmap: np.ndarray, colormap: str = "jet", size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """A [0, 1] heatmap -> uint8 RGB, resized to ``size`` = (H, W) when given."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap '{colormap}'; choose one of {', '.join(COLORMAPS)}")
    h = np.clip(heatmap, 0, 1).astype(np.float32)
    if size is not None and h.shape[:2] != tuple(size):
        h = cv2.resize(h, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    bgr = cv2.applyColorMap(np.clip(h * 255 + 0.5, 0, 255).astype(np.uint8), COLORMAPS[colormap])
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


RAMP = 0.1   # heat over which the overlay fades in above its cut-off


def colour_scale(colormap: str = "jet", width: int = 256, height: int = 12) -> np.ndarray:
    """A horizontal colour bar (RGB uint8) from heat 0 (left) to 1 (right), for a legend."""
    return colorize(np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1)), colormap)


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, *, colormap: str = "jet",
                    opacity: float = 0.4, min_value: float = 0.0) -> np.ndarray:
    """Blend ``heatmap`` (any size, [0, 1]) over ``image`` (H, W) in [0, 1]; RGB uint8 (H, W, 3).

    Pixels whose heat is below ``min_value`` show the radiograph alone, so faint attributions do
    not tint the whole image; the tint fades in over ``RAMP`` above the cut-off rather than
    switching on at a hard edge.
    """
    return _blend(to_gray_rgb(image), heatmap, colormap, opacity, min_value)


def side_by_side(image: np.ndarray, heatmap: np.ndarray, *, colormap: str = "jet", opacity: float = 0.4,
                 min_value: float = 0.0) -> np.ndarray:
    """Original and overlay next to each other (RGB uint8, width 2W)."""
    base = to_gray_rgb(image)
    return np.concatenate([base, _blend(base, heatmap, colormap, opacity, min_value)], axis=1)


def _blend(base: np.ndarray, heatmap: np.ndarray, colormap: str, opacity: float, min_value: float) -> np.ndarray:
    """``base`` (RGB uint8) tinted by the coloured heatmap: one OpenCV weighted sum where the opacity
    is the same everywhere (7x faster than float arithmetic per pixel), a per-pixel weight otherwise."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    size = base.shape[:2]
    heat = np.clip(heatmap, 0, 1).astype(np.float32)
    if heat.shape != size:
        heat = cv2.resize(heat, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    color = colorize(heat, colormap)
    if min_value <= 0:
        return cv2.addWeighted(base, 1.0 - opacity, color, opacity, 0.0)
    ramp = np.clip((heat - min_value) / RAMP, 0.0, 1.0)
    alpha = (opacity * ramp * ramp * (3.0 - 2.0 * ramp))[:, :, None]   # smoothstep: no hard edge at the cut-off
    return np.clip(base * (1 - alpha) + color * alpha + 0.5, 0, 255).astype(np.uint8)
