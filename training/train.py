"""Train a chest X-ray classifier and write an engine checkpoint.

    python -m training.train --data-dir ../shared/data/kermany224 --out runs/NAME
    torchrun --nproc_per_node=2 -m training.train ...      # data-parallel (DDP)

The run folder holds ``best/`` and ``last/`` (engine checkpoints: weights + model card +
``val_predictions.csv``), ``resume.safetensors`` (+ ``.json``) for ``--resume``,
``metrics.jsonl``, TensorBoard logs, ``split.json`` (the exact patient-wise split) and the curves.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, WeightedRandomSampler
from tqdm import tqdm

from engine.evaluation import metrics
from engine.model.checkpoint import ModelCard, save_checkpoint
from engine.evaluation.provenance import write_training_hashes
from engine.model.device import DevicePolicy, hardware_summary, select_policy
from engine.model.preprocess import Preprocessing
from models import ARCHITECTURES, build_model
from models.fused import set_fused_training
from training import data as ds
from training.augment import AugmentConfig
from training.cache import decode_samples
from training.losses import DistillationLoss, build_loss, class_weights
from training.optim import build_adamw
from training.loop import BatchCollator, predict_logits, train_one_epoch
from training.calibrate import calibrate_checkpoint
from training.report import write_curves
from training.state import load_state, save_state

log = logging.getLogger("training")
DEFAULT_THRESHOLD_RULE = "sensitivity>=0.97"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder SPLIT/CLASS/files or CLASS/files, or a CSV manifest (path,label[,patient_id])")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--arch", default="resnet18_cbam", choices=sorted(ARCHITECTURES))
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--scheduler", choices=["cosine", "plateau"], default="cosine")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--in-channels", type=int, choices=[1, 3], default=1)
    p.add_argument("--intensity", choices=["zscore", "imagenet", "unit"], default="zscore")
    p.add_argument("--seed", type=int, default=0, help="initialisation, data order and augmentation")
    p.add_argument("--split-seed", type=int, default=None,
                   help="seed of the patient-wise train/validation split (default: --seed); ensemble "
                        "members share one split (the shipped model's is 0) and differ by --seed")
    p.add_argument("--resume", help="a run folder or its resume.safetensors to continue from")
    p.add_argument("--pretrained", action="store_true", help="start from ImageNet weights on disk")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="start from a trained checkpoint's weights (fine-tuning: same architecture and "
                        "preprocessing; the card records which weights)")
    p.add_argument("--limit", type=int, default=0, help="use at most N training images (quick runs)")
    p.add_argument("--train-splits", default="train,val", help="folder splits pooled before the patient-wise split")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--loss", choices=["weighted_ce", "ce", "focal"], default="weighted_ce")
    p.add_argument("--sampler", choices=["shuffle", "balanced", "weighted"], default="shuffle",
                   help="balanced: equal classes; weighted: the manifest's weight column (e.g. adults drawn more often)")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--ema", type=float, default=0.998, help="EMA decay of the weights per step (0: off)")
    p.add_argument("--grad-clip", type=float, default=2.0)
    p.add_argument("--patience", type=int, default=4, help="early stopping on validation AUC (epochs)")
    p.add_argument("--hflip", action="store_true", help="random horizontal flips (off: anatomy is asymmetric)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--augment-border", type=float, default=0.0, metavar="P",
                   help="probability of a black border around the shrunk film (wider collimation; off by default)")
    p.add_argument("--augment-equalize", type=float, default=0.0, metavar="P",
                   help="probability of blending in histogram equalisation (off by default)")
    p.add_argument("--augment-clahe", type=float, default=0.0, metavar="P",
                   help="probability of CLAHE with a random clip limit and tile grid (off by default)")
    p.add_argument("--distill-from", metavar="CHECKPOINT",
                   help="a trained checkpoint (usually an ensemble) whose calibrated probabilities on each "
                        "augmented batch the network also learns (knowledge distillation)")
    p.add_argument("--distill-weight", type=float, default=0.5, metavar="W",
                   help="share of the loss from the teacher's probabilities (the rest from the labels)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (augmentation)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow to start)")
    p.add_argument("--plain-kernels", action="store_true",
                   help="run every module as written, without the fused training kernels (same function; "
                        "for debugging, or hardware where they have not been measured, such as CUDA)")
    p.add_argument("--precision", choices=["auto", "float32"], default="auto")
    p.add_argument("--threshold-rule", default=DEFAULT_THRESHOLD_RULE,
                   help="how the decision threshold is chosen on validation: youden, sensitivity>=X, specificity>=X, fixed:X")
    p.add_argument("--half-weights", action="store_true", help="store weights as float16 (half the size)")
    p.add_argument("--name", default="", help="model name for the card")
    return p


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _setup_distributed(policy_device: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if policy_device == "cuda" else "gloo")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": torch.from_numpy(np.random.get_state()[1].copy()),
            "numpy_pos": int(np.random.get_state()[2]), "torch": torch.get_rng_state()}


def _set_rng_state(s: dict) -> None:
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))
    np.random.set_state(("MT19937", s["numpy"].numpy(), s["numpy_pos"], 0, 0.0))
    torch.set_rng_state(s["torch"])


def ema_with_warmup(decay: float):
    """EMA whose decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates.

    A fixed decay would keep a large share of the random initial weights (and their BatchNorm
    statistics) for hundreds of steps, so a short run's average would be worse than the model.
    """
    def avg(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = torch.clamp((1.0 + n) / (10.0 + n), max=decay).to(averaged.dtype)
        return averaged * d + current * (1 - d) if averaged.is_floating_point() else current
    return avg


def _lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return f


def prepare_data(args) -> tuple[list[ds.Sample], list[ds.Sample], dict]:
    """Index, de-duplicate, split by patient (or reuse the recorded split on resume)."""
    splits = [s for s in args.train_splits.split(",") if s]
    samples = ds.index_dataset(args.data_dir, splits)
    samples, dropped = ds.drop_duplicates(samples)
    split_seed = args.seed if getattr(args, "split_seed", None) is None else args.split_seed
    train, val = ds.patient_split(samples, args.val_fraction, split_seed)
    if args.limit:
        rng = random.Random(split_seed)
        train = rng.sample(train, min(args.limit, len(train)))
        val = rng.sample(val, min(max(args.limit // 4, 8), len(val)))
    summary = {"data_dir": str(args.data_dir), "pooled_splits": splits,
               "duplicates_dropped": len(dropped), "train": ds.counts(train), "val": ds.counts(val),
               "split_rule": f"patient-wise, stratified by class, val_fraction={args.val_fraction}, seed={split_seed}"}
    return train, val, summary


def _write_split(out: Path, train, val) -> None:
    rel = lambda s: {"path": str(s.path), "label": s.label, "patient": s.patient_id}
    (out / "split.json").write_text(json.dumps({"train": [rel(s) for s in train],
                                                "val": [rel(s) for s in val]}, indent=0))


def _finalise(model, card: ModelCard, out_dir: Path, val_samples, rule: str, half: bool) -> dict:
    """Save the checkpoint, then calibrate it on validation through the engine's predictor."""
    save_checkpoint(model, card, out_dir, half=half)
    split = json.loads((out_dir.parent / "split.json").read_text())   # written at the start of the run
    write_training_hashes(out_dir, [Path(r["path"]) for r in split["train"]], [Path(r["path"]) for r in split["val"]])
    summary = calibrate_checkpoint(out_dir, [s.path for s in val_samples], [s.label for s in val_samples], rule)
    log.info("checkpoint %s written; decision threshold %.4f chosen on validation (%s)", out_dir,
             summary["threshold"], rule)
    return summary


RESUME_MUST_MATCH = ("data_dir", "arch", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs",
                     "scheduler", "image_size", "in_channels", "intensity", "seed", "split_seed", "limit",
                     "train_splits", "val_fraction", "loss", "sampler", "label_smoothing", "ema",
                     "hflip", "no_augment", "augment_border", "augment_equalize", "augment_clahe", "pretrained",
                     "distill_from", "distill_weight", "init_from")


def _check_resume_args(saved: dict, now: dict) -> None:
    """Resuming with other settings would silently change the split or the schedule: refuse."""
    diffs = [f"--{k.replace('_', '-')} was {saved[k]!r}, now {now[k]!r}"
             for k in RESUME_MUST_MATCH if k in saved and saved[k] != now.get(k)]
    if diffs:
        raise SystemExit("--resume: the run was started with other settings: " + "; ".join(diffs))


def _update_best_card(best_dir: Path, training_info: dict) -> None:
    """The best checkpoint was written mid-run: record how the whole run ended in its card."""
    path = best_dir / "model_card.json"
    if path.is_file():
        card = json.loads(path.read_text())
        card.setdefault("training", {}).update(
            {k: training_info[k] for k in ("epochs_run", "train_seconds") if k in training_info})
        path.write_text(json.dumps(card, indent=2) + "\n")


@dataclass
class _Context:
    """The process this run is: device policy, rank among ``world`` processes, run folder."""

    policy: DevicePolicy
    rank: int
    world: int
    out: Path


@dataclass
class _Data:
    """The decoded training and validation images (decoded once, kept in memory)."""

    prep: Preprocessing
    train: list[ds.Sample]
    val: list[ds.Sample]
    train_x: torch.Tensor
    val_x: torch.Tensor
    train_y: torch.Tensor
    summary: dict


@dataclass
class _Trainer:
    """What one run trains with, built once from the arguments."""

    model: torch.nn.Module
    ema: Optional[AveragedModel]
    net: torch.nn.Module                 # the model as trained: DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    scheduler: Any                       # LambdaLR (cosine) or ReduceLROnPlateau
    loss_fn: torch.nn.Module
    teacher: Optional[Any]
    scaler: Optional[torch.amp.GradScaler]
    augment: Optional[AugmentConfig]
    generator: torch.Generator
    sampler: Any
    loader: DataLoader
    per_rank: int                        # training images per process and epoch

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model


@dataclass
class _Progress:
    """Where the run stands: what ``--resume`` restores and every epoch updates."""

    start_epoch: int = 0
    best: dict = field(default_factory=lambda: {"auc": -1.0, "loss": 1e9, "epoch": -1})
    history: list = field(default_factory=list)
    stale: int = 0
    train_seconds: float = 0.0


def _start_process(precision: str, out: Path) -> _Context:
    """Logging, the device policy and, under torchrun, the process group."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    policy = select_policy(precision)
    _setup_distributed(policy.device.type)
    rank, world = _rank(), (dist.get_world_size() if dist.is_initialized() else 1)
    if policy.device.type == "cuda" and world > 1:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return _Context(policy, rank, world, out)


def _load_resume(args: argparse.Namespace) -> Optional[dict]:
    """The ``--resume`` state (None without it), refused when the run's settings differ."""
    if not args.resume:
        return None
    rpath = Path(args.resume)
    rpath = rpath / "resume.safetensors" if rpath.is_dir() else rpath
    if not rpath.is_file():
        raise SystemExit(f"--resume: no resume state at {rpath}")
    resume = load_state(rpath)
    if "split_seed" not in resume.get("args", {}) or resume["args"]["split_seed"] is None:
        # a run started before --split-seed existed, or with it unset, split by --seed
        resume.setdefault("args", {})["split_seed"] = resume.get("args", {}).get("seed")
    _check_resume_args(resume.get("args", {}), vars(args))
    return resume


def _load_data(args: argparse.Namespace, ctx: _Context) -> _Data:
    """Split the data, decode every image once and (rank 0) record the split."""
    prep = Preprocessing(args.image_size, args.in_channels, args.intensity)
    train, val, data_summary = prepare_data(args)
    t0 = time.perf_counter()
    train_x, train = decode_samples(train, prep)
    val_x, val = decode_samples(val, prep)
    train_y = torch.tensor([s.label for s in train])
    if ctx.rank == 0:
        _write_split(ctx.out, train, val)
        log.info("decoded %d train + %d val images once in %.1fs (%s, %s)", len(train), len(val),
                 time.perf_counter() - t0, ctx.policy.label,
                 "plain kernels" if args.plain_kernels else "fused training kernels")
    return _Data(prep, train, val, train_x, val_x, train_y, data_summary)


def _build_networks(args: argparse.Namespace, ctx: _Context
                    ) -> tuple[torch.nn.Module, Optional[AveragedModel], torch.nn.Module]:
    """The model, its EMA (None with ``--ema 0``) and the network as trained (DDP, compiled)."""
    model = build_model(args.arch, in_channels=args.in_channels, pretrained=args.pretrained)
    if args.init_from:
        model.load_state_dict(initial_weights(args).state_dict())
    model = ctx.policy.prepare_model(model)
    set_fused_training(model, not args.plain_kernels)
    ema = AveragedModel(model, avg_fn=ema_with_warmup(args.ema), use_buffers=True) if args.ema else None
    net = torch.nn.parallel.DistributedDataParallel(model) if ctx.world > 1 else model
    if args.compile:
        net = torch.compile(net)
    return model, ema, net


def initial_weights(args: argparse.Namespace) -> torch.nn.Module:
    """The ``--init-from`` checkpoint's network, refused (naming the difference) when its architecture
    or preprocessing is not the run's: its weights would not mean what they meant."""
    from engine.model.checkpoint import load_checkpoint
    model, card = load_checkpoint(args.init_from)
    ours = Preprocessing(args.image_size, args.in_channels, args.intensity)
    theirs = card.preprocessing
    diffs = [f"{name} {a!r} (the run: {b!r})" for name, a, b in (
        ("architecture", card.architecture, args.arch), ("image_size", theirs.image_size, ours.image_size),
        ("in_channels", theirs.in_channels, ours.in_channels), ("intensity", theirs.intensity, ours.intensity))
        if a != b]
    if diffs:
        raise SystemExit(f"--init-from {args.init_from}: the checkpoint has " + ", ".join(diffs))
    return model


def _init_from_summary(args: argparse.Namespace) -> dict:
    if not args.init_from:
        return {}
    from engine.inference.backends.artefacts import weights_sha256
    from engine.model.checkpoint import read_card
    card = read_card(args.init_from)
    return {"init_from": {"name": card.name, "version": card.version,
                          "weights_sha256": weights_sha256(args.init_from)}}


def _build_loss_fn(args: argparse.Namespace, data: _Data, policy: DevicePolicy
                   ) -> tuple[torch.nn.Module, Optional[Any]]:
    """The loss on the device, and the ``--distill-from`` teacher (None without it)."""
    loss_fn = build_loss(args.loss, data.train_y, args.label_smoothing)
    teacher = None
    if args.distill_from:
        from engine.model.checkpoint import CheckpointError
        from training.distill import Teacher
        if not 0.0 <= args.distill_weight <= 1.0:
            raise SystemExit(f"--distill-weight must lie between 0 and 1, got {args.distill_weight}")
        try:
            teacher = Teacher(args.distill_from, data.prep, policy)
        except CheckpointError as exc:
            raise SystemExit(f"--distill-from: {exc}") from None
        loss_fn = DistillationLoss(loss_fn, args.distill_weight,
                                   class_weights(data.train_y) if args.loss in ("weighted_ce", "focal") else None)
        log.info("distilling from %s (weight %.2f)", args.distill_from, args.distill_weight)
    return loss_fn.to(policy.device), teacher


def _build_sampler(args: argparse.Namespace, ctx: _Context, data: _Data, g: torch.Generator):
    """Which training images each step draws: shuffled, class-balanced, manifest-weighted, or split
    across DDP ranks."""
    n = len(data.train_y)
    if ctx.world > 1:
        sampler = DistributedSampler(range(n), num_replicas=ctx.world, rank=ctx.rank, seed=args.seed)
        if args.sampler != "shuffle":
            raise SystemExit(f"--sampler {args.sampler} is not supported with several processes (DDP); use the "
                             "default class-weighted loss")
        return sampler
    if args.sampler == "balanced":
        w = (1.0 / torch.bincount(data.train_y).float())[data.train_y]
        return WeightedRandomSampler(w, n, generator=g)
    if args.sampler == "weighted":
        return WeightedRandomSampler(torch.tensor([s.weight for s in data.train], dtype=torch.double), n,
                                     generator=g)
    return RandomSampler(range(n), generator=g)


def _build_loader(args: argparse.Namespace, ctx: _Context, data: _Data, augment: Optional[AugmentConfig],
                  sampler) -> tuple[DataLoader, int]:
    """The training DataLoader and the images per process and epoch; refuses an empty epoch."""
    collate = BatchCollator(data.train_x, data.train_y, data.prep, augment)
    per_rank = math.ceil(len(data.train) / ctx.world)
    loader = DataLoader(range(len(data.train)), batch_size=args.batch_size, sampler=sampler,
                        collate_fn=collate, num_workers=args.workers, drop_last=per_rank > args.batch_size,
                        pin_memory=ctx.policy.device.type == "cuda", persistent_workers=args.workers > 0)
    if len(loader) == 0:
        raise SystemExit(f"no training batches: {len(data.train)} images over {ctx.world} process(es) "
                         f"with --batch-size {args.batch_size}")
    return loader, per_rank


def _build_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Cosine with linear warm-up (stepped per batch), or reduce-on-plateau (stepped per epoch)."""
    if args.scheduler == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, _lr_lambda(args.epochs * steps_per_epoch, int(args.warmup_epochs * steps_per_epoch)))
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.3, patience=1)


def _build_trainer(args: argparse.Namespace, ctx: _Context, data: _Data) -> _Trainer:
    """Everything the epochs need, built in a fixed order (each step draws from the seeded RNGs)."""
    model, ema, net = _build_networks(args, ctx)
    optimizer = build_adamw(model, args.lr, args.weight_decay)
    loss_fn, teacher = _build_loss_fn(args, data, ctx.policy)
    scaler = torch.amp.GradScaler("cuda") if ctx.policy.autocast_dtype == torch.float16 else None
    augment = None if args.no_augment else AugmentConfig(hflip=args.hflip, border_p=args.augment_border,
                                                         equalize_p=args.augment_equalize,
                                                         clahe_p=args.augment_clahe)
    g = torch.Generator().manual_seed(args.seed)
    sampler = _build_sampler(args, ctx, data, g)
    loader, per_rank = _build_loader(args, ctx, data, augment, sampler)
    scheduler = _build_scheduler(args, optimizer, len(loader))
    return _Trainer(model, ema, net, optimizer, scheduler, loss_fn, teacher, scaler, augment, g, sampler,
                    loader, per_rank)


def _restore(resume: dict, run: _Trainer) -> _Progress:
    """Load the ``--resume`` state into the trainer and the RNGs; where the run stood."""
    run.model.load_state_dict(resume["model"])
    if run.ema is not None and "ema" in resume:
        run.ema.load_state_dict(resume["ema"])
    run.optimizer.load_state_dict(resume["optimizer"])
    run.scheduler.load_state_dict(resume["scheduler"])
    progress = _Progress(resume["epoch"] + 1, resume["best"], resume["history"], resume["stale"],
                         resume.get("train_seconds", 0.0))
    run.generator.set_state(resume["sampler_rng"])
    _set_rng_state(resume["rng"])
    log.info("resumed from epoch %d", resume["epoch"] + 1)
    return progress


def _model_card(args: argparse.Namespace, ctx: _Context, data: _Data, run: _Trainer) -> ModelCard:
    """The card every checkpoint of the run carries (its ``training`` entry updated per epoch)."""
    training = {**data.summary, "epochs_planned": args.epochs,
                "batch_size": args.batch_size * ctx.world, "lr": args.lr,
                "weight_decay": args.weight_decay, "scheduler": args.scheduler,
                "loss": args.loss, "label_smoothing": args.label_smoothing,
                "sampler": args.sampler, "ema_decay": args.ema,
                "augmentation": run.augment.as_dict() if run.augment else None,
                "pretrained": args.pretrained, "seed": args.seed,
                "split_seed": args.split_seed,
                "world_size": ctx.world, **_init_from_summary(args),
                **({"distillation": {"weight": args.distill_weight,
                                     **run.teacher.describe()}} if run.teacher else {})}
    return ModelCard(architecture=args.arch, preprocessing=data.prep, name=args.name or args.arch,
                     extra={"training": training, "hardware": hardware_summary(ctx.policy)})


def _train_epoch(args: argparse.Namespace, ctx: _Context, run: _Trainer, epoch: int) -> dict:
    """One pass over the training data, with a progress bar on rank 0; train_one_epoch's figures."""
    if isinstance(run.sampler, DistributedSampler):
        run.sampler.set_epoch(epoch)
    bar = tqdm(total=min(len(run.loader) * args.batch_size, run.per_rank),
               desc=f"epoch {epoch + 1}/{args.epochs}",
               unit="img", disable=ctx.rank != 0, file=sys.stderr, dynamic_ncols=True)
    stats = train_one_epoch(run.net, run.loader, run.loss_fn, run.optimizer, ctx.policy,
                            step_scheduler=run.scheduler.step if args.scheduler == "cosine" else None,
                            ema=run.ema, grad_clip=args.grad_clip, scaler=run.scaler, teacher=run.teacher,
                            progress=lambda n, l: (bar.update(n), bar.set_postfix(loss=f"{l:.3f}")))
    bar.close()
    return stats


def _validate(ctx: _Context, run: _Trainer, data: _Data, val_y: np.ndarray) -> list:
    """[AUC, loss, sensitivity@0.5, specificity@0.5] on validation, computed on rank 0.

    The other ranks (other machines, other CPUs whose last bits may differ) take rank 0's figures,
    so every rank makes the same early-stopping decision and stops at the same epoch.
    """
    if ctx.rank == 0:
        logits = predict_logits(run.eval_model, data.val_x, data.prep, ctx.policy)
        val_loss = float(torch.nn.functional.cross_entropy(logits, torch.as_tensor(val_y)).item())
        prob = torch.softmax(logits, 1)[:, 1].numpy()
        at_half = metrics.confusion_at(val_y, prob, 0.5)
        figures = [metrics.roc_auc(val_y, prob), val_loss, at_half.sensitivity, at_half.specificity]
    else:
        figures = [None] * 4   # the same length on every rank
    if ctx.world > 1:
        dist.broadcast_object_list(figures, src=0)
    return figures


def _note_epoch(progress: _Progress, row: dict) -> bool:
    """Add the epoch's row to the history; True when validation improved (AUC, then loss on a tie)."""
    progress.history.append(row)
    auc, val_loss, best = row["val_auc"], row["val_loss"], progress.best
    improved = best["epoch"] < 0 or auc > best["auc"] + 1e-4 or (abs(auc - best["auc"]) <= 1e-4 and val_loss < best["loss"])
    if improved:
        progress.best, progress.stale = {"auc": auc, "loss": val_loss, "epoch": row["epoch"]}, 0
    else:
        progress.stale += 1
    return improved


def _log_epoch(out: Path, writer, row: dict) -> None:
    """The epoch's figures to the log, ``metrics.jsonl`` and TensorBoard (rank 0)."""
    log.info("epoch %d: loss %.4f, val loss %.4f, val AUC %.4f, sens %.3f / spec %.3f @0.5, %.1f img/s",
             row["epoch"], row["train_loss"], row["val_loss"], row["val_auc"], row["val_sensitivity@0.5"],
             row["val_specificity@0.5"], row["train_images_per_s"])
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    for k, v in row.items():
        if k != "epoch":
            writer.add_scalar(k.replace("@", "_at_"), v, row["epoch"])


def _save_resume_state(args: argparse.Namespace, out: Path, run: _Trainer, progress: _Progress,
                       epoch: int) -> None:
    """Everything ``--resume`` needs to continue after ``epoch`` exactly."""
    save_state({"model": run.model.state_dict(), "ema": run.ema.state_dict() if run.ema else {},
                "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                "epoch": epoch, "best": progress.best, "history": progress.history, "stale": progress.stale,
                "train_seconds": progress.train_seconds, "sampler_rng": run.generator.get_state(),
                "rng": _rng_state(), "args": vars(args)}, out / "resume.safetensors")


def _run_epoch(args: argparse.Namespace, ctx: _Context, run: _Trainer, data: _Data, val_y: np.ndarray,
               progress: _Progress, card: ModelCard, writer, epoch: int) -> None:
    """Train, validate, record and (rank 0) checkpoint one epoch."""
    stats = _train_epoch(args, ctx, run, epoch)
    progress.train_seconds += stats["train_seconds"]
    auc, val_loss, sens_half, spec_half = _validate(ctx, run, data, val_y)
    if args.scheduler == "plateau":
        run.scheduler.step(auc)
    row = {"epoch": epoch + 1, **stats, "val_loss": val_loss, "val_auc": auc,
           "val_sensitivity@0.5": sens_half, "val_specificity@0.5": spec_half,
           "lr": run.optimizer.param_groups[0]["lr"]}
    improved = _note_epoch(progress, row)
    if ctx.rank == 0:
        _log_epoch(ctx.out, writer, row)
        card.extra["training"].update(epochs_run=epoch + 1, best_epoch=progress.best["epoch"],
                                      train_seconds=round(progress.train_seconds, 1))
        if improved:
            _finalise(run.eval_model, card, ctx.out / "best", data.val, args.threshold_rule, args.half_weights)
        _save_resume_state(args, ctx.out, run, progress, epoch)


def _finish_run(args: argparse.Namespace, ctx: _Context, run: _Trainer, data: _Data, progress: _Progress,
                card: ModelCard, writer) -> None:
    """Rank 0 writes the last checkpoint and the curves; every rank leaves the process group."""
    if ctx.rank == 0:
        _finalise(run.eval_model, card, ctx.out / "last", data.val, args.threshold_rule, args.half_weights)
        write_curves(progress.history, ctx.out)
        _update_best_card(ctx.out / "best", card.extra["training"])
        writer.close()
        log.info("best epoch %d (val AUC %.4f); checkpoint in %s", progress.best["epoch"],
                 progress.best["auc"], ctx.out / "best")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _tensorboard(out: Path):
    """The TensorBoard writer of the run (rank 0 only; imported only there)."""
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(out / "tensorboard"))


def main(args: argparse.Namespace) -> Path:
    """Train as ``args`` say (see :func:`get_args_parser`); returns the best checkpoint's folder."""
    ctx = _start_process(args.precision, Path(args.out))
    if args.split_seed is None:
        args.split_seed = args.seed
    resume = _load_resume(args)
    _seed_everything(args.seed + ctx.rank)
    if ctx.rank == 0:
        ctx.out.mkdir(parents=True, exist_ok=True)
    data = _load_data(args, ctx)
    run = _build_trainer(args, ctx, data)
    progress = _restore(resume, run) if resume is not None else _Progress()
    writer = _tensorboard(ctx.out) if ctx.rank == 0 else None
    card = _model_card(args, ctx, data, run)
    val_y = np.array([s.label for s in data.val])
    for epoch in range(progress.start_epoch, args.epochs):
        _run_epoch(args, ctx, run, data, val_y, progress, card, writer, epoch)
        if progress.stale >= args.patience:
            if ctx.rank == 0:
                log.info("early stop: validation AUC has not improved for %d epochs", progress.stale)
            break
    _finish_run(args, ctx, run, data, progress, card, writer)
    return ctx.out / "best"

if __name__ == "__main__":
    main(get_args_parser().parse_args())
