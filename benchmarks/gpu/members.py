"""Train several ``training.train`` members concurrently (one per seed) until a wall-clock deadline.

    PYTHONPATH=. python benchmarks/gpu/members.py --deadline UNIX_TIME --runs RUNS --stage STAGE \
        --seeds 1 2 3 [--threads 4] -- --data-dir ... --arch resnet18_cbam --workers 4 ...

Each member runs as ``timeout (deadline - now) python -m training.train ... --seed N --out RUNS/seedN``.
``training.train`` rewrites ``best/`` in place while it runs, so a member killed at the deadline could
leave a half-written ``best/``. This launcher therefore copies ``best/`` to ``RUNS/seedN.safe/`` each
time the run's ``resume.safetensors.json`` changes (that file is written only after ``best/`` is
complete for the epoch). Afterwards each member's checkpoint (the run's own ``best/`` when it ended by
itself, else the last safe copy) is staged as ``STAGE/seedN/`` with the run's ``metrics.jsonl``,
``split.json``, a filtered log and ``run_summary.json``, then loaded with
``engine.model.checkpoint.load_checkpoint`` as a check. Exit code 0 whatever happens.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

TQDM_LINE = re.compile(r"^epoch \d+/\d+:")


def _stamp(t0: float) -> str:
    return f"[+{time.time() - t0:6.1f}s]"


def _copy_best(run: Path, safe: Path) -> bool:
    best = run / "best"
    if not (best / "model.safetensors").is_file() or not (best / "model_card.json").is_file():
        return False
    tmp = safe.with_name(safe.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(best, tmp)
    shutil.rmtree(safe, ignore_errors=True)
    tmp.rename(safe)
    return True


def _read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def _filtered_log(path: Path) -> str:
    """The member's output without tqdm's progress redraws."""
    if not path.is_file():
        return ""
    text = path.read_text(errors="replace").replace("\r", "\n")
    return "\n".join(l for l in text.splitlines() if l.strip() and not TQDM_LINE.match(l.strip())) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deadline", type=float, required=True, help="unix time by which every member must end")
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--stage", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--threads", type=int, default=4, help="OMP/torch threads per member's main process")
    ap.add_argument("--poll", type=float, default=1.0)
    ap.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then training.train arguments")
    args = ap.parse_args()
    train_args = [a for a in args.train_args if a != "--"]
    t0 = time.time()
    args.runs.mkdir(parents=True, exist_ok=True)
    args.stage.mkdir(parents=True, exist_ok=True)
    budget = int(args.deadline - time.time())
    if budget < 30:
        print(f"members: only {budget}s before the deadline; not starting", flush=True)
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONUNBUFFERED="1")
    procs = {}
    for seed in args.seeds:
        run = args.runs / f"seed{seed}"
        cmd = ["timeout", "--signal=TERM", "--kill-after=5", str(budget), sys.executable, "-m", "training.train",
               *train_args, "--seed", str(seed), "--out", str(run), "--name", f"ResNet18+CBAM ensemble member seed {seed}"]
        log = open(args.runs / f"seed{seed}.log", "w")
        print(f"{_stamp(t0)} start seed {seed} (timeout {budget}s): {' '.join(cmd)}", flush=True)
        procs[seed] = {"p": subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env),
                       "log": log, "run": run, "safe": args.runs / f"seed{seed}.safe", "mtime": None,
                       "seen": 0, "safe_epoch": 0, "start": time.time(), "end": None}
    while any(m["end"] is None for m in procs.values()):
        time.sleep(args.poll)
        for seed, m in procs.items():
            rows = _read_metrics(m["run"])
            for r in rows[m["seen"]:]:
                print(f"{_stamp(t0)} seed {seed} epoch {r['epoch']}: train loss {r['train_loss']:.4f}, "
                      f"val AUC {r['val_auc']:.4f}, val loss {r['val_loss']:.4f}, "
                      f"{r['train_images_per_s']:.0f} img/s ({r['train_seconds']:.1f}s)", flush=True)
            m["seen"] = len(rows)
            state = m["run"] / "resume.safetensors.json"
            if state.is_file():
                mt = state.stat().st_mtime_ns
                if mt != m["mtime"]:
                    m["mtime"] = mt
                    if _copy_best(m["run"], m["safe"]):
                        m["safe_epoch"] = len(rows)
            if m["end"] is None and m["p"].poll() is not None:
                m["end"] = time.time()
                m["log"].close()
                print(f"{_stamp(t0)} seed {seed} exited rc={m['p'].returncode} after "
                      f"{m['end'] - m['start']:.0f}s", flush=True)

    for seed, m in procs.items():
        rc = m["p"].returncode
        rows = _read_metrics(m["run"])
        finished = rc == 0 and (m["run"] / "last" / "model.safetensors").is_file()
        src = m["run"] / "best" if finished else m["safe"]
        if not (src / "model.safetensors").is_file() and (m["run"] / "best" / "model.safetensors").is_file():
            src = m["run"] / "best"     # no safe copy: the run's own best/, unverified
        dst = args.stage / f"seed{seed}"
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        if (src / "model.safetensors").is_file():
            for f in src.iterdir():
                if f.is_file():
                    shutil.copy2(f, dst / f.name)
        for name in ("metrics.jsonl", "split.json", "training_curves.png"):
            if (m["run"] / name).is_file():
                shutil.copy2(m["run"] / name, dst / name)
        (dst / "train.log").write_text(_filtered_log(args.runs / f"seed{seed}.log"))
        best = max(rows, key=lambda r: (r["val_auc"], -r["val_loss"])) if rows else None
        summary = {"seed": seed, "returncode": rc, "timed_out": rc in (124, 137, -15, -9),
                   "finished_normally": finished, "epochs_completed": len(rows),
                   "checkpoint_source": str(src.relative_to(args.runs)) if src.exists() else None,
                   "safe_copy_after_epoch": m["safe_epoch"],
                   "best_epoch_by_metrics": best["epoch"] if best else None,
                   "best_val_auc_by_metrics": best["val_auc"] if best else None,
                   "wall_seconds": round(m["end"] - m["start"], 1),
                   "train_args": train_args + ["--seed", str(seed)]}
        (dst / "run_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(f"seed {seed}: {json.dumps({k: v for k, v in summary.items() if k != 'train_args'})}", flush=True)
        print(f"--- seed {seed} log (filtered, last 40 lines) ---\n"
              + "\n".join((dst / "train.log").read_text().splitlines()[-40:]), flush=True)

    # every staged member must load as an engine checkpoint
    from engine.model.checkpoint import load_checkpoint
    for seed in args.seeds:
        dst = args.stage / f"seed{seed}"
        try:
            model, card = load_checkpoint(dst)
            v = card.extra.get("validation", {})
            tr = card.extra.get("training", {})
            print(f"LOAD seed {seed}: PASS {card.architecture}, {sum(p.numel() for p in model.parameters()):,} "
                  f"params, best_epoch {tr.get('best_epoch')}, epochs_run(card) {tr.get('epochs_run')}, "
                  f"val AUC {v.get('auc')}, threshold {card.threshold:.4f}, T {card.temperature:.3f}, "
                  f"sens {v.get('sensitivity')}, spec {v.get('specificity')}, n_val {v.get('n')}", flush=True)
        except Exception as exc:
            print(f"LOAD seed {seed}: FAIL {type(exc).__name__}: {exc}", flush=True)
        sums = [f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.name}" for f in sorted(dst.iterdir()) if f.is_file()]
        (dst / "SHA256SUMS").write_text("\n".join(sums) + "\n")


if __name__ == "__main__":
    main()
