"""Benchmark: script time of a threshold change on a large worklist (not a test; prints figures).

    python -m dashboard.bench_threshold [--studies 1000] [--repeats 7]

Injects N synthetic studies (with thumbnails) into a session as a finished batch, opens Triage in
Streamlit's AppTest, then moves the threshold slider several times and reports the median time
of ``AppTest.run()`` (the whole script: sidebar, re-flagging, counts, table). It also counts the
images the model is asked to score during those reruns, which must be zero. A plain rerun with
no change is measured in the same session as the baseline.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from pathlib import Path

import numpy as np

from engine.image import StudyMetadata

from dashboard.batch import Batch, BatchStore, StudyRecord
from dashboard.imaging import thumbnail_data_uri
from dashboard.worklist import build_worklist

HOME = Path(__file__).resolve().parent / "Home.py"


def synthetic_records(n: int, seed: int = 0, unreadable_every: int = 50) -> list[StudyRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        sha = hashlib.sha256(f"study-{i}".encode()).hexdigest()
        if unreadable_every and i % unreadable_every == 0:
            out.append(StudyRecord(f"study_{i:04d}.dcm", sha, "error", None,
                                   f"study_{i:04d}.dcm: not a DICOM, JPEG or PNG image (plain text)"))
            continue
        img = np.clip(rng.normal(0.5, 0.2, (224, 224)), 0, 1).astype(np.float32)
        out.append(StudyRecord(f"study_{i:04d}.jpeg", sha, "ok", float(rng.beta(2, 2)), "", (),
                               StudyMetadata(format="jpeg"), thumbnail=thumbnail_data_uri(img)))
    return out


def synthetic_batch(n: int) -> Batch:
    records = synthetic_records(n)
    return Batch("benchmark", (), records, {}, build_worklist(records), origin="benchmark")


def _time_threshold_changes(at, repeats: int) -> tuple[list[float], list[float]]:
    """(plain reruns, reruns after a slider move), alternating, in seconds."""
    baseline, change = [], []
    for thr in np.linspace(0.2, 0.8, repeats):
        t0 = time.perf_counter()
        at.run()
        baseline.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        at.slider(key="threshold").set_value(float(thr)).run()
        change.append(time.perf_counter() - t0)
        assert not at.exception, at.exception
    return baseline, change


def _report(what: str, baseline: list[float], change: list[float]) -> None:
    ms = lambda xs: f"median {statistics.median(xs) * 1000:.0f} ms (min {min(xs) * 1000:.0f}, max {max(xs) * 1000:.0f})"
    print(f"{what}\n  plain rerun:      {ms(baseline)}\n  threshold change: {ms(change)}")


def synthetic_csv(n: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)
    return ("label,probability\n" + "".join(f"{a},{b:.6f}\n" for a, b in zip(y, p))).encode()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-thumbnails", action="store_true")
    args = ap.parse_args(argv)

    from streamlit.testing.v1 import AppTest
    from engine.predictor import Predictor

    calls = {"images": 0}
    original = Predictor.predict_arrays

    def counting(self, resized, batch_size=64):
        calls["images"] += len(resized)
        return original(self, resized, batch_size)

    Predictor.predict_arrays = counting
    try:
        at = AppTest.from_file(str(HOME), default_timeout=300).run()
        at.session_state["triage_store"] = BatchStore(batch=synthetic_batch(args.studies))
        at.switch_page("views/triage.py").run()
        if args.no_thumbnails:
            at.toggle(key="wl_thumbs").set_value(False).run()
        assert not at.exception, at.exception
        rows = len(at.dataframe[0].value)
        _report(f"Triage: {args.studies} studies ({rows} rows shown), thumbnails: {not args.no_thumbnails}",
                *_time_threshold_changes(at, args.repeats))
        flagged = next(m.value for m in at.metric if m.label == "Flagged")
        print(f"  flagged at the last threshold: {flagged}")

        at.switch_page("views/performance.py").run()
        at.radio(key="perf_source").set_value("Predictions CSV").run()
        at.file_uploader(key="perf_csv").set_value(
            [("bench.csv", synthetic_csv(args.studies), "text/csv")]).run()
        assert not at.exception and len(at.get("plotly_chart")) == 5, at.exception
        _report(f"Performance: {args.studies} labelled predictions, 5 figures, bootstrap CIs (1,000 resamples)",
                *_time_threshold_changes(at, args.repeats))
        print(f"images sent to the model during all these reruns: {calls['images']}")
    finally:
        Predictor.predict_arrays = original
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
