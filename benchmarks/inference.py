"""Inference benchmark, whole processes: the batch CLI on each backend against the plain pipeline.

    python -m benchmarks.inference [--data-dir ../shared/data/kermany224] [--images 600] [--heatmap-images 300]
                           [--backends torch,onnx,onnx-int8,openvino] [--memory-files 1000] [--repeats 1]

Prints the CPU model and the flags that decide the backend, the backend the device policy picks
here and why; then, for the plain pipeline (``benchmarks/plain_pipeline.py``: PIL, torchvision
transforms, float32 eager, batches of 32) and for ``python -m engine.predict`` on each available
backend, on the same images, in rounds (each round runs every one of them once, so that all see the
same drift of a shared machine): images/s for read+predict and for read+predict+heatmap PNGs (whole
process, start-up included, as a user runs it; medians over the rounds), the ratio to the plain
pipeline (the median of the rounds' ratios, with their range), the start-up time on one image, the agreement with the engine's torch float32
probabilities (largest difference, AUC, flags at the card's threshold) and the peak resident
memory streaming ``--memory-files`` files. A benchmark prints figures; it never fails a build.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = ROOT / "assets" / "sample"
sys.path.insert(0, str(ROOT))

from engine.inference.backends import choose_for_checkpoint, cpu_info, onnxruntime_available, openvino_available  # noqa: E402
from engine.model.checkpoint import DEFAULT_MODEL_DIR, read_card  # noqa: E402


def pick_files(data_dir: Path, n: int) -> list[Path]:
    files = sorted(p for p in data_dir.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    if not files:
        raise SystemExit(f"no images under {data_dir}")
    idx = np.linspace(0, len(files) - 1, n).astype(int) if len(files) >= n else [i % len(files) for i in range(n)]
    return [files[i] for i in idx]


def _label(path: str) -> int | None:
    """Kermany's class from the folder (NORMAL/PNEUMONIA) or, for a bare name, the file name."""
    up = path.upper()
    if "PNEUMONIA" in up or "BACTERIA" in up or "VIRUS" in up:
        return 1
    return 0 if "NORMAL" in up or Path(path).name.upper().startswith("IM-") else None


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB, the largest process of the tree that was waited for)."""
    import resource
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed: {proc.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(after, before) / 1024


def read_probs(path: Path) -> dict[str, float]:
    return {r["file"]: float(r["probability"]) for r in csv.DictReader(open(path)) if r.get("probability")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.inference", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = ROOT.parent / "shared" / "data" / "kermany224"
    ap.add_argument("--data-dir", type=Path, default=default_data if default_data.is_dir() else SAMPLE_DIR)
    ap.add_argument("--checkpoint", default=str(DEFAULT_MODEL_DIR))
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--heatmap-images", type=int, default=300)
    ap.add_argument("--backends", default="torch,onnx,onnx-int8,openvino")
    ap.add_argument("--memory-files", type=int, default=1000, help="0: skip the memory run")
    ap.add_argument("--repeats", type=int, default=1, help="median of this many runs per cell")
    args = ap.parse_args(argv)

    cpu = cpu_info()
    card = read_card(args.checkpoint)
    choice = choose_for_checkpoint(args.checkpoint, card)
    print(f"CPU: {cpu.summary()}")
    print(f"backend chosen here: {choice.name} ({choice.reason})")
    from engine.inference.backends import int8
    backends = [b for b in args.backends.split(",") if b]
    notes = {}
    if not onnxruntime_available():
        backends = [b for b in backends if b in ("torch", "openvino")]
    if "openvino" in backends and not openvino_available():
        backends.remove("openvino")
        notes["openvino"] = "OpenVINO is not installed"
    if "onnx-int8" in backends:
        if int8.int8_path(args.checkpoint, card) is None:
            backends.remove("onnx-int8")
            notes["onnx-int8"] = "no INT8 graph built (python -m engine.inference.backends.int8)"
        elif not int8.ready(args.checkpoint, card):
            notes["onnx-int8"] = "built but FAILED its agreement gate: measured here, never chosen"
    files = pick_files(args.data_dir, args.images)
    heat_files = files[: args.heatmap_images]
    print(f"model: {card.name}; data: {args.data_dir}; {len(files)} images (heatmaps: {len(heat_files)}); "
          f"median of {args.repeats}; whole processes, start-up included\n")

    tmp = Path(tempfile.mkdtemp(prefix="cxr-bench-"))
    lists = {}
    for key, fl in (("predict", files), ("heat", heat_files)):
        lists[key] = tmp / f"{key}.txt"
        lists[key].write_text("".join(f"{f}\n" for f in fl))
    py = sys.executable
    base_env = {k: v for k, v in os.environ.items() if k not in ("CXR_BACKEND", "CXR_PRECISION")}

    def engine_cmd(fl, out, heat=None):
        cmd = [py, "-m", "engine.predict", *map(str, fl), "--out", str(out), "--quiet",
               "--checkpoint", args.checkpoint]
        return cmd + (["--heatmaps", str(heat)] if heat else [])

    def env_for(backend: str, float32: bool = False) -> dict:
        env = {**base_env, "CXR_BACKEND": backend}
        if float32:
            env["CXR_PRECISION"] = "float32"
        return env

    # Make the exported graphs before timing (they are made once per checkpoint, not per run).
    # The same for OpenVINO's compiled-network cache.
    for warm in [b for b in ("onnx", "openvino") if any(x.startswith(b) for x in backends)]:
        subprocess.run(engine_cmd(files[:1], tmp / "warm.csv"), cwd=ROOT, env=env_for(warm), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # Every cell runs once per round, rounds one after the other, so the plain pipeline and each
    # backend see the same drift of a shared machine; a ratio is the median of the rounds' ratios.
    plain = [py, str(ROOT / "benchmarks" / "plain_pipeline.py"), "--checkpoint", args.checkpoint]
    cells = {("plain", "pred"): (plain + ["--files", str(lists["predict"]), "--out", str(tmp / "plain.csv")], base_env),
             ("plain", "heat"): (plain + ["--files", str(lists["heat"]), "--out", str(tmp / "plain_heat.csv"),
                                          "--heatmaps", str(tmp / "plain_png")], base_env),
             ("f32", "pred"): (engine_cmd(files, tmp / "f32.csv"), env_for("torch", float32=True))}
    for b in backends:
        cells[(b, "pred")] = (engine_cmd(files, tmp / f"{b}.csv"), env_for(b))
        cells[(b, "heat")] = (engine_cmd(heat_files, tmp / f"{b}_h.csv", tmp / f"{b}_png"), env_for(b))
    seconds: dict[tuple, list[float]] = {key: [] for key in cells}
    for _ in range(args.repeats):
        for key, (cmd, env) in cells.items():
            seconds[key].append(timed(cmd, env)[0])

    def ratio(key: tuple) -> tuple[float, float, float]:
        """Median, lowest and highest of the rounds' ratios (plain seconds / this cell's seconds)."""
        r = [p / s for p, s in zip(seconds[("plain", key[1])], seconds[key])]
        return statistics.median(r), min(r), max(r)

    plain_pred = statistics.median(seconds[("plain", "pred")])
    plain_heat = statistics.median(seconds[("plain", "heat")])
    ref = read_probs(tmp / "f32.csv")
    rows = [("torch float32 (engine, reference)", len(files) / statistics.median(seconds[("f32", "pred")]),
             ratio(("f32", "pred")), None, None, None, None, "")]
    for b in backends:
        out = tmp / f"{b}.csv"
        s_one, _ = timed(engine_cmd(files[:1], tmp / f"{b}_1.csv"), env_for(b))
        probs = read_probs(out)
        names = [n for n in ref if n in probs]
        p_ref = np.array([ref[n] for n in names])
        p_new = np.array([probs[n] for n in names])
        labels = [_label(n) for n in names]
        agree = f"max |p - p_f32| {np.abs(p_new - p_ref).max():.4f}"
        agree += f", flags same {np.mean((p_new >= card.threshold) == (p_ref >= card.threshold)):.4f}"
        if None not in labels and len(set(labels)) == 2:
            from engine.evaluation import metrics
            agree += f", AUC {metrics.roc_auc(labels, p_new):.5f} (f32 {metrics.roc_auc(labels, p_ref):.5f})"
        rows.append((b, len(files) / statistics.median(seconds[(b, "pred")]), ratio((b, "pred")),
                     len(heat_files) / statistics.median(seconds[(b, "heat")]), ratio((b, "heat")),
                     s_one, agree, notes.get(b, "")))

    pp, ph = len(files) / plain_pred, len(heat_files) / plain_heat
    print(f"plain pipeline: read+predict {pp:.1f} img/s, read+predict+heatmap PNGs {ph:.1f} img/s")
    print(f"ratios: the median of {args.repeats} rounds' ratios to the plain pipeline in the same round "
          f"[lowest-highest]\n")
    print(f"{'path':<36}{'predict img/s':>14}{'ratio':>19}{'+heatmaps img/s':>17}{'ratio':>19}{'1 image s':>11}")

    def shown(r) -> str:
        return f"{r[0]:>6.2f}x [{r[1]:.2f}-{r[2]:.2f}]"
    for name, pred, pred_r, heat, heat_r, one, agree, note in rows:
        heat_s = f"{heat:>17.1f}{shown(heat_r):>19}" if heat else f"{'':>36}"
        one_s = f"{one:>11.2f}" if one else ""
        print(f"{name:<36}{pred:>14.1f}{shown(pred_r):>19}{heat_s}{one_s}")
        if agree:
            print(f"{'':<4}{agree}{'; ' + note if note else ''}")
    if args.memory_files:
        mem_files = pick_files(args.data_dir, args.memory_files)
        (tmp / "mem.txt").write_text("".join(f"{f}\n" for f in mem_files))
        print(f"\npeak resident memory, engine.predict streaming {len(mem_files)} files (largest process):")
        for b in backends:
            seconds, mb = _peak(engine_cmd(mem_files, tmp / f"{b}_mem.csv"), env_for(b))
            print(f"  {b:<12}{mb:>8,.0f} MB   ({len(mem_files) / seconds:.1f} img/s)")


def _peak(cmd, env) -> tuple[float, float]:
    """Run under /usr/bin/time when present (its own peak); else RUSAGE_CHILDREN."""
    if Path("/usr/bin/time").exists():
        t = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        return time.perf_counter() - t, float(proc.stderr.strip().splitlines()[-1]) / 1024
    return timed(cmd, env)


if __name__ == "__main__":
    main()
