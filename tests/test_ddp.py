"""Data-parallel training: two CPU processes (gloo) launched by torchrun on the bundled sample."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "assets" / "sample" / "kermany"


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "ddp"
    # 6 training images: 3 per rank, one batch of 3 per rank per epoch. Precision "auto": the
    # product's path (bfloat16 autocast + channels_last on a CPU that has it).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training.train", "--data-dir", str(SAMPLE), "--out", str(out), "--image-size", "64",
           "--epochs", "2", "--batch-size", "3", "--val-fraction", "0.34", "--no-augment",
           "--warmup-epochs", "0", "--patience", "10", "--seed", "0", "--name", "tiny-ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"

    # rank 0 alone writes: one metrics row per epoch (two writers would give four), one
    # TensorBoard event file, one log line per epoch.
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["train_loss"] > 0 for r in rows), "a rank trained on no batch"
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert proc.stderr.count("INFO epoch 1:") == 1
    for name in ("best/model.safetensors", "last/model.safetensors", "resume.safetensors", "split.json"):
        assert (out / name).is_file(), name

    card = json.loads((out / "best" / "model_card.json").read_text())
    assert card["training"]["world_size"] == 2
    assert card["training"]["batch_size"] == 6          # global batch: 3 per rank x 2 ranks
    assert card["name"] == "tiny-ddp"

    from engine.inference.predictor import Predictor
    from engine.inputs.sources import iter_inputs
    preds = list(Predictor.from_checkpoint(out / "best").predict_stream(iter_inputs([SAMPLE])))
    assert preds and all(p.ok for p in preds)
