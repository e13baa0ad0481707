"""CUDA path check for the engine: inference, Grad-CAM and the training step on the GPU.

    PYTHONPATH=. python benchmarks/gpu/cuda_check.py [--skip-timing]

Each step prints ``STEP <name>: PASS|FAIL ...``; a failing step never stops the others, and the
exit code is 0 whatever happens (the log is the result). Works without a GPU too (steps that need
one say so and fail), so that the script itself can be tried on a CPU before a device run.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_JPEGS = sorted((ROOT / "assets" / "sample" / "kermany").rglob("*.jpeg"))
SAMPLE_DICOMS = sorted((ROOT / "assets" / "sample" / "dicom").glob("*.dcm"))
RESULTS: list[tuple[str, bool, str]] = []


def step(name: str):
    """Run the decorated function now; record PASS/FAIL with its message; never raise."""
    def run(fn):
        t0 = time.perf_counter()
        try:
            msg = fn() or ""
            ok = True
        except Exception as exc:  # a failing step must not stop the rest
            traceback.print_exc()
            msg, ok = f"{type(exc).__name__}: {exc}", False
        dt = time.perf_counter() - t0
        RESULTS.append((name, ok, msg))
        print(f"STEP {name}: {'PASS' if ok else 'FAIL'} ({dt:.1f}s) {msg}", flush=True)
        return fn
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-timing", action="store_true", help="skip the fused-vs-plain step timing")
    ap.add_argument("--timing-steps", type=int, default=20)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    state: dict = {}

    @step("environment")
    def _env():
        print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA build {torch.version.cuda}, "
              f"cuDNN {torch.backends.cudnn.version()}, cuda available {cuda}")
        if cuda:
            p = torch.cuda.get_device_properties(0)
            print(f"GPU: {torch.cuda.get_device_name(0)}, {p.total_memory / 2**30:.1f} GiB, "
                  f"{p.multi_processor_count} SMs, capability {p.major}.{p.minor}")
        from engine.model.device import hardware_summary, select_policy
        policy = select_policy()
        print("select_policy():", policy.label, "| hardware_summary:", hardware_summary(policy))
        if not cuda or policy.device.type != "cuda":
            raise RuntimeError(f"no CUDA device policy (got {policy.label})")
        if policy.autocast_dtype != torch.float16:
            raise RuntimeError(f"CUDA policy is not float16 autocast: {policy.label}")
        return policy.label

    @step("decode_samples")
    def _decode():
        from engine.decode import read_image
        names, images = [], []
        for p in SAMPLE_JPEGS + SAMPLE_DICOMS:
            im = read_image(p)
            names.append(str(p.relative_to(ROOT)))
            images.append(im.pixels)
            print(f"  {p.name}: {im.pixels.shape} {im.pixels.dtype} warnings={list(im.warnings)}")
        state["names"], state["images"] = names, images
        if len(SAMPLE_JPEGS) != 12 or len(SAMPLE_DICOMS) != 2:
            raise RuntimeError(f"expected 12 JPEGs + 2 DICOMs, found {len(SAMPLE_JPEGS)} + {len(SAMPLE_DICOMS)}")
        return f"{len(names)} images decoded"

    @step("predict_cuda_vs_cpu")
    def _predict():
        from engine.model.device import plain_policy, select_policy
        from engine.inference.predictor import Predictor
        images = state["images"]
        pol_cuda = select_policy()
        t0 = time.perf_counter()
        p_cuda = Predictor.from_checkpoint(policy=pol_cuda)
        prob_cuda = p_cuda.predict_images(images)
        torch.cuda.synchronize() if cuda else None
        t_cuda = time.perf_counter() - t0
        prob_cuda2 = p_cuda.predict_images(images)          # a second, warm pass: deterministic?
        p_cpu = Predictor.from_checkpoint(policy=plain_policy("cpu"))
        prob_cpu = p_cpu.predict_images(images)
        rows = [("cuda fp16-autocast", prob_cuda), ("cpu float32", prob_cpu)]
        if cuda:
            p_cuda32 = Predictor.from_checkpoint(policy=select_policy("float32"))
            rows.append(("cuda float32", p_cuda32.predict_images(images)))
        thr = p_cuda.threshold
        print(f"  threshold {thr:.4f}; policies: {pol_cuda.label} | {p_cpu.policy.label}")
        print("  " + "file".ljust(60) + "".join(n.rjust(20) for n, _ in rows))
        for i, name in enumerate(state["names"]):
            print("  " + name[-60:].ljust(60) + "".join(f"{r[i]:20.6f}" for _, r in rows))
        d = np.abs(prob_cuda - prob_cpu)
        flips = int(np.sum((prob_cuda >= thr) != (prob_cpu >= thr)))
        msg = (f"max |p_cuda_fp16 - p_cpu_fp32| = {d.max():.3g} (mean {d.mean():.3g}), "
               f"flag flips at threshold: {flips}, repeat-pass max diff {np.abs(prob_cuda - prob_cuda2).max():.3g}")
        if cuda:
            d32 = np.abs(rows[2][1] - prob_cpu)
            msg += f"; max |p_cuda_fp32 - p_cpu_fp32| = {d32.max():.3g}"
        msg += f"; first CUDA pass {t_cuda:.1f}s incl. load"
        state["prob_cuda"] = prob_cuda
        if not np.all(np.isfinite(prob_cuda)):
            raise RuntimeError("non-finite CUDA probabilities: " + msg)
        if not cuda:
            raise RuntimeError("no CUDA: compared CPU policies only; " + msg)
        if d.max() > 0.05:
            raise RuntimeError("CUDA and CPU disagree by more than 0.05: " + msg)
        return msg

    @step("predict_items_stream_cuda")
    def _stream():
        # the full engine path (lazy file inputs, decode thread pool, batching) on the CUDA policy
        from engine.inference.predictor import Predictor
        from engine.inputs.sources import iter_inputs
        p = Predictor.from_checkpoint()
        preds = p.predict_items(iter_inputs([ROOT / "assets" / "sample" / "kermany",
                                             ROOT / "assets" / "sample" / "dicom"]))
        bad = [x for x in preds if not x.ok]
        msg = f"{len(preds)} predictions, {len(bad)} errors, policy {p.policy.label}"
        if bad:
            raise RuntimeError(msg + ": " + "; ".join(x.message for x in bad))
        if len(preds) != 14:
            raise RuntimeError(msg + " (expected 14)")
        return msg

    @step("gradcam_cuda")
    def _gradcam():
        from engine.model.checkpoint import load_checkpoint
        from engine.inference.explain import Explainer
        model, card = load_checkpoint()
        ex = Explainer(model, card)
        resized = [card.preprocessing.resize(im) for im in state["images"]]
        t0 = time.perf_counter()
        maps = ex.explain_images(resized)
        torch.cuda.synchronize() if cuda else None
        dt = time.perf_counter() - t0
        finite = bool(np.all(np.isfinite(maps)))
        in_range = bool(maps.min() >= 0 and maps.max() <= 1)
        peaks = maps.reshape(len(maps), -1).max(1)
        print(f"  policy {ex.policy.label}, layer {ex.layer_name}; per-image peak: "
              + " ".join(f"{v:.2f}" for v in peaks))
        msg = (f"heatmaps {tuple(maps.shape)} {maps.dtype}, finite={finite}, in [0,1]={in_range}, "
               f"all-zero maps={int(np.sum(peaks == 0))}, {dt:.2f}s for {len(maps)}")
        if not (finite and in_range and maps.shape == (14, 224, 224)):
            raise RuntimeError(msg)
        if ex.policy.device.type != "cuda":
            raise RuntimeError("not on CUDA: " + msg)
        return msg

    @step("fused_vs_plain_gradients_cuda")
    def _grads():
        # Same function claim on CUDA: one fp16-autocast forward/backward, fused CBAM vs modules.
        from engine.model.device import select_policy
        from models import build_model
        from models.fused import set_fused_training
        policy = select_policy()
        torch.manual_seed(0)
        model = policy.prepare_model(build_model("resnet18_cbam", in_channels=1)).train()
        x = policy.to_device(torch.randn(16, 1, 224, 224))
        out = {}
        for fused in (True, False):
            set_fused_training(model, fused)
            model.zero_grad(set_to_none=True)
            torch.manual_seed(1)
            with policy.autocast():
                y = model(x).float()
            y.square().sum().backward()
            out[fused] = (y.detach().clone(), {n: p.grad.detach().float().clone() for n, p in model.named_parameters()})
        dy = (out[True][0] - out[False][0]).abs().max().item()
        rels = {n: ((out[True][1][n] - out[False][1][n]).norm() / (out[False][1][n].norm() + 1e-12)).item()
                for n in out[False][1]}
        worst = max(rels, key=rels.get)
        rel = rels[worst]
        msg = (f"{policy.label}: max |logit diff| {dy:.3g}; relative gradient diff over {len(rels)} parameters: "
               f"median {float(np.median(list(rels.values()))):.3g}, max {rel:.3g} ({worst})")
        if not (math.isfinite(dy) and all(map(math.isfinite, rels.values()))) or rel > 0.1:
            raise RuntimeError(msg)
        return msg

    if not args.skip_timing:
        @step("train_step_timing_cuda")
        def _timing():
            # GPU-side throughput of the training step (AMP + GradScaler + EMA + clipping, as
            # training.train), on in-memory batches: no data loading. Fused vs plain kernels.
            from torch.optim.swa_utils import AveragedModel
            from engine.model.device import select_policy
            from models import build_model
            from models.fused import set_fused_training
            from training.loop import train_one_epoch
            from training.optim import build_adamw
            from training.train import ema_with_warmup
            policy = select_policy()
            gen = torch.Generator().manual_seed(0)
            batches = [(torch.randn(64, 1, 224, 224, generator=gen), torch.randint(0, 2, (64,), generator=gen))
                       for _ in range(args.timing_steps)]
            res = {}
            for fused in (True, False, True, False):
                torch.manual_seed(0)
                model = policy.prepare_model(build_model("resnet18_cbam", in_channels=1))
                set_fused_training(model, fused)
                ema = AveragedModel(model, avg_fn=ema_with_warmup(0.998), use_buffers=True)
                opt = build_adamw(model, 1e-3, 0.05)
                scaler = torch.amp.GradScaler("cuda") if policy.autocast_dtype == torch.float16 else None
                loss_fn = torch.nn.CrossEntropyLoss()
                train_one_epoch(model, batches[:4], loss_fn, opt, policy, ema=ema, grad_clip=2.0, scaler=scaler)
                torch.cuda.synchronize() if cuda else None
                s = train_one_epoch(model, batches, loss_fn, opt, policy, ema=ema, grad_clip=2.0, scaler=scaler)
                torch.cuda.synchronize() if cuda else None
                res.setdefault("fused" if fused else "plain", []).append(s["train_images_per_s"])
            f, p = max(res["fused"]), max(res["plain"])
            return (f"batch 64, {args.timing_steps} steps, best of 2: fused kernels {f:.0f} img/s, "
                    f"plain kernels {p:.0f} img/s (fused/plain {f / p:.2f}x); all runs {res}")

    print("SUMMARY cuda_check: " + ", ".join(f"{n}={'PASS' if ok else 'FAIL'}" for n, ok, _ in RESULTS), flush=True)


if __name__ == "__main__":
    main()
