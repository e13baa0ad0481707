"""Review's radiograph beside its heatmap overlay, with window/level applied in the browser.

A small Streamlit component (``st.components.v2``; its script and style are ``window_viewer.js`` and
``window_viewer.css`` beside this file): the server sends a study's values once and the heat layer,
and the browser redraws both panels as the window moves, so a window change is not a rerun and the
images never blank. :func:`viewer_data` builds what it is sent (pure, tested on its own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import streamlit as st

from dashboard.imaging import WindowScale, heat_layer, packed_values, rgba_png_data_uri, window_presets

_HERE = Path(__file__).resolve().parent
MIN_HEIGHT_VH = 30         # the panels fill the screen below their top, and are never shorter than this
_COMPONENT = st.components.v2.component(
    "cxr_window_viewer",
    html="""
<div class="cxr-viewer" data-testid="cxrWindowViewer">
  <div class="bar">
    <label>Window <select class="preset" aria-label="Window preset"></select></label>
    <label>Centre <input class="wc" type="range" aria-label="Window centre">
      <input class="wc-n" type="number" aria-label="Window centre value"></label>
    <label>Width <input class="ww" type="range" aria-label="Window width">
      <input class="ww-n" type="number" aria-label="Window width value"></label>
    <label><input class="inv" type="checkbox" aria-label="Invert"> Invert</label>
    <button class="reset" type="button" title="Back to the first preset (or double-click an image)">Reset</button>
    <span class="unit"></span>
  </div>
  <div class="panels">
    <figure><canvas class="left" aria-label="Radiograph"></canvas><figcaption class="cap-left"></figcaption></figure>
    <figure><canvas class="right" aria-label="Heatmap overlay"></canvas><figcaption class="cap-right"></figcaption>
      <img class="scale" alt="heat colour scale">
      <figcaption class="cap-scale">heat 0 → 1: evidence for pneumonia, scaled within this image</figcaption></figure>
  </div>
</div>""",
    css=(_HERE / "window_viewer.css").read_text(encoding="utf-8"),
    js=(_HERE / "window_viewer.js").read_text(encoding="utf-8"),
)


def viewer_data(values: np.ndarray, *, study: str, name: str, dicom_units: bool, monochrome1: bool,
                header_window: tuple[Optional[float], Optional[float]] = (None, None),
                heatmap: Optional[np.ndarray] = None, colormap: str = "jet", opacity: float = 0.4,
                min_heat: float = 0.0, overlay_caption: str = "", scale_uri: str = "",
                min_height_vh: int = MIN_HEIGHT_VH) -> dict:
    """What the viewer is sent for one study: its values (the DICOM's own units after the modality LUT,
    or the 0-1 display scale of a JPEG/PNG) packed to 16 bits, the window presets and the precision
    they are shown in, and the heat layer (RGBA: the engine's overlay weight as alpha)."""
    if dicom_units:
        scale = WindowScale.of(float(np.min(values)), float(np.max(values)))
        presets = window_presets(values, *header_window, scale=scale)
    else:
        scale = WindowScale.of(0.0, 1.0)
        presets = {"Full range (0 to 1)": (0.5, 1.0)}
    h, w = values.shape[:2]
    overlay = None if heatmap is None else rgba_png_data_uri(
        heat_layer(heatmap, (h, w), colormap=colormap, opacity=opacity, min_heat=min_heat))
    pixels, unit = packed_values(values, scale.lo, scale.hi)
    return {"study": study, "name": name, "width": int(w), "height": int(h), "lo": scale.lo, "hi": scale.hi,
            "unit_value": unit, "pixels": pixels,
            "step": scale.step, "decimals": scale.decimals, "monochrome1": bool(monochrome1),
            "presets": [[label, c, wd] for label, (c, wd) in presets.items()],
            "overlay": overlay, "overlay_caption": overlay_caption, "scale_uri": scale_uri,
            "unit": "in the DICOM's own units" if dicom_units else "on the 0-1 display scale",
            "min_height_vh": int(min_height_vh)}


def show(data: dict) -> None:
    """Mount the viewer (one instance across studies, so moving to the next study draws over the last
    one instead of blanking)."""
    _COMPONENT(data=data, key="rv_viewer", height="content")
