"""Dashboard start-up: a fresh process until the first page is drawn with the model ready (prints
figures; never fails).

    python benchmarks/dashboard_startup.py [--runs 3] [--backends auto,onnx,torch]

Each run is a new Python process that runs ``dashboard/Home.py`` once with Streamlit's AppTest (the
script as a browser's first visit runs it: page config, worklist, sidebar with the model's card and
device, the Home page) on an empty temporary store, and reports the wall time from process start,
the backend the sidebar names, and whether torch was imported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from streamlit.testing.v1 import AppTest
app = AppTest.from_file("dashboard/Home.py", default_timeout=300).run()
seconds = time.perf_counter() - t0
text = " ".join(str(getattr(e, "value", "")) for e in app.sidebar.caption)
print(json.dumps({"seconds": seconds, "errors": [e.message for e in app.exception],
                  "device": text, "torch": "torch" in sys.modules}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--backends", default="auto,onnx,torch")
    args = ap.parse_args()
    from engine.inference.backends import cpu_info
    print(f"CPU: {cpu_info().summary()}")
    for backend in args.backends.split(","):
        times, last = [], {}
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                env = {**os.environ, "CXR_BACKEND": backend, "CXR_STORE_DIR": str(Path(tmp) / "store"),
                       "CXR_PROFILES_DIR": str(Path(tmp) / "profiles")}
                out = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True,
                                     text=True, timeout=600)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            if out.returncode or not lines:
                print(f"{backend}: failed: {out.stderr[-500:]}")
                break
            last = json.loads(lines[-1])
            times.append(last["seconds"])
        if times:
            device = last["device"].split(" Card threshold")[0]
            print(f"{backend:>6}: first page with the model ready in {statistics.median(times):.2f} s "
                  f"(median of {len(times)}: {', '.join(f'{t:.2f}' for t in times)}); torch imported: "
                  f"{last['torch']}; {device}" + (f"; errors: {last['errors']}" if last["errors"] else ""))


if __name__ == "__main__":
    main()
