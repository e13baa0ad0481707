"""``engine.predict --heatmaps``: one PNG per readable file (original | Grad-CAM overlay).

The explainer (torch, Captum and the network) loads on the first batch, or before the run with
:meth:`HeatmapFolder.load_explainer`, which ``engine.predict`` calls while its decoding workers start
(about 0.3 s off a 300-image run on the AMD EPYC, 2 cores). Building it in a background thread while
the exported backend predicted, and writing PNGs on a second thread, were measured (50.9 against 51.2
img/s) and gave nothing: both cores are already busy, so they were left out.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from engine.inference.predictor import Prediction, Predictor


class HeatmapFolder:
    """Collects (label, prediction) pairs and writes their heatmaps into ``folder``, a batch at a time."""

    def __init__(self, predictor: "Predictor", folder: str | Path, batch_size: int = 32) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.batch_size = max(1, batch_size)
        self._predictor = predictor
        self._explainer = None
        self._pending: list[tuple[str, "Prediction"]] = []
        self._used: set[str] = set()
        self.written = 0

    def load_explainer(self) -> None:
        """Load torch, Captum and the network for Grad-CAM now rather than on the first batch."""
        if self._explainer is None:
            self._explainer = self._predictor.load_explainer(freeze=True)   # once per run

    def add(self, label: str, pred: "Prediction") -> None:
        """Queue one scored image (kept with its display copy); explains a full batch."""
        self._pending.append((label, pred))
        if len(self._pending) >= self.batch_size:
            self._flush()

    def close(self) -> int:
        """Explain what is left; returns the number of PNGs written."""
        self._flush()
        return self.written

    def _flush(self) -> None:
        if not self._pending:
            return
        self.load_explainer()
        preds = [p for _, p in self._pending]
        for (label, pred), heat in zip(self._pending, explain_predictions(self._explainer, preds)):
            (self.folder / safe_png_name(label, self._used)).write_bytes(heatmap_png(pred.image.pixels, heat))
            self.written += 1
        self._pending.clear()


def explain_predictions(explainer, preds: list["Prediction"]) -> "np.ndarray":
    """Grad-CAM maps for predictions kept with their images: from layer3's output when the exported
    graph returned it (Captum on layer4 and the head only), else from the network input."""
    if explainer.explains_stages and all(p.stage_input is not None for p in preds):
        return explainer.explain_stages([p.stage_input for p in preds])
    return explainer.explain_images([p.model_input for p in preds])


def heatmap_png(pixels: "np.ndarray", heat: "np.ndarray") -> bytes:
    """The PNG of the original beside its Grad-CAM overlay."""
    from engine.inference.overlay import side_by_side
    from engine.inference.png import encode_rgb_png
    return encode_rgb_png(side_by_side(pixels, heat))


def safe_png_name(name: str, used: set[str]) -> str:
    """A flat, unique file name for a heatmap: never a path, so nothing lands outside the folder."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("\\", "/").strip("/")).strip("._") or "image"
    stem = stem[-150:]
    candidate, i = f"{stem}.png", 1
    while candidate in used:
        i += 1
        candidate = f"{stem}_{i}.png"
    used.add(candidate)
    return candidate
