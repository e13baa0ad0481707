"""Inference benchmark: the engine's path against a plain baseline, in one run.

    python -m engine.bench [--data-dir ../shared/data/kermany224] [--images 300] [--repeats 3]
                           [--checkpoint DIR] [--memory-files 1000]

Prints images/s for read+predict and read+predict+Grad-CAM on the engine's path (batched,
decoding overlapped, the device policy, BatchNorm folded) and on a plain float32, eager,
one-image-at-a-time loop over the same files, medians of ``--repeats`` runs, with the ratios;
then the peak resident memory of a child process that streams ``--memory-files`` files.
A benchmark prints figures; it never fails a build.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engine.checkpoint import DEFAULT_MODEL_DIR, load_checkpoint
from engine.decode import read_image
from engine.device import hardware_summary, plain_policy, select_policy
from engine.explain import Explainer
from engine.predictor import Predictor
from engine.sources import InputItem, iter_inputs

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "assets" / "sample"


def _files(data_dir: Path, n: int) -> list[Path]:
    files = sorted(p for p in data_dir.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png", ".dcm"))
    if not files:
        raise SystemExit(f"no images under {data_dir}")
    return [files[i % len(files)] for i in np.linspace(0, len(files) - 1, n).astype(int)] if len(files) >= n \
        else [files[i % len(files)] for i in range(n)]


def _items(files: list[Path]) -> list[InputItem]:
    return [InputItem(str(f), f.read_bytes) for f in files]


def engine_predict(pred: Predictor, files, batch_size: int) -> float:
    t = time.perf_counter()
    n = sum(1 for p in pred.predict_stream(_items(files), batch_size=batch_size) if p.ok)
    return n / (time.perf_counter() - t)


def engine_predict_gradcam(pred: Predictor, explainer: Explainer, files, batch_size: int) -> float:
    t = time.perf_counter()
    batch, n = [], 0
    for p in pred.predict_stream(_items(files), batch_size=batch_size, keep_images=True):
        batch.append(pred.prep.resize(p.image.pixels))
        if len(batch) == batch_size:
            n += len(explainer.explain_images(batch, batch_size=batch_size))
            batch = []
    if batch:
        n += len(explainer.explain_images(batch, batch_size=batch_size))
    return n / (time.perf_counter() - t)


def plain_predict(model, card, files, with_gradcam: bool = False) -> float:
    """The baseline: read, resize, float32 eager forward (and Grad-CAM) one image at a time."""
    prep, policy = card.preprocessing, plain_policy()
    explainer = Explainer(model, card, policy) if with_gradcam else None
    t = time.perf_counter()
    for f in files:
        x = prep.normalize(torch.from_numpy(prep.resize(read_image(f).pixels))[None])
        with torch.inference_mode():
            torch.softmax(model(x) / card.temperature, 1)
        if explainer is not None:
            explainer.explain(x)
    return len(files) / (time.perf_counter() - t)


def precision_check(model, card, files: list[Path]) -> str:
    """Probabilities and AUC of the engine's policy against float32 on the same files."""
    from engine import metrics
    from training.data import label_from_folder
    fast = Predictor(model, card).predict_items(_items(files))
    plain = Predictor(model, card, plain_policy(), fuse=False).predict_items(_items(files))
    p_fast = np.array([p.probability for p in fast if p.ok])
    p_plain = np.array([p.probability for p in plain if p.ok])
    labels = [label_from_folder(f.parent.name) for f in files]
    line = f"max |p(engine) - p(float32)| over {len(p_fast)} images: {np.abs(p_fast - p_plain).max():.2e}"
    if None not in labels and len(set(labels)) == 2:
        line += (f"; AUC engine {metrics.roc_auc(labels, p_fast):.5f} vs float32 "
                 f"{metrics.roc_auc(labels, p_plain):.5f}")
    return line


def _median(fn, repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def peak_memory_mb(data_dir: Path, n_files: int, checkpoint: str) -> float:
    """Peak RSS of a child process that streams ``n_files`` through the predictor (Linux)."""
    code = ("import resource, sys; from pathlib import Path; from engine.bench import _files, _items;"
            "from engine.predictor import Predictor;"
            f"p = Predictor.from_checkpoint({checkpoint!r});"
            f"n = sum(1 for _ in p.predict_stream(_items(_files(Path({str(data_dir)!r}), {n_files}))));"
            "print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = Path("../shared/data/kermany224")
    ap.add_argument("--data-dir", type=Path, default=default_data if default_data.is_dir() else SAMPLE_DIR)
    ap.add_argument("--checkpoint", default=str(DEFAULT_MODEL_DIR))
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--baseline-images", type=int, default=100, help="the plain loop is slow: time it on fewer")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-files", type=int, default=1000)
    ap.add_argument("--compile", action="store_true", help="also time the engine path with torch.compile")
    args = ap.parse_args(argv)

    files = _files(args.data_dir, args.images)
    base_files = files[: args.baseline_images]
    model, card = load_checkpoint(args.checkpoint)
    pred = Predictor(model, card)
    explainer = Explainer(model, card, pred.policy)
    hw = hardware_summary(pred.policy)
    print(f"CPU: {hw['cpu']} ({hw['cores']} cores, bf16={hw['cpu_bf16']}), torch {hw['torch']}")
    print(f"model: {card.name} ({card.architecture}, {card.preprocessing.image_size}px); "
          f"data: {args.data_dir}; {len(files)} images (baseline {len(base_files)}); median of {args.repeats}")
    engine_predict(pred, files[:64], args.batch_size)                # warm-up
    plain_predict(model, card, base_files[:4])

    rows = []
    e = _median(lambda: engine_predict(pred, files, args.batch_size), args.repeats)
    b = _median(lambda: plain_predict(model, card, base_files), args.repeats)
    rows.append(("read + predict", e, b))
    if args.compile:
        compiled = Predictor(model, card, compile=True)
        t = time.perf_counter()
        engine_predict(compiled, files[:args.batch_size], args.batch_size)      # compiles once
        print(f"torch.compile: {time.perf_counter() - t:.0f} s once per process")
        rows.append(("read + predict, compiled", _median(
            lambda: engine_predict(compiled, files, args.batch_size), args.repeats), b))
    e = _median(lambda: engine_predict_gradcam(pred, explainer, files, args.batch_size), args.repeats)
    b = _median(lambda: plain_predict(model, card, base_files[: len(base_files) // 2], True), args.repeats)
    rows.append(("read + predict + Grad-CAM", e, b))
    print(f"\n{'path':<28}{'engine img/s':>14}{'plain img/s':>14}{'ratio':>8}")
    print(f"{'':<28}{'(' + pred.policy.label + ')':>14}")
    for name, e, b in rows:
        print(f"{name:<28}{e:>14.1f}{b:>14.1f}{e / b:>7.1f}x")
    print("\n" + precision_check(model, card, files))
    if args.memory_files:
        mb = peak_memory_mb(args.data_dir, args.memory_files, args.checkpoint)
        print(f"\npeak resident memory streaming {args.memory_files} files: {mb:,.0f} MB")


if __name__ == "__main__":
    main()
