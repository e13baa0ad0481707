"""Server memory while a browser uploads a large batch of DICOMs (prints figures; never fails).

    python benchmarks/upload_memory.py [--files 400] [--side 724]

Writes ``--files`` distinct uncompressed 16-bit DICOMs (a real radiograph resized to ``--side`` px,
about 1 MB each, each with its own pixel noise so every file is new content), starts the dashboard as
a user does on a fresh store, uploads them all at once from Debian's Chromium, waits for the worklist,
and samples the server process tree's resident memory every 100 ms: before, peak, and after the page
has settled. The uploaded bytes go to the store, so what the server keeps should not grow with them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def write_files(folder: Path, n: int, side: int) -> int:
    import cv2
    import dicom_factory as dcm
    from engine.decode import read_image
    from helpers import JPEGS
    base = cv2.resize(read_image(JPEGS[0]).pixels, (side, side), interpolation=cv2.INTER_LINEAR)
    rng = np.random.default_rng(0)
    total = 0
    for i in range(n):
        noisy = np.clip(base * 4000 + rng.normal(0, 20, base.shape), 0, 4095).astype(np.uint16)
        data = dcm.to_bytes(dcm.dataset(noisy, bits_stored=12))
        (folder / f"study_{i:04d}.dcm").write_bytes(data)
        total += len(data)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--side", type=int, default=724)
    args = ap.parse_args()
    from benchmarks.hostile_memory import _tree_rss_mb, cpu_model
    from browser_helpers import CHROMIUM, CHROMIUM_ARGS, start_server, stop_server, wait_idle
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="cxr-upload-bench-"))
    try:
        files = work / "files"
        files.mkdir()
        size = write_files(files, args.files, args.side)
        print(f"CPU: {cpu_model()}; {args.files} DICOMs, {size / 2**20:,.0f} MB in all")
        server = start_server(work / "server.log", {"CXR_STORE_DIR": str(work / "store"),
                                                    "CXR_PROFILES_DIR": str(work / "profiles")})
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(_tree_rss_mb(server.proc.pid))
                time.sleep(0.1)

        try:
            with sync_playwright() as p:
                b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                page = b.new_page(viewport={"width": 1440, "height": 900})
                page.set_default_timeout(1_800_000)
                page.goto(server.url + "/triage")
                page.get_by_role("heading", name="Triage", exact=True).wait_for()
                wait_idle(page, 120_000)
                before = _tree_rss_mb(server.proc.pid)
                watcher = threading.Thread(target=sample, daemon=True)
                watcher.start()
                t0 = time.perf_counter()
                page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(
                    sorted(str(f) for f in files.iterdir()))
                page.wait_for_function("""n => [...document.querySelectorAll('[data-testid="stMetric"]')]
                    .some(m => m.querySelector('[data-testid="stMetricLabel"]')?.innerText.trim() === 'Files'
                         && m.querySelector('[data-testid="stMetricValue"]').innerText.trim().replace(',', '') === String(n))""",
                                       arg=args.files)
                wait_idle(page, 600_000)
                elapsed = time.perf_counter() - t0
                time.sleep(5)
                page.reload()                       # a fresh run after the upload finished
                page.get_by_role("heading", name="Triage", exact=True).wait_for()
                wait_idle(page, 120_000)
                time.sleep(3)
                after = _tree_rss_mb(server.proc.pid)
                main_only = int(Path(f"/proc/{server.proc.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
                stop.set()
                b.close()
        finally:
            stop_server(server)
        print(f"server (process tree, RSS): before {before:,.0f} MB, peak {max(samples):,.0f} MB, "
              f"after {after:,.0f} MB (the Streamlit process alone {main_only:,.0f} MB); upload + scoring {elapsed:.0f} s "
              f"({args.files / elapsed:.1f} files/s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
