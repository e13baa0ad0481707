"""Benchmark: script time of the dashboard on a large stored worklist (prints figures; never fails).

    python benchmarks/worklist_scale.py [--studies 5000] [--repeats 5]

Writes N synthetic studies (with thumbnails and results) into a temporary worklist store, opens the
dashboard in Streamlit's AppTest on that worklist's link, and reports the median script time of a
plain rerun, a threshold change, a change of the worklist view (filter), and a page change (Triage
-> Review -> Triage). It also counts the images sent to the model meanwhile, which must be zero:
every study was scored when it was stored.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
HOME = ROOT / "dashboard" / "Home.py"


def fill_store(root: Path, n: int, model_key: str, seed: int = 0) -> str:
    """A worklist of ``n`` scored studies (every 50th unreadable); return its token."""
    from dashboard.imaging import thumbnail_data_uri
    from engine.image import StudyMetadata
    from engine.worklist.store import Result, Store
    store = Store(root)
    token, wl = store.create_worklist("benchmark")
    rng = np.random.default_rng(seed)
    thumbs = [thumbnail_data_uri(np.clip(rng.normal(0.5, 0.2, (64, 64)), 0, 1).astype(np.float32))
              for _ in range(16)]
    for i in range(n):
        sha = hashlib.sha256(f"study-{i}".encode()).hexdigest()
        if i % 50 == 0:
            store.add_study(wl, f"study_{i:05d}.dcm", read_error=f"study_{i:05d}.dcm: not a DICOM, JPEG or PNG image")
            continue
        store.add_study(wl, f"study_{i:05d}.jpeg", sha)
        store.put_result(sha, model_key, Result("ok", float(rng.beta(2, 2)), "", (),
                                                StudyMetadata(format="jpeg", modality="CR", study_date="20261130")),
                         thumbnail=thumbs[i % len(thumbs)])
    return token


def median_ms(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1000:,.0f} ms (min {min(xs) * 1000:,.0f}, max {max(xs) * 1000:,.0f})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    from benchmarks.hostile_memory import cpu_model
    os.environ["CXR_STORE_DIR"] = tempfile.mkdtemp(prefix="cxr-worklist-bench-")
    from streamlit.testing.v1 import AppTest
    from dashboard.resources import model_ref
    from engine.inference.predictor import Predictor

    token = fill_store(Path(os.environ["CXR_STORE_DIR"]), args.studies, model_ref(None).key)
    calls = {"images": 0}
    original = Predictor.score_arrays

    def counting(self, resized, batch_size=64, **kwargs):
        calls["images"] += len(resized)
        return original(self, resized, batch_size, **kwargs)

    Predictor.score_arrays = counting
    try:
        at = AppTest.from_file(str(HOME), default_timeout=600)
        at.query_params["w"] = token
        at.run()
        at.switch_page("views/triage.py").run()
        assert not at.exception, at.exception
        print(f"CPU: {cpu_model()}; Triage on a stored worklist of {args.studies:,} studies "
              f"({len(at.dataframe[0].value):,} rows shown)")
        plain, thr, view, pages = [], [], [], []
        for k, t in enumerate(np.linspace(0.2, 0.8, args.repeats)):
            t0 = time.perf_counter(); at.run(); plain.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); at.slider(key="threshold").set_value(float(t)).run()
            thr.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); at.radio(key="wl_view").set_value("Flagged" if k % 2 == 0 else "All").run()
            view.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            at.switch_page("views/review.py").run()
            at.switch_page("views/triage.py").run()
            pages.append((time.perf_counter() - t0) / 2)
            assert not at.exception, at.exception
        print(f"  plain rerun:        {median_ms(plain)}")
        print(f"  threshold change:   {median_ms(thr)}")
        print(f"  view (filter):      {median_ms(view)}")
        print(f"  page change:        {median_ms(pages)} (Review includes one Grad-CAM the first time)")
        print(f"  images sent to the model meanwhile: {calls['images']}")
    finally:
        Predictor.score_arrays = original
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
