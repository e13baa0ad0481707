"""Peak memory and CPU of the CLI on the hostile-input classes (prints figures; never fails).

    python benchmarks/hostile_memory.py [--bombs 40] [--good 200]

Each case runs ``python -m engine.predict`` as a user would, while this script samples the resident
memory of the whole process tree (the CLI and its decoding workers, summed) every 50 ms. The corpus
is written by tests/hostile_corpus.py from the real sample images.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _tree_rss_mb(pid: int) -> float:
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in Path(f"/proc/{p}/task").iterdir():
                stack.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return total / 2 ** 20


def run(args: list[str], env_extra: dict[str, str] | None = None) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "engine.predict", *args, "--quiet"], cwd=ROOT,
                            env={**os.environ, **(env_extra or {})}, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_mb(proc.pid))
        time.sleep(0.05)
    stderr = proc.stderr.read()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"exit": proc.returncode, "wall_s": time.perf_counter() - t0, "cpu_s": cpu, "peak_mb": peak,
            "summary": stderr.strip().splitlines()[-1] if stderr.strip() else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bombs", type=int, default=40)
    ap.add_argument("--good", type=int, default=200)
    args = ap.parse_args()
    import hostile_corpus as hostile
    from helpers import JPEGS
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); Python {platform.python_version()}")
    work = Path(tempfile.mkdtemp(prefix="cxr-hostile-bench-"))
    try:
        bombs = work / "bombs"
        bombs.mkdir()
        zeros, patch = hostile.j2k_zeros(6000), hostile.j2k_zeros(6000, patch=True)
        for i in range(args.bombs):     # half pure zeros (refused as blank), half with a patch (scored)
            (bombs / f"zeros{i}.dcm").write_bytes(zeros if i % 2 else patch)
        size_kb = sum(p.stat().st_size for p in bombs.iterdir()) / 1024
        r = run([str(bombs), "--out", str(work / "bombs.csv"), "--heatmaps", str(work / "maps")])
        print(f"{args.bombs} JPEG 2000 DICOMs of 6000x6000 zeros, half with a bright patch ({size_kb:.1f} KB), --heatmaps: "
              f"peak {r['peak_mb']:,.0f} MB (CLI + workers), {r['wall_s']:.1f} s; {r['summary']}")

        folder = work / "scan"
        folder.mkdir()
        for i in range(10):
            shutil.copy(JPEGS[i % len(JPEGS)], folder / f"{i}.jpeg")
        hostile.sparse_file(folder / "huge.dcm", 3 * 1024 ** 3)
        r = run([str(folder), "--out", str(work / "scan.csv")])
        print(f"a 3 GB file among 10 radiographs in a scanned folder: peak {r['peak_mb']:,.0f} MB, "
              f"{r['wall_s']:.1f} s; {r['summary']}")

        (work / "bomb.zip").write_bytes(hostile.zip_shared_stream(40, 500))
        r = run([str(work / "bomb.zip"), "--out", str(work / "zip.csv")])
        print(f"a ZIP of 40 entries sharing one 500 MB stream (512 KB): {r['cpu_s']:.1f} s CPU, "
              f"{r['wall_s']:.1f} s wall, peak {r['peak_mb']:,.0f} MB; {r['summary']}")

        batch = work / "batch"
        batch.mkdir()
        for i in range(args.good):
            shutil.copy(JPEGS[i % len(JPEGS)], batch / f"{i:04d}.jpeg")
        (batch / "crafted.dcm").write_bytes(hostile.lossless_bits_allocated_32())
        r = run([str(batch), "--out", str(work / "batch.csv")], {"CXR_UNSAFE_SKIP_STREAM_CHECKS": "1"})
        print(f"{args.good} radiographs + 1 file that aborts GDCM (header checks off): exit {r['exit']}, "
              f"{r['wall_s']:.1f} s, peak {r['peak_mb']:,.0f} MB; {r['summary']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
