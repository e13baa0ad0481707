"""Training throughput: the engine's path against a plain float32 loop, same data, same model.

    python -m training.bench [--data-dir ../shared/data/kermany224] [--images 256]
                             [--arch resnet18_cbam] [--repeats 3] [--batch-size 32] [--image-size 224]

Both paths train on the same in-memory decoded images (decoded once, as ``training.train`` does)
with the same batched augmentation, loss, AdamW, gradient clipping and EMA, starting from the same
initial weights: the engine's path uses ``engine.model.device.select_policy()`` (on a CPU with native
bfloat16: bfloat16 autocast + channels_last), the models' training fast paths (CBAM as one autograd
function, GEMM weight gradients for layer4; ``models.fused``) and the fused AdamW kernel, as
``training.train`` does; the baseline ``engine.model.device.plain_policy()`` (float32, eager,
contiguous), every module as written and the default AdamW. Each repeat is one epoch over
``--images`` images per path, the two paths alternating so that background load hits both alike; the medians and their ratio are
printed, after a short untimed warm-up. A benchmark prints figures; it never fails a build (exit
code 0 whatever happens).
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path("../shared/data/kermany224")
SAMPLE_DATA = ROOT / "assets" / "sample" / "kermany"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                   help="SPLIT/CLASS/* or CLASS/* (default: ../shared/data/kermany224, else the bundled sample)")
    p.add_argument("--images", type=int, default=256, help="images per epoch")
    p.add_argument("--arch", default="resnet18_cbam")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per path (median reported)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="also time the engine path with torch.compile")
    return p


def _load_images(data_dir: Path, n: int, image_size: int, seed: int):
    """(images (n, S, S), labels (n,), description): decoded once; cycled if the folder is small."""
    import torch
    from engine.model.preprocess import Preprocessing
    from training import data as ds
    from training.cache import decode_samples

    if not data_dir.exists():
        print(f"note: {data_dir} not found; using the bundled sample {SAMPLE_DATA}")
        data_dir = SAMPLE_DATA
    samples = ds.index_folder(data_dir)
    splits = {s.split for s in samples}
    if "train" in splits:
        samples = [s for s in samples if s.split == "train"]
    rng = random.Random(seed)
    chosen = rng.sample(samples, min(n, len(samples)))
    prep = Preprocessing(image_size=image_size)
    t0 = time.perf_counter()
    images, kept = decode_samples(chosen, prep)
    seconds = time.perf_counter() - t0
    labels = torch.tensor([s.label for s in kept])
    if len(kept) < n:  # a small folder: reuse images to fill the epoch
        idx = torch.arange(n) % len(kept)
        images, labels = images[idx], labels[idx]
    desc = (f"{data_dir} ({len(kept)} distinct images, {int((labels == 0).sum())} normal / "
            f"{int((labels == 1).sum())} pneumonia per epoch of {len(labels)}), decoded once in {seconds:.1f}s")
    return images, labels, prep, desc


class _Path:
    """One training setup (policy, model copy, optimizer, EMA, loader) that can run timed epochs."""

    def __init__(self, name: str, policy, init_model, images, labels, prep, batch_size: int, seed: int,
                 engine: bool, compile: bool = False):
        import torch
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        from torch.utils.data import DataLoader, RandomSampler
        from training.augment import AugmentConfig
        from training.loop import BatchCollator
        from training.losses import build_loss
        from models.fused import set_fused_training
        from training.optim import build_adamw

        self.name, self.policy = name, policy
        self.model = policy.prepare_model(copy.deepcopy(init_model))
        set_fused_training(self.model, engine)  # the plain loop runs every module as written
        self.net = torch.compile(self.model) if compile else self.model
        self.optimizer = build_adamw(self.model, 1e-3, 0.05, fused=engine)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(0.998), use_buffers=True)
        self.loss_fn = build_loss("weighted_ce", labels, 0.1).to(policy.device)
        collate = BatchCollator(images, labels, prep, AugmentConfig())
        g = torch.Generator().manual_seed(seed)
        self.loader = DataLoader(range(len(labels)), batch_size=batch_size, collate_fn=collate,
                                 sampler=RandomSampler(range(len(labels)), generator=g),
                                 drop_last=len(labels) > batch_size)
        self.rates: list[float] = []

    def run(self, batches) -> dict:
        from training.loop import train_one_epoch
        return train_one_epoch(self.net, batches, self.loss_fn, self.optimizer, self.policy,
                               ema=self.ema, grad_clip=2.0)

    def warm_up(self, steps: int) -> None:
        if steps > 0:
            it = iter(self.loader)
            self.run([next(it) for _ in range(min(steps, len(self.loader)))])

    def timed_epoch(self) -> float:
        rate = self.run(self.loader)["train_images_per_s"]
        self.rates.append(rate)
        return rate


def run(args: argparse.Namespace) -> dict:
    import torch
    from engine.model.device import hardware_summary, plain_policy, select_policy
    from models import build_model

    engine_policy, baseline = select_policy(), plain_policy()
    hw = hardware_summary(engine_policy)
    print(f"CPU: {hw['cpu']} ({hw['cores']} cores, native bf16: {hw['cpu_bf16']}), torch {hw['torch']}, "
          f"{torch.get_num_threads()} threads")
    images, labels, prep, desc = _load_images(args.data_dir, args.images, args.image_size, args.seed)
    print(f"data: {desc}")
    torch.manual_seed(args.seed)
    init = build_model(args.arch, in_channels=prep.in_channels)
    print(f"model: {args.arch}, {args.image_size}px, batch {args.batch_size}; {args.repeats} timed epoch(s) per "
          f"path after {args.warmup_steps} warm-up step(s), paths alternating")
    common = (init, images, labels, prep, args.batch_size, args.seed)
    paths = [_Path(f"engine ({engine_policy.label}, fused kernels)", engine_policy, *common, engine=True),
             _Path(f"plain ({baseline.label}, eager)", baseline, *common, engine=False)]
    if args.compile:
        paths.append(_Path("engine + torch.compile", engine_policy, *common, engine=True, compile=True))
    for p in paths:
        p.warm_up(args.warmup_steps)
    for _ in range(max(args.repeats, 1)):
        for p in paths:
            p.timed_epoch()
    medians = [statistics.median(p.rates) for p in paths]
    width = max(len(p.name) for p in paths)
    print(f"\n{'training path':<{width}}  {'img/s (median)':>14}  repeats")
    for p, m in zip(paths, medians):
        print(f"{p.name:<{width}}  {m:>14.1f}  {', '.join(f'{r:.1f}' for r in p.rates)}")
    ratio = medians[0] / medians[1] if medians[1] > 0 else float("nan")
    if args.compile and medians[1] > 0:
        print(f"speed-up with torch.compile: {medians[2] / medians[1]:.2f}x")
    print(f"\nspeed-up of the engine's path: {ratio:.2f}x")
    if engine_policy.autocast_dtype is None:
        print("(no native bfloat16 on this CPU: the engine's path runs float32 + channels_last here)")
    return {"engine": medians[0], "plain": medians[1], "ratio": ratio, "hardware": hw}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; report problems and return 0 anyway (it must never fail a build)."""
    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit as exc:  # --help or a usage error, already printed by argparse
        if exc.code:
            print("training.bench: not run (see the usage error above)", file=sys.stderr)
        return 0
    try:
        run(args)
    except KeyboardInterrupt:
        print("training.bench: interrupted", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, it never fails
        print(f"training.bench: not run ({type(exc).__name__}: {exc})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
