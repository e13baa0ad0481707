"""Batched, streaming inference from a checkpoint, on the engine's device and precision policy.

Decoding runs ahead of the network in worker processes (:mod:`engine.decode.pool`: a decoder that
aborts costs one file), fed by a few threads, with at most ``2 * batch_size`` files in flight; the
workers send back only the network input and, when asked, a display copy, so memory stays bounded
whatever the number and size of the inputs. Each input yields exactly one :class:`Prediction`: a
probability or an error.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from engine import limits
from engine.checkpoint import ModelCard, load_checkpoint
from engine.decode.pool import DecodePool, default_pool
from engine.device import DevicePolicy, select_policy
from engine.errors import ImageReadError
from engine.image import DecodedImage, PatientIdentifiers, StudyMetadata
from engine.sources import InputItem
from models.conv_gemm import to_plain_conv2d

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, Optional[int]], None]   # (done, total or None)


@dataclass(frozen=True)
class Prediction:
    """The outcome for one input file. ``probability`` is None when ``status == "error"``."""

    name: str
    status: str                                   # "ok" or "error"
    probability: Optional[float] = None
    message: str = ""
    warnings: tuple[str, ...] = ()
    sha256: str = ""
    metadata: StudyMetadata = field(default_factory=StudyMetadata)
    identifiers: PatientIdentifiers = field(default_factory=PatientIdentifiers)
    image: Optional[DecodedImage] = None          # ``keep_images=True``: pixels are a display copy
    model_input: Optional[np.ndarray] = None      # ``keep_images=True``: the (S, S) network input

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class _Decoded:
    item_name: str
    sha256: str = ""
    tensor: Optional[np.ndarray] = None           # resized (S, S) float32
    image: Optional[DecodedImage] = None
    error: str = ""


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BatchNorm folded into the preceding convolution (eval only)."""
    try:
        from torch.fx.experimental.optimization import fuse
        return fuse(to_plain_conv2d(copy.deepcopy(model)).eval())
    except Exception as exc:  # models fx cannot trace still work, just without folding
        log.warning("BatchNorm not folded (torch.fx could not trace %s: %s); inference runs unfolded",
                    type(model).__name__, exc)
        return copy.deepcopy(model).eval()


class Predictor:
    """Probabilities of the positive class ("pneumonia") for decoded images or raw files."""

    def __init__(self, model: nn.Module, card: ModelCard, policy: Optional[DevicePolicy] = None,
                 *, fuse: bool = True, compile: bool = False, pool: Optional[DecodePool] = None) -> None:
        self.card = card
        self.pool = pool
        self.prep = card.preprocessing
        self.policy = policy or select_policy()
        self.model = self.policy.prepare_model(model.eval())   # shared; never mutated later
        self._fast = self.policy.prepare_model(fuse_for_inference(model)) if fuse else self.model
        # On a CPU, a folded copy stored in bfloat16 skips autocast's per-call weight casts (about
        # a tenth of the time) and gives the same logits; the shared model stays float32.
        self._cast = self.policy.autocast_dtype if fuse and self.policy.device.type == "cpu" else None
        if self._cast is not None:
            self._fast = self._fast.to(self._cast)
        # torch.compile fuses CBAM's element-wise work (about 1.5x here) but costs about a minute
        # once per process: worth it for long batches, not for an interactive session. Batches are
        # then padded to one fixed size so that nothing recompiles.
        self._compiled = compile
        self._compiled_batch: Optional[int] = None
        if compile:
            self._fast = torch.compile(self._fast)
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str | Path | None = None,
                        policy: Optional[DevicePolicy] = None, **kwargs) -> "Predictor":
        model, card = load_checkpoint(ckpt_dir)
        return cls(model, card, policy, **kwargs)

    @property
    def threshold(self) -> float:
        return self.card.threshold

    def probabilities_from_logits(self, logits: torch.Tensor) -> np.ndarray:
        z = logits.float() / self.card.temperature
        return torch.softmax(z, dim=1)[:, self.card.positive_index].cpu().numpy().astype(np.float64)

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Network logits for a normalised batch (N, C, S, S)."""
        n = batch.shape[0]
        if self._compiled_batch is not None and n < self._compiled_batch:
            pad = batch.new_zeros((self._compiled_batch - n, *batch.shape[1:]))
            return self.logits(torch.cat([batch, pad]))[:n]
        x = self.policy.to_device(batch)
        if self._cast is not None:
            return self._fast(x.to(self._cast)).float().cpu()
        with self.policy.autocast():
            return self._fast(x).float().cpu()

    def predict_arrays(self, resized: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Probabilities for images already resized to the input size (S, S) in [0, 1]."""
        out = []
        if self._compiled and self._compiled_batch is None:
            self._compiled_batch = batch_size
        for i in range(0, len(resized), batch_size):
            batch = self.prep.normalize(torch.from_numpy(np.stack(resized[i:i + batch_size])))
            out.append(self.probabilities_from_logits(self.logits(batch)))
        return np.concatenate(out) if out else np.empty(0)

    def predict_images(self, images: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Probabilities for decoded images of any size (float32 [0, 1] grayscale)."""
        return self.predict_arrays([self.prep.resize(im) for im in images], batch_size)

    def _decode(self, item: InputItem, keep_images: bool) -> _Decoded:
        if item.error:
            return _Decoded(item.name, error=item.error)
        try:
            data = item.read()
        except ImageReadError as exc:
            return _Decoded(item.name, error=str(exc))
        except Exception as exc:  # a source bug must not take the batch down
            return _Decoded(item.name, error=f"{item.name}: cannot be read ({type(exc).__name__})")
        digest = hashlib.sha256(data).hexdigest()
        pool = self.pool or default_pool()
        try:
            study = pool.decode(data, item.name, image_size=self.prep.image_size,
                                display_max_side=limits.DISPLAY_MAX_SIDE if keep_images else 0)
        except ImageReadError as exc:
            return _Decoded(item.name, digest, error=str(exc))
        except Exception as exc:  # a pool bug must not take the batch down
            return _Decoded(item.name, digest, error=f"{item.name}: could not be decoded ({type(exc).__name__})")
        return _Decoded(item.name, digest, study.model_input, study.image)

    def predict_stream(self, items: Iterable[InputItem], *, batch_size: int = 32,
                       decode_workers: int = 2, keep_images: bool = False,
                       progress: Optional[ProgressCallback] = None,
                       total: Optional[int] = None) -> Iterator[Prediction]:
        """Yield one Prediction per item, in input order, decoding ahead of the network."""
        done = 0
        pending: deque[Future] = deque()
        ready: list[_Decoded] = []

        def flush() -> Iterator[Prediction]:
            nonlocal done
            good = [d for d in ready if d.tensor is not None]
            probs = iter(self.predict_arrays([d.tensor for d in good], batch_size) if good else [])
            for d in ready:
                done += 1
                yield self._to_prediction(d, next(probs) if d.tensor is not None else None)
            ready.clear()
            if progress is not None:
                progress(done, total)

        with ThreadPoolExecutor(max_workers=max(1, decode_workers)) as pool:
            for item in items:
                pending.append(pool.submit(self._decode, item, keep_images))
                while len(pending) > 2 * batch_size:
                    ready.append(pending.popleft().result())
                    if len(ready) >= batch_size:
                        yield from flush()
            while pending:
                ready.append(pending.popleft().result())
                if len(ready) >= batch_size:
                    yield from flush()
            if ready:
                yield from flush()

    def predict_items(self, items: Iterable[InputItem], **kwargs) -> list[Prediction]:
        return list(self.predict_stream(items, **kwargs))

    def _to_prediction(self, d: _Decoded, prob: Optional[float]) -> Prediction:
        if d.error:
            return Prediction(d.item_name, "error", None, d.error, sha256=d.sha256)
        img = d.image
        kept = img.pixels.size > 0
        return Prediction(d.item_name, "ok", float(prob), "", img.warnings, d.sha256, img.metadata,
                          img.identifiers, img if kept else None, d.tensor if kept else None)
