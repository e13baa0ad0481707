"""The torch backend: CUDA with float16 autocast, or CPU bfloat16 / float32, BatchNorm folded.

What :class:`engine.inference.predictor.Predictor` ran before the backends existed, moved here unchanged:
a folded copy of the network (BatchNorm into the convolutions), stored in bfloat16 on a CPU with
native bfloat16 (skips autocast's per-call weight casts), optionally ``torch.compile``-d with
batches padded to one size so that nothing recompiles.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch import nn

from engine.model.device import DevicePolicy
from models.conv_gemm import to_plain_conv2d

log = logging.getLogger(__name__)


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BatchNorm folded into the preceding convolution (eval only)."""
    try:
        from torch.fx.experimental.optimization import fuse
        return fuse(to_plain_conv2d(copy.deepcopy(model)).eval())
    except Exception as exc:  # models fx cannot trace still work, just without folding
        log.warning("BatchNorm not folded (torch.fx could not trace %s: %s); inference runs unfolded",
                    type(model).__name__, exc)
        return copy.deepcopy(model).eval()


class TorchRunner:
    """Logits from a torch network on the device policy."""

    name = "torch"

    def __init__(self, model: nn.Module, policy: DevicePolicy, *, fuse: bool = True, compile: bool = False) -> None:
        self.policy = policy
        self.model = policy.prepare_model(model.eval())   # shared; never mutated later
        self._fast = policy.prepare_model(fuse_for_inference(model)) if fuse else self.model
        self._cast = policy.autocast_dtype if fuse and policy.device.type == "cpu" else None
        if self._cast is not None:
            self._fast = self._fast.to(self._cast)
        # torch.compile fuses CBAM's element-wise work but costs about a minute once per process:
        # worth it for long batches, not for an interactive session.
        self.compiled = compile
        self.compiled_batch: Optional[int] = None
        if compile:
            self._fast = torch.compile(self._fast)

    @property
    def label(self) -> str:
        return f"torch: {self.policy.label}" + (", BatchNorm folded" if self._fast is not self.model else "")

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        n = batch.shape[0]
        if self.compiled_batch is not None and n < self.compiled_batch:
            pad = batch.new_zeros((self.compiled_batch - n, *batch.shape[1:]))
            return self.logits(torch.cat([batch, pad]))[:n]
        x = self.policy.to_device(batch)
        if self._cast is not None:
            return self._fast(x.to(self._cast)).float().cpu()
        with self.policy.autocast():
            return self._fast(x).float().cpu()

    def logits_np(self, batch: np.ndarray) -> np.ndarray:
        return self.logits(torch.from_numpy(batch)).numpy()

    def outputs_np(self, batch: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Logits and the penultimate features (the input of the network's last linear layer)."""
        with classifier_input(self._fast) as captured:
            logits = self.logits_np(batch)
        return logits, (captured[0].float().cpu().numpy() if captured else None)

    def run_all(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """What the exported graph returns: logits, penultimate features and, for a ResNet, the last
        stage's input, from which Grad-CAM runs layer4 and the head alone (as on the exported graph)."""
        with last_stage_input(self._fast, enabled=not self.compiled) as stage:
            logits, features = self.outputs_np(batch)
        out = {"logits": logits}
        if features is not None:
            out["features"] = features
        if stage:
            out["stage_input"] = stage[0].float().cpu().numpy()
        return out


def last_linear(net: nn.Module) -> nn.Module:
    """The network's last ``nn.Linear`` (its classifier): its input is the penultimate features."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(net).__name__} has no linear classifier")
    return linears[-1]


def _this_threads(captured: list[torch.Tensor], pick) -> Callable:
    """A hook that appends ``pick(hook arguments)`` for this thread's forward passes only: the network
    is shared by the dashboard's sessions, and another thread's pass through it fires the same hook."""
    caller = threading.get_ident()

    def hook(*args) -> None:
        if threading.get_ident() == caller:
            captured.append(pick(*args))
    return hook


@contextlib.contextmanager
def classifier_input(net: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While the block runs, the inputs of ``net``'s classifier (the penultimate features) of this
    thread's forward passes are appended to the yielded list; no hook is left behind."""
    captured: list[torch.Tensor] = []
    hook = last_linear(net).register_forward_hook(_this_threads(captured, lambda m, inputs, out: inputs[0]))
    try:
        yield captured
    finally:
        hook.remove()


CAM_ENTRY = "layer4.0.conv1"   # the first module of a ResNet's last stage: its input is layer3's output


def cam_entry(net: nn.Module) -> Optional[nn.Module]:
    """The module whose input is the last stage's input (ResNets), or None for other networks."""
    try:
        return net.get_submodule(CAM_ENTRY)
    except AttributeError:
        return None


@contextlib.contextmanager
def last_stage_input(net: nn.Module, enabled: bool = True) -> Iterator[list[torch.Tensor]]:
    """While the block runs, the last stage's inputs (a ResNet's layer3 output) of this thread's
    forward passes are appended to the yielded list; it stays empty for other networks."""
    captured: list[torch.Tensor] = []
    entry = cam_entry(net) if enabled else None
    hook = entry.register_forward_pre_hook(_this_threads(captured, lambda m, args: args[0])) if entry else None
    try:
        yield captured
    finally:
        if hook is not None:
            hook.remove()


class WithFeatures(nn.Module):
    """``net`` returning (logits, penultimate features[, the last stage's input]): what the exported
    graph computes. The third output lets Grad-CAM run Captum on the last stage alone."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with last_stage_input(self.net) as stage_input, classifier_input(self.net) as captured:
            logits = self.net(x)
        return (logits, captured[0], stage_input[0]) if stage_input else (logits, captured[0])
