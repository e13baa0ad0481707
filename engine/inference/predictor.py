"""Batched, streaming inference from a checkpoint, on the engine's device and precision policy.

Decoding runs ahead of the network in worker processes (:mod:`engine.decode.pool`: a decoder that
aborts costs one file), fed by a few threads, with at most ``2 * batch_size`` files in flight; the
workers send back only the network input and, when asked, a display copy, so memory stays bounded
whatever the number and size of the inputs. Each input yields exactly one :class:`Prediction`: a
probability or an error.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from engine.inputs import limits
from engine.inference.backends import BackendChoice, choose_for_checkpoint
from engine.model.checkpoint import DEFAULT_MODEL_DIR, ModelCard, read_card
from engine.decode.pool import DecodedStudy, DecodePool, default_pool
from engine.errors import ImageReadError
from engine.image import DecodedImage
from engine.model.ood import FeatureOOD
from engine.inputs.sources import InputItem
from engine.model.probability import positive_probability
from engine.settings import settings
from engine.study import Prediction

if TYPE_CHECKING:   # torch is imported only by the torch backend, Grad-CAM, or ``.model``
    import torch
    from torch import nn

    from engine.model.device import DevicePolicy
    from engine.inference.explain import Explainer

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, Optional[int]], None]   # (done, total or None)


class Scores(NamedTuple):
    """What one pass of the network gives for a list of images."""

    probabilities: np.ndarray
    distances: Optional[np.ndarray] = None        # feature distance per image (engine.model.ood), if fitted
    stage_inputs: Optional[list] = None           # the last stage's input per image (Grad-CAM), if asked


@dataclass
class _Decoded:
    """One input between the decoding threads and the network: its decoded study, or why there is none."""

    item_name: str
    sha256: str = ""
    study: Optional[DecodedStudy] = None
    error: str = ""

    @property
    def tensor(self) -> Optional[np.ndarray]:
        """The resized (S, S) float32 network input."""
        return None if self.study is None else self.study.model_input

    @property
    def image(self) -> Optional[DecodedImage]:
        return None if self.study is None else self.study.image


def fuse_for_inference(model: "nn.Module") -> "nn.Module":
    """A copy of ``model`` with every BatchNorm folded into the preceding convolution (eval only)."""
    from engine.inference.backends.torch_backend import fuse_for_inference as fuse
    return fuse(model)


class _LazyPolicy:
    """The torch policy for Grad-CAM, made on first real use; ``label`` is known without torch."""

    def __init__(self, inference: str) -> None:
        self._inference = inference
        self._real = None

    @property
    def label(self) -> str:
        if self._real is not None:
            return self._real.label
        from engine.inference.backends import cpu_info
        bf16 = cpu_info().native_bf16 and settings().precision.lower() != "float32"
        return f"cpu, {self._inference} (Grad-CAM: torch {'bfloat16 autocast' if bf16 else 'float32'}, channels_last)"

    def _policy(self) -> "DevicePolicy":
        if self._real is None:
            from dataclasses import replace

            from engine.model.device import select_policy
            self._real = replace(select_policy(), inference=self._inference)
        return self._real

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._policy(), name)


class Predictor:
    """Probabilities of the positive class ("pneumonia") for decoded images or raw files.

    Built from a torch network (``Predictor(model, card, policy)``: the torch backend) or, through
    :meth:`from_checkpoint`, on the backend that :func:`engine.inference.backends.choose_for_checkpoint` picks for
    this machine. With ONNX Runtime, torch is not imported until ``.model`` or ``.policy`` is
    asked for (Grad-CAM).
    """

    def __init__(self, model: Optional["nn.Module"], card: ModelCard, policy: Optional["DevicePolicy"] = None,
                 *, fuse: bool = True, compile: bool = False, pool: Optional[DecodePool] = None,
                 runner: Any = None, backend: Optional[BackendChoice] = None,
                 checkpoint: Optional[str | Path] = None) -> None:
        self.card = card
        self.pool = pool
        self.prep = card.preprocessing
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self._model = model
        self._policy = policy
        self._lock = threading.Lock()
        if runner is None:
            from engine.inference.backends.torch_backend import TorchRunner
            from engine.model.device import select_policy
            if model is None:
                raise ValueError("the torch backend needs a model")
            self._policy = policy or select_policy()
            runner = TorchRunner(model, self._policy, fuse=fuse, compile=compile)
            self._model = runner.model
            backend = backend or BackendChoice("torch", "a torch network was given")
        self.runner = runner
        self.backend = backend or BackendChoice(runner.name, "given")
        # The out-of-population score fitted with the checkpoint (engine.model.ood), when it carries one.
        self.ood: Optional[FeatureOOD] = FeatureOOD.load(self.checkpoint) if self.checkpoint else None

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str | Path | None = None,
                        policy: Optional["DevicePolicy"] = None, *, backend: Optional[str] = None,
                        **kwargs) -> "Predictor":
        """Load a checkpoint on the best backend here (``backend`` or $CXR_BACKEND can force one).

        A torch ``policy`` or ``compile=True`` asks for torch. When an ONNX backend was chosen
        automatically but cannot run (no exporter, no writable cache), torch runs instead.
        """
        folder = Path(ckpt_dir) if ckpt_dir else DEFAULT_MODEL_DIR
        card = read_card(folder)
        if policy is not None or kwargs.get("compile"):
            choice = BackendChoice("torch", "a torch policy or torch.compile was asked for")
        else:
            choice = choose_for_checkpoint(folder, card, backend)
        forced = (backend or settings().backend or "auto").lower() != "auto"
        while choice.name != "torch":
            try:
                return cls._onnx(folder, card, choice, **kwargs)
            except Exception as exc:
                if forced:
                    raise
                # chosen automatically but cannot start here: OpenVINO falls back to ONNX Runtime,
                # ONNX Runtime to torch
                following = "onnx" if choice.name == "openvino" else "torch"
                log.warning("%s backend unavailable (%s: %s); trying %s", choice.name,
                            type(exc).__name__, exc, following)
                choice = BackendChoice(following, f"{choice.name} could not start ({type(exc).__name__})")
        from engine.model.checkpoint import load_checkpoint
        model, card = load_checkpoint(folder)
        return cls(model, card, policy, backend=choice, checkpoint=folder, **kwargs)

    @classmethod
    def _onnx(cls, folder: Path, card: ModelCard, choice: BackendChoice, **kwargs) -> "Predictor":
        from engine.inference.backends import artefacts, int8
        from engine.inference.backends.ort import OrtRunner
        if choice.name == "onnx-int8":
            path = int8.int8_path(folder, card)
            if path is None:
                raise FileNotFoundError(f"no INT8 graph built for {folder} (python -m engine.inference.backends.int8)")
        else:
            path = artefacts.onnx_path(folder, card)
        kwargs.pop("fuse", None)
        if choice.name == "openvino":
            from engine.inference.backends import cpu_info
            from engine.inference.backends.ov import OpenVinoRunner
            runner = OpenVinoRunner(path, bfloat16=cpu_info().native_bf16, cache_dir=path.parent / "openvino")
        else:
            runner = OrtRunner(path, choice.name)
        return cls(None, card, runner=runner, backend=choice, checkpoint=folder, **kwargs)

    # -- torch objects, loaded on first use when another backend predicts ------------------------

    @property
    def model(self) -> "nn.Module":
        """The float32 torch network (shared, eval mode): what Grad-CAM explains."""
        with self._lock:
            if self._model is None:
                from engine.model.checkpoint import load_checkpoint
                self._model, _ = load_checkpoint(self.checkpoint)
            return self._model

    def load_explainer(self, *, freeze: bool = False) -> "Explainer":
        """A Grad-CAM explainer of this predictor's network. The first one imports torch and Captum and
        loads the network, with the cyclic collector paused (:mod:`engine.gc_pause`); ``freeze=True``
        for batch processes, whose loaded objects live until they exit."""
        from engine.gc_pause import paused_gc
        with paused_gc(freeze=freeze):
            from engine.inference.explain import Explainer
            return Explainer(self.model, self.card, self.policy)

    @property
    def policy(self) -> "DevicePolicy":
        """The torch device policy (for Grad-CAM); its label also names the inference backend.

        On another backend this is a stand-in whose ``label`` needs no torch (the dashboard's
        sidebar shows it at start-up); anything else it is asked for builds the real policy.
        """
        with self._lock:
            if self._policy is None:
                self._policy = _LazyPolicy(self.runner.label)
            return self._policy

    @property
    def backend_label(self) -> str:
        return self.runner.label

    @property
    def exact_stage_inputs(self) -> bool:
        """Whether the layer3 outputs this backend returns are float32's, so that Grad-CAM from them equals
        Grad-CAM on the whole network within float tolerance (bfloat16 or INT8 ones move the map)."""
        runner = self.runner
        if runner.name == "onnx":
            return True
        if runner.name == "openvino":
            return not runner.bfloat16
        if runner.name == "torch":
            return runner.policy.autocast_dtype is None
        return False

    @property
    def threshold(self) -> float:
        return self.card.threshold

    def probabilities_from_logits(self, logits) -> np.ndarray:
        logits = logits.float().cpu().numpy() if hasattr(logits, "cpu") else np.asarray(logits)
        return positive_probability(logits, self.card.temperature, self.card.positive_index)

    def logits(self, batch: "torch.Tensor") -> "torch.Tensor":
        """Network logits for a normalised torch batch (N, C, S, S), on this predictor's backend."""
        if self.runner.name == "torch":
            return self.runner.logits(batch)
        import torch
        return torch.from_numpy(self.runner.logits_np(batch.detach().cpu().float().numpy()))

    def predict_arrays(self, resized: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Probabilities for images already resized to the input size (S, S) in [0, 1]."""
        return self.score_arrays(resized, batch_size).probabilities

    def score_arrays(self, resized: Sequence[np.ndarray], batch_size: int = 64, *,
                     keep_stage: bool = False) -> "Scores":
        """Probabilities; each image's feature distance when the checkpoint carries an OOD score; and
        with ``keep_stage`` each image's last-stage input (ONNX graphs of ResNets), from which Grad-CAM
        needs to run only the last stage. Absent parts are None."""
        probs, dists, stages = [], [], []
        runner = self.runner
        if getattr(runner, "compiled", False) and runner.compiled_batch is None:
            runner.compiled_batch = batch_size
        want = self.ood is not None and hasattr(runner, "outputs_np")
        want_stage = keep_stage and hasattr(runner, "run_all")
        for i in range(0, len(resized), batch_size):
            x = self.prep.normalize_np(np.stack(resized[i:i + batch_size]))
            if want_stage:
                out = runner.run_all(x)
                logits, features = out["logits"], out.get("features") if want else None
                if "stage_input" in out:
                    stages.extend(out["stage_input"])
                else:
                    want_stage = False
            else:
                logits, features = runner.outputs_np(x) if want else (runner.logits_np(x), None)
            probs.append(positive_probability(logits, self.card.temperature, self.card.positive_index))
            if features is not None:
                dists.append(self.ood.distances(features))
            else:
                want = False
        p = np.concatenate(probs) if probs else np.empty(0)
        return Scores(p, np.concatenate(dists) if want and dists else None,
                      stages if want_stage and len(stages) == len(p) else None)

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
        digest = item.sha256 or hashlib.sha256(data).hexdigest()
        pool = self.pool or default_pool()
        try:
            study = pool.decode(data, item.name, image_size=self.prep.image_size,
                                display_max_side=limits.DISPLAY_MAX_SIDE if keep_images else 0)
        except ImageReadError as exc:
            return _Decoded(item.name, digest, error=str(exc))
        except Exception as exc:  # a pool bug must not take the batch down
            return _Decoded(item.name, digest, error=f"{item.name}: could not be decoded ({type(exc).__name__})")
        return _Decoded(item.name, digest, study)

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
            p, dist, stage = self.score_arrays([d.tensor for d in good], batch_size, keep_stage=keep_images) \
                if good else Scores(np.empty(0))
            probs = iter(p)
            dists = iter(dist if dist is not None else [None] * len(good))
            stages = iter(stage if stage is not None else [None] * len(good))
            for d in ready:
                done += 1
                scored = d.tensor is not None
                yield self._to_prediction(d, next(probs) if scored else None, next(dists) if scored else None,
                                          next(stages) if scored else None)
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

    def recall(self, item: InputItem, probability: float, warnings: Sequence[str] = ()) -> Prediction:
        """A study this model has already scored, decoded again for its images only (no network): the
        stored ``probability`` and ``warnings`` with the display copy and network input that results
        objects need (``keep_images=True`` in :meth:`predict_stream` otherwise)."""
        d = self._decode(item, keep_images=True)
        if d.error:
            return Prediction.refused(d.item_name, d.error, d.sha256)
        img = d.image
        kept = img.pixels.size > 0
        return Prediction.scored(d.item_name, d.sha256, probability, tuple(warnings), img.metadata,
                                 identifiers=img.identifiers, image=img if kept else None,
                                 model_input=d.tensor if kept else None)

    def predict_items(self, items: Iterable[InputItem], **kwargs) -> list[Prediction]:
        return list(self.predict_stream(items, **kwargs))

    def _to_prediction(self, d: _Decoded, prob: Optional[float], distance: Optional[float] = None,
                       stage: Optional[np.ndarray] = None) -> Prediction:
        if d.error:
            return Prediction.refused(d.item_name, d.error, d.sha256)
        img = d.image
        kept = img.pixels.size > 0
        warnings = img.warnings
        age = self.card.population.age_warning(img.metadata.age_band)
        if age:
            warnings = (age,) + warnings
        note = self.ood.warning(float(distance)) if distance is not None and self.ood is not None else None
        if note:
            warnings = warnings + (note,)
        return Prediction.scored(d.item_name, d.sha256, prob, warnings, img.metadata,
                                 identifiers=img.identifiers, image=img if kept else None,
                                 model_input=d.tensor if kept else None,
                                 ood_distance=None if distance is None else float(distance),
                                 stage_input=stage if kept else None)
