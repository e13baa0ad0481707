"""``engine.predict --heatmaps``: one PNG per readable file (original | Grad-CAM overlay).

Grad-CAM needs torch and Captum (about 1.5 s to import on these CPUs) while prediction on the
exported backends does not. So the explainer is built in a background thread as soon as the folder
is opened, and images wait in a bounded queue until it is ready: prediction, decoding and the import
overlap instead of running one after the other. The PNGs are rendered and written by a second
thread (OpenCV releases the GIL) while Captum explains the next batch.
"""

from __future__ import annotations

import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.predictor import Prediction, Predictor

MAX_WAITING = 256   # images held (display copy + stage input, ~0.3 MB each) before prediction waits


class HeatmapFolder:
    """Collects (label, prediction) pairs and writes their heatmaps into ``folder``."""

    def __init__(self, predictor: "Predictor", folder: str | Path, batch_size: int = 32) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.batch_size = max(1, batch_size)
        self._predictor = predictor
        self._pending: list[tuple[str, "Prediction"]] = []
        self._used: set[str] = set()
        self._explainer = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._build, name="heatmap-explainer", daemon=True).start()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="heatmap-png")
        self._writes: list[Future] = []
        self.written = 0

    def _build(self) -> None:
        try:
            from engine.explain import Explainer
            p = self._predictor
            self._explainer = Explainer(p.model, p.card, p.policy)
        except BaseException as exc:   # re-raised in the caller's thread by _wait
            self._error = exc
        finally:
            self._ready.set()

    def _wait(self):
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self._explainer

    def add(self, label: str, pred: "Prediction") -> None:
        """Queue one scored image; explains a batch when the explainer is ready (or the queue is full)."""
        self._pending.append((label, pred))
        if len(self._pending) >= MAX_WAITING or (self._ready.is_set() and len(self._pending) >= self.batch_size):
            self._flush()

    def close(self) -> int:
        """Explain what is left, wait for every PNG; returns the number written."""
        if self._pending:
            self._flush()
        for f in self._writes:
            f.result()
        self._writer.shutdown()
        return self.written

    def _flush(self) -> None:
        explainer = self._wait()
        while self._pending:
            batch, self._pending = self._pending[:self.batch_size], self._pending[self.batch_size:]
            preds = [p for _, p in batch]
            maps = explain_predictions(explainer, preds)
            names = [safe_png_name(label, self._used) for label, _ in batch]
            self._writes.append(self._writer.submit(self._write, names, [p.image.pixels for p in preds], maps))
            for f in [f for f in self._writes if f.done()]:
                f.result()   # a failed write surfaces here, not at the end
            self._writes = [f for f in self._writes if not f.done()]

    def _write(self, names: list[str], images: list, maps) -> None:
        for name, pixels, heat in zip(names, images, maps):
            (self.folder / name).write_bytes(heatmap_png(pixels, heat))
            self.written += 1


def explain_predictions(explainer, preds: list["Prediction"]):
    """Grad-CAM maps for predictions kept with their images: from layer3's output when the exported
    graph returned it (layer4 and the head only), else from the network input."""
    if explainer.explains_stages and all(p.stage_input is not None for p in preds):
        return explainer.explain_stages([p.stage_input for p in preds])
    return explainer.explain_images([p.model_input for p in preds])


def heatmap_png(pixels, heat) -> bytes:
    """The PNG of the original beside its Grad-CAM overlay (fastest zlib setting: these are big)."""
    import cv2

    from engine.overlay import side_by_side
    ok, buf = cv2.imencode(".png", cv2.cvtColor(side_by_side(pixels, heat), cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("OpenCV could not encode the heatmap as PNG")
    return buf.tobytes()


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
