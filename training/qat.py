"""Quantization-aware distillation: an INT8 graph of a checkpoint that keeps the float model's answers.

    python -m training.qat [--checkpoint DIR] --data-dir ../shared/data/kermany224
                           --dev-dir ../shared/data/kermany-test-dev [--images 3000] [--epochs 2]

Static INT8 quantisation of the whole network misses the agreement gate when the weights are simply
rounded (a largest probability difference of 0.058 with layers 2-4 in INT8: the card's temperature
magnifies logit errors). Here the BatchNorm-folded network is fine-tuned with the INT8 arithmetic
simulated (fake quantisation with a straight-through gradient: per-channel 7-bit symmetric weights,
8-bit asymmetric activations at each convolution's input and output, their ranges the calibration
images' minimum and maximum, as ONNX Runtime's MinMax calibration sets them) to give the *float*
checkpoint's logits on training images (a distillation loss: no label is used, the teacher is the
shipped network). Only CBAM's attention convolutions stay in float. The fine-tuned weights are then
exported and quantised by ONNX Runtime (:func:`engine.inference.backends.int8.quantize`, 7-bit
weights so that the 16-bit accumulation of AVX2 CPUs without VNNI cannot saturate: the same integer
results on every x86 CPU), and gated against the float checkpoint on its validation images and the
dev half of the test split (:func:`engine.inference.backends.int8.gate`). The graph and its report
are written into the checkpoint folder (``model.int8.onnx``, ``int8_report.json``) and the card
records the gate; the product uses the graph only where the report says passed.

Training images: the checkpoint's training split (every image under ``--data-dir`` not named in its
``val_predictions.csv``); the dev half is never in a gradient step, only in the gate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.inference.backends import cpu_info
from engine.model.checkpoint import DEFAULT_MODEL_DIR, VAL_PREDICTIONS_FILE, read_card

WEIGHT_QMAX = 63          # 7-bit symmetric weights (ONNX Runtime's reduce_range): no saturation on AVX2
ACT_LEVELS = 255          # 8-bit asymmetric activations


def fake_quant_activation(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """uint8 asymmetric quantise-dequantise over [min(lo, 0), max(hi, 0)], straight-through gradient."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / ACT_LEVELS
    zero = round(-lo / scale)
    q = (torch.clamp(torch.round(x / scale) + zero, 0, ACT_LEVELS) - zero) * scale
    return x + (q - x).detach()


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric quantise-dequantise, straight-through gradient."""
    scale = w.detach().abs().amax(dim=tuple(range(1, w.dim())), keepdim=True).clamp_min(1e-12) / WEIGHT_QMAX
    q = torch.clamp(torch.round(w / scale), -WEIGHT_QMAX, WEIGHT_QMAX) * scale
    return w + (q - w).detach()


class FakeQuantConv(nn.Module):
    """A convolution computed as the INT8 graph will compute it (ranges set by :func:`calibrate`)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.ranges = [float("inf"), float("-inf"), float("inf"), float("-inf")]   # in lo, hi; out lo, hi
        self.quantize = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if not self.quantize:
            y = c(x)
            self.ranges = [min(self.ranges[0], float(x.min())), max(self.ranges[1], float(x.max())),
                           min(self.ranges[2], float(y.min())), max(self.ranges[3], float(y.max()))]
            return y
        x = fake_quant_activation(x, self.ranges[0], self.ranges[1])
        y = F.conv2d(x, fake_quant_weight(c.weight), c.bias, c.stride, c.padding, c.dilation, c.groups)
        return fake_quant_activation(y, self.ranges[2], self.ranges[3])


def quantised_names(net: nn.Module) -> list[str]:
    """The convolutions the INT8 graph quantises: every one but CBAM's attention."""
    return [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and ".attn." not in f".{n}."]


def wrap(net: nn.Module) -> list[FakeQuantConv]:
    """Replace the quantised convolutions of ``net`` (in place) by :class:`FakeQuantConv`."""
    wrapped = []
    for name in quantised_names(net):
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        fq = FakeQuantConv(getattr(parent, child))
        setattr(parent, child, fq)
        wrapped.append(fq)
    return wrapped


def unwrap(net: nn.Module) -> None:
    for name, module in list(net.named_modules()):
        if isinstance(module, FakeQuantConv):
            parent_name, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent_name) if parent_name else net, child, module.conv)


@torch.no_grad()
def calibrate(net: nn.Module, wrapped: Sequence[FakeQuantConv], images: np.ndarray, batch: int = 32) -> None:
    """Each quantised convolution's input and output range over ``images`` (the float network)."""
    for fq in wrapped:
        fq.quantize, fq.ranges = False, [float("inf"), float("-inf"), float("inf"), float("-inf")]
    for i in range(0, len(images), batch):
        net(torch.from_numpy(images[i:i + batch]))
    for fq in wrapped:
        fq.quantize = True


def training_files(ckpt_dir: Path, data_dir: Path, n: int, seed: int) -> list[Path]:
    """``n`` images of the checkpoint's training split (not in its validation predictions), drawn at random."""
    import csv
    held = {r["file"] for r in csv.DictReader(open(ckpt_dir / VAL_PREDICTIONS_FILE, newline=""))}
    pool = sorted(p for p in data_dir.rglob("*") if p.suffix.lower() in {".jpeg", ".jpg", ".png"}
                  and p.name not in held)
    rng = np.random.default_rng(seed)
    return [pool[i] for i in sorted(rng.choice(len(pool), size=min(n, len(pool)), replace=False))]


def distil(student: nn.Module, teacher_logits: np.ndarray, images: np.ndarray, temperature: float, *,
           epochs: int, batch: int, lr: float, seed: int, log=print) -> list[dict]:
    """Fine-tune ``student`` (fake-quantised) to give the teacher's logits: mean squared error of the
    logits divided by the temperature (what the probabilities see)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    steps = epochs * (len(images) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    rng = np.random.default_rng(seed)
    history = []
    student.eval()          # no BatchNorm left (folded); eval keeps dropout off: the graph has none
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        t0, total = time.perf_counter(), 0.0
        for k in range(len(images) // batch):
            idx = np.sort(order[k * batch:(k + 1) * batch])
            x = torch.from_numpy(images[idx])
            target = torch.from_numpy(teacher_logits[idx])
            loss = F.mse_loss(student(x) / temperature, target / temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            if k % 10 == 0:
                log(f"epoch {epoch + 1} step {k}/{len(images) // batch} loss {loss.item():.5f} "
                    f"({(k + 1) * batch / (time.perf_counter() - t0):.1f} img/s)")
        history.append({"epoch": epoch + 1, "loss": total / max(len(images) // batch, 1),
                        "seconds": round(time.perf_counter() - t0, 1)})
        log(json.dumps(history[-1]))
    student.eval()
    return history


def simulated_agreement(args: argparse.Namespace, card, student: nn.Module) -> dict:
    """The gate's figures for the fine-tuned network under its own INT8 simulation (before ONNX Runtime
    calibrates and quantises it): says whether a failed gate comes from the fine-tuning or the export."""
    from engine.inference.backends import int8
    from engine.model.checkpoint import load_checkpoint
    from engine.model.probability import positive_probability
    teacher, _ = load_checkpoint(args.checkpoint)
    prob = lambda z: positive_probability(z, card.temperature, card.positive_index)  # noqa: E731
    out = {}
    for name, (paths, labels) in int8.gate_sets(args.checkpoint, args.data_dir, args.dev_dir).items():
        x = int8.network_inputs(card, paths)
        out[name] = int8.agreement(prob(int8.torch_logits(teacher, x)), prob(int8.torch_logits(student, x)), labels,
                                   card.threshold)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.qat", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--data-dir", type=Path, required=True, help="the checkpoint's training data (kermany224)")
    ap.add_argument("--dev-dir", type=Path, help="kermany-test-dev: gated on, never trained on")
    ap.add_argument("--images", type=int, default=3000, help="training images to distil on")
    ap.add_argument("--calibration", type=int, default=256, help="of them, how many set the activation ranges")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gate-only", action="store_true", help="quantise the checkpoint as it is (no fine-tuning)")
    args = ap.parse_args(argv)

    from engine.inference.backends import int8
    from engine.inference.backends.torch_backend import fuse_for_inference
    from engine.model.checkpoint import load_checkpoint
    print(f"CPU: {cpu_info().summary()}", file=sys.stderr)
    model, card = load_checkpoint(args.checkpoint)
    files = training_files(args.checkpoint, args.data_dir, args.images, args.seed)
    t0 = time.perf_counter()
    images = int8.network_inputs(card, files)
    print(f"{len(images)} training images read in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    student = fuse_for_inference(model).float()
    teacher = int8.torch_logits(student.eval(), images)
    calibration = images[:args.calibration]
    history: list[dict] = []
    simulated: dict = {}
    if not args.gate_only:
        wrapped = wrap(student)
        calibrate(student, wrapped, calibration)
        history = distil(student, teacher, images, card.temperature, epochs=args.epochs, batch=args.batch,
                         lr=args.lr, seed=args.seed, log=lambda m: print(m, file=sys.stderr, flush=True))
        simulated = simulated_agreement(args, card, student)
        print(json.dumps({"simulated": simulated}, indent=1), file=sys.stderr)
        unwrap(student)
    recipe = {"method": "none (post-training quantisation)" if args.gate_only else
              "quantization-aware distillation from the float checkpoint (fake INT8, straight-through)",
              "training_images": len(images), "epochs": 0 if args.gate_only else args.epochs,
              "lr": args.lr, "batch": args.batch, "seed": args.seed, "history": history,
              "simulated_gate": simulated}
    report = int8.build_from_module(args.checkpoint, student, calibration, recipe,
                                    gate_sets=int8.gate_sets(args.checkpoint, args.data_dir, args.dev_dir))
    print(json.dumps({k: v for k, v in report.items() if k != "recipe"}, indent=1))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
