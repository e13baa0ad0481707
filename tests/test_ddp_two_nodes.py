"""Two "nodes" on one machine: two torchrun launchers with their own --node_rank and --master_addr.

Each launcher is what one machine of a cluster runs (README, "Training on several machines"):
node 0 hosts the rendezvous and writes everything; node 1 is given its own --out folder, standing
for another machine's disk, which must stay empty. Early stopping (--patience 0 stops after the
first epoch) must end both nodes at the same epoch, and the checkpoint and the threshold step must
happen once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "assets" / "sample" / "kermany"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_train_once_and_stop_together(tmp_path):
    port = _free_port()
    common = ["-m", "training.train", "--data-dir", str(SAMPLE), "--image-size", "64", "--epochs", "3",
              "--batch-size", "3", "--val-fraction", "0.34", "--no-augment", "--warmup-epochs", "0",
              "--patience", "0", "--seed", "0", "--name", "tiny-2nodes"]

    def node(rank: int, master: str, out: Path) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
               "--nproc_per_node=1", f"--master_addr={master}", f"--master_port={port}", *common,
               "--out", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "GLOO_SOCKET_IFNAME": "lo"}
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    out0, out1 = tmp_path / "node0", tmp_path / "node1"
    # the same head, named two ways: node 0 binds it, node 1 reaches it by its host name
    procs = [node(0, "127.0.0.1", out0), node(1, "localhost", out1)]
    results = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("a node hung (the ranks disagreed on when to stop?)")
        results.append((p.returncode, stdout, stderr))
    for rank, (code, _, stderr) in enumerate(results):
        assert code == 0, f"node {rank} failed:\n{stderr[-4000:]}"

    rows = [json.loads(line) for line in (out0 / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1], "early stopping (--patience 0) should end after epoch 1"
    err0, err1 = results[0][2], results[1][2]
    assert err0.count("INFO epoch 1:") == 1 and "INFO epoch" not in err1
    assert err0.count("INFO early stop") == 1 and "early stop" not in err1
    # best/ (after epoch 1) and last/ (at the end): two checkpoints, each calibrated once, on node 0 only
    assert err0.count("decision threshold") == 2 and "decision threshold" not in err1
    assert not out1.exists(), "node 1 wrote files"
    for name in ("best/model.safetensors", "best/val_predictions.csv", "last/model.safetensors", "split.json"):
        assert (out0 / name).is_file(), name
    card = json.loads((out0 / "best" / "model_card.json").read_text())
    assert card["training"]["world_size"] == 2 and card["training"]["batch_size"] == 6
    assert 0.0 <= card["decision_threshold"]["value"] <= 1.0
