"""Review at a reader's pace, timed in a real browser: what a radiologist waits for after each key.

    python benchmarks/review_pace.py [--images 12] [--rounds 5]

Starts the dashboard as a user does (its own store in a temporary folder), drives Debian's Chromium
with Playwright: uploads the sample radiographs, sets the threshold to 0 (every study flagged), then
times, each from the key press (or click) to the moment the browser shows the result:

* ``open``: a worklist row's "Open in Review" to the study drawn (the viewer's two canvases drawn,
  radiograph and heatmap overlay);
* ``A/D``: a decision key to the next study's name and its Agree button drawn;
* ``N``: next flagged study to its name drawn (P is the same rerun, backwards);
* ``performance``: the Performance page to its first chart drawn (the shipped validation set).

Prints the median and range of each with the CPU model and flags; targets (issue 19): A/D and N/P under
0.5 s, first open under 2 s, Performance under 2 s. A benchmark prints figures; it never fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from browser_helpers import CHROMIUM, CHROMIUM_ARGS, start_server, stop_server, wait_idle  # noqa: E402
from engine.inference.backends import cpu_info  # noqa: E402

SAMPLE = ROOT / "assets" / "sample" / "kermany"
STUDY_BOX = """() => [...document.querySelectorAll('input[role="combobox"]')]
    .find(i => i.getAttribute('aria-label') === 'Study')?.value.split(' — ')[0]"""


def shown(page) -> str:
    return page.evaluate(STUDY_BOX) or ""


def until_new_study(page, before: str, timeout_s: float = 60) -> float:
    """Seconds until the Study selector names another study and its Agree button is drawn."""
    t0 = time.perf_counter()
    page.wait_for_function("""prev => {
        const box = [...document.querySelectorAll('input[role="combobox"]')]
            .find(i => i.getAttribute('aria-label') === 'Study');
        const agree = [...document.querySelectorAll('button')].some(b => b.innerText.includes('Agree'));
        return box && box.value.split(' — ')[0] !== prev && agree;
    }""", arg=before, timeout=timeout_s * 1000)
    return time.perf_counter() - t0


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} s (range {min(values):.2f}-{max(values):.2f}, n={len(values)})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright
    files = sorted(SAMPLE.rglob("*.jpeg"))[: args.images]
    info = cpu_info()
    decisive = sorted(f for f in info.flags if f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16",
                                                     "avx_vnni", "fma"))
    print(f"CPU: {info.model}, {info.cores} cores; flags: {' '.join(decisive)}")
    times: dict[str, list[float]] = {"open": [], "A/D": [], "N/P": [], "performance": []}
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "server.log", {"CXR_STORE_DIR": str(Path(tmp) / "store")})
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                page.goto(f"{server.url}/triage")
                page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(
                    [str(f) for f in files])
                page.get_by_role("button", name="Open in Review").wait_for(timeout=300_000)
                wait_idle(page, 300_000)
                slider = page.get_by_role("slider", name="Threshold (flag when probability ≥ threshold)")
                slider.focus()
                slider.press("Home")
                wait_idle(page)
                name = page.get_by_label("Reviewer name (recorded with your decisions)")
                name.fill("Benchmark reader")
                name.press("Enter")
                wait_idle(page)
                t0 = time.perf_counter()
                page.get_by_role("button", name="Open in Review").click()
                # the browser's viewer marks itself ready once both canvases are drawn (Grad-CAM included)
                page.locator('[data-testid="cxrWindowViewer"][data-ready]').wait_for(timeout=120_000)
                times["open"].append(time.perf_counter() - t0)
                wait_idle(page, 120_000)
                page.evaluate("document.activeElement && document.activeElement.blur()")
                for i in range(args.rounds):
                    before = shown(page)
                    print(f"round {i + 1}: on {before}", flush=True)
                    page.keyboard.press("a" if i % 2 == 0 else "d")
                    try:
                        times["A/D"].append(until_new_study(page, before))
                    except Exception:
                        page.screenshot(path="/tmp/t/pace_fail.png")
                        raise
                    wait_idle(page, 60_000)
                    before = shown(page)
                    page.keyboard.press("n")          # forward: the next flagged study is still undecided
                    times["N/P"].append(until_new_study(page, before))
                    wait_idle(page, 60_000)
                for _ in range(max(1, args.rounds // 2)):
                    t0 = time.perf_counter()
                    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Performance & thresholds").click()
                    page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=120_000)
                    times["performance"].append(time.perf_counter() - t0)
                    wait_idle(page, 120_000)
                    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Review").click()
                    wait_idle(page, 120_000)
                browser.close()
        finally:
            stop_server(server)
    targets = {"open": 2.0, "A/D": 0.5, "N/P": 0.5, "performance": 2.0}
    for key, values in times.items():
        print(f"{key:12s} {fmt(values):45s} target < {targets[key]:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
