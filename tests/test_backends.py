"""Inference backends: parity with torch float32 on real images, the cached export, INT8, no torch.

Each available backend is run for real on the shipped model and the sample radiographs (no mocks);
the export goes to a temporary cache folder ($CXR_CACHE_DIR) so nothing outside the test is touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from engine.inference.backends import BACKENDS, CpuInfo, artefacts, choose_backend
from engine.model.device import plain_policy
from engine.inference.predictor import Predictor
from engine.inputs.sources import iter_inputs
from helpers import DICOMS, JPEGS, ROOT, SHIPPED_MODEL, assert_close, write_tiny_checkpoint

pytest.importorskip("onnxruntime")
REAL = [str(p) for p in JPEGS + DICOMS]
ONNX_ATOL = 1e-4        # ONNX Runtime float32 against torch float32: the same arithmetic, reordered
BF16_ATOL = 0.05        # OpenVINO bfloat16 against torch float32 (0.023 at most on 782 validation images)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cxr-cache")
    old = os.environ.get("CXR_CACHE_DIR")
    os.environ["CXR_CACHE_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("CXR_CACHE_DIR", None)
    else:
        os.environ["CXR_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def float32(cache):
    p = Predictor.from_checkpoint(SHIPPED_MODEL, policy=plain_policy(), fuse=False)
    return [x.probability for x in p.predict_stream(iter_inputs(REAL))]


def _probs(predictor):
    preds = list(predictor.predict_stream(iter_inputs(REAL), batch_size=8))
    assert all(p.ok for p in preds), [p.message for p in preds if not p.ok]
    return [p.probability for p in preds]


def test_onnx_matches_torch_float32_on_real_images(cache, float32):
    onnx = Predictor.from_checkpoint(SHIPPED_MODEL, backend="onnx")
    assert onnx.runner.name == "onnx" and "ONNX Runtime" in onnx.backend_label
    assert_close(_probs(onnx), float32, ONNX_ATOL, "ONNX Runtime vs torch float32")
    # the torch side (Grad-CAM) loads on demand and its label names both
    assert "ONNX Runtime" in onnx.policy.label and "Grad-CAM: torch" in onnx.policy.label
    assert sum(p.numel() for p in onnx.model.parameters()) > 1_000_000


def test_export_is_cached_and_rebuilt_when_the_weights_change(cache, tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "tiny", seed=1)
    first = artefacts.onnx_path(ckpt)
    stamp = first.stat().st_mtime_ns
    assert artefacts.onnx_path(ckpt) == first and first.stat().st_mtime_ns == stamp   # made once
    write_tiny_checkpoint(tmp_path / "tiny", seed=2)                                   # new weights
    second = artefacts.onnx_path(ckpt)
    assert second != first and second.is_file()
    torch_p = Predictor.from_checkpoint(ckpt, policy=plain_policy(), fuse=False)
    onnx_p = Predictor.from_checkpoint(ckpt, backend="onnx")
    assert onnx_p.runner.path == second
    assert_close(_probs(onnx_p), _probs(torch_p), ONNX_ATOL, "new weights: ONNX vs torch")
    meta = json.loads((second.parent / "artefact.json").read_text())
    assert meta["weights_sha256"] == artefacts.weights_sha256(ckpt)


def _predict_without_torch(backend: str, out, cache) -> None:
    """``engine.predict`` on the real samples in a fresh process; asserts it never imported torch."""
    code = ("import sys; from engine.cli.predict import main; "
            f"rc = main([*{REAL!r}, '--out', {str(out)!r}, '--backend', {backend!r}, '--quiet']); "
            "print('TORCH_LOADED' if 'torch' in sys.modules else 'NO_TORCH'); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CXR_CACHE_DIR": str(cache)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("NO_TORCH")


def test_predict_cli_does_not_import_torch_on_the_onnx_backend(cache, tmp_path, float32):
    artefacts.onnx_path(SHIPPED_MODEL)      # the export is made once, before (it needs torch)
    out = tmp_path / "out.csv"
    _predict_without_torch("onnx", out, cache)
    import csv
    rows = list(csv.DictReader(open(out)))
    assert [r["status"] for r in rows] == ["ok"] * len(REAL)
    assert_close([float(r["probability"]) for r in rows], float32, ONNX_ATOL, "CLI on ONNX vs torch float32")


def test_int8_is_built_gated_and_chosen_only_when_it_passes(cache, tmp_path, float32):
    pytest.importorskip("onnx")
    import shutil

    from engine.inference.backends import int8
    # the shipped checkpoint carries its own gated graph (benchmarks/int8_sensitivity.py chose which
    # convolutions): it names these weights and passed on every validation and dev-half image
    shipped = json.loads((SHIPPED_MODEL / artefacts.INT8_REPORT).read_text())
    assert shipped["passed"] and shipped["weights_sha256"] == artefacts.weights_sha256(SHIPPED_MODEL)
    assert {k: v["n"] for k, v in shipped["sets"].items()} == {"validation": 782, "kermany-test-dev": 312}
    assert int8.ready(SHIPPED_MODEL) and int8.int8_path(SHIPPED_MODEL) == SHIPPED_MODEL / artefacts.INT8_FILE
    # without it, a graph is built into the cache from the weights and gated on the images given
    model = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL, model, ignore=shutil.ignore_patterns(artefacts.INT8_FILE, artefacts.INT8_REPORT))
    labels = np.array([0 if "NORMAL" in str(p) else 1 for p in JPEGS])
    report = int8.build(model, JPEGS, labels, every=1)
    assert set(report["gate"]) == {"max_probability_difference", "auc_difference", "flag_agreement"}
    a = report["all_validation"]
    assert a["n"] == len(JPEGS) and report["passed"] == int8.passes(a)
    assert int8.ready(model) == report["passed"]
    q = Predictor.from_checkpoint(model, backend="onnx-int8")
    assert q.runner.name == "onnx-int8"
    p8 = np.array(_probs(q)[:len(JPEGS)])
    ref = np.array(float32[:len(JPEGS)])
    # the report's figure is what the INT8 predictor really gives on these images
    assert abs(np.abs(p8 - ref).max() - a["max_probability_difference"]) < 1e-3
    # the quantized network keeps the ranking of these clear-cut sample images
    assert (p8[labels == 1].min() > p8[labels == 0].max()) == (ref[labels == 1].min() > ref[labels == 0].max())
    # a report that failed its gate is never chosen automatically
    (int8.artefacts.artefact_dir(model) / artefacts.INT8_REPORT).write_text(json.dumps({**report, "passed": False}))
    assert not int8.ready(model)


def test_openvino_matches_torch_float32_and_starts_without_torch(cache, tmp_path, float32):
    pytest.importorskip("openvino")
    from engine.inference.backends import cpu_info
    ov = Predictor.from_checkpoint(SHIPPED_MODEL, backend="openvino")
    assert ov.runner.name == "openvino" and ov.runner.bfloat16 == cpu_info().native_bf16
    assert ("bfloat16" if cpu_info().native_bf16 else "float32") in ov.backend_label
    probs = _probs(ov)
    assert_close(probs, float32, BF16_ATOL if ov.runner.bfloat16 else ONNX_ATOL, "OpenVINO vs torch float32")
    t = ov.threshold
    assert (np.array(probs) >= t).tolist() == (np.array(float32) >= t).tolist()   # same flags at the card's threshold
    # the features and the stage input (Grad-CAM) come from the same graph
    x = np.zeros((2, 1, 224, 224), np.float32)
    out = ov.runner.run_all(x)
    assert out["logits"].shape == (2, 2) and out["features"].shape[0] == 2 and out["stage_input"].ndim == 4
    # its compiled network is cached beside the exported graph
    assert any((artefacts.onnx_path(SHIPPED_MODEL).parent / "openvino").iterdir())
    _predict_without_torch("openvino", tmp_path / "ov.csv", cache)


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "fma"}, "onnx"),                                       # AMD EPYC, AVX2 only
    ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, "openvino"), # AMD EPYC with AVX512-BF16
    ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"}, "torch"),  # Xeon, AMX
])
def test_choice_follows_the_cpu(monkeypatch, flags, expected):
    import engine.inference.backends as backends
    monkeypatch.delenv("CXR_BACKEND", raising=False)
    monkeypatch.delenv("CXR_PRECISION", raising=False)
    monkeypatch.setattr(backends, "cpu_info", lambda: CpuInfo("test CPU", 2, frozenset(flags)))
    monkeypatch.setattr(backends, "has_nvidia_gpu", lambda: False)
    monkeypatch.setattr(backends, "openvino_available", lambda: True)
    choice = choose_backend()
    assert choice.name == expected and choice.reason
    assert choose_backend(int8_ready=False).name != "onnx-int8"
    # a gated INT8 graph changes nothing where bfloat16 or AMX wins; without 8-bit dot products it is
    # timed against float32 (and OpenVINO) on first use, never taken on trust
    with_int8 = choose_backend(int8_ready=True)
    assert with_int8.name == expected
    assert ("onnx-int8" in with_int8.challengers) == (expected == "onnx")
    monkeypatch.setenv("CXR_BACKEND", "onnx")
    assert choose_backend().name == "onnx"
    monkeypatch.setenv("CXR_BACKEND", "nonsense")
    with pytest.raises(ValueError):
        choose_backend()
    assert set(BACKENDS) == {"torch", "onnx", "onnx-int8", "openvino"}
    monkeypatch.delenv("CXR_BACKEND")
    monkeypatch.setattr(backends, "openvino_available", lambda: False)    # not installed: ONNX Runtime
    assert choose_backend().name == ("torch" if "amx_bf16" in flags else "onnx")


def test_an_automatic_backend_that_cannot_start_falls_back_in_order(cache, monkeypatch, float32):
    import engine.inference.backends as backends
    import engine.inference.backends.ov as ov
    monkeypatch.delenv("CXR_BACKEND", raising=False)
    monkeypatch.delenv("CXR_PRECISION", raising=False)
    monkeypatch.setattr(backends, "cpu_info", lambda: CpuInfo("test CPU", 2, frozenset({"avx2", "avx512_bf16"})))
    monkeypatch.setattr(backends, "has_nvidia_gpu", lambda: False)
    monkeypatch.setattr(backends, "openvino_available", lambda: True)

    def broken(*args, **kwargs):
        raise RuntimeError("no CPU plugin here")
    monkeypatch.setattr(ov, "OpenVinoRunner", broken)
    p = Predictor.from_checkpoint(SHIPPED_MODEL)                   # auto: OpenVINO, then ONNX Runtime
    assert p.runner.name == "onnx" and "openvino could not start" in p.backend.reason
    assert_close(_probs(p), float32, ONNX_ATOL, "fallback ONNX Runtime vs torch float32")
    with pytest.raises(RuntimeError, match="no CPU plugin"):
        Predictor.from_checkpoint(SHIPPED_MODEL, backend="openvino")   # asked for: the error is the answer


@pytest.mark.parametrize("kind, flags, table, atol", [
    ("AVX2-only", {"avx2", "fma"}, "onnx", ONNX_ATOL),
    ("AMX", {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"}, "torch", BF16_ATOL),
])
def test_where_the_table_never_timed_openvino_both_are_timed_once_and_the_record_kept(
        cache, monkeypatch, float32, kind, flags, table, atol):
    """On a CPU whose row in the choice table was never timed against OpenVINO (here: this machine
    presented as AVX2-only, then as AMX), the first prediction times the table's choice and OpenVINO
    on the real network, uses OpenVINO only with a 10% margin, and later starts read the record."""
    pytest.importorskip("openvino")
    import engine.inference.backends as backends
    from engine.inference.backends import measured
    monkeypatch.delenv("CXR_BACKEND", raising=False)
    monkeypatch.delenv("CXR_PRECISION", raising=False)
    monkeypatch.setattr(backends, "cpu_info", lambda: CpuInfo(f"test {kind} CPU", 2, frozenset(flags)))
    monkeypatch.setattr(backends, "has_nvidia_gpu", lambda: False)
    from engine.inference.backends import int8
    names = (table, "openvino") + (("onnx-int8",) if table == "onnx" and int8.ready(SHIPPED_MODEL) else ())
    record_file = measured.timing_path(SHIPPED_MODEL, None, names)
    record_file.unlink(missing_ok=True)

    first = Predictor.from_checkpoint(SHIPPED_MODEL)
    record = json.loads(record_file.read_text())
    rates = record["images_per_second"]
    assert rates[table] > 0 and rates["openvino"] > 0 and f"test {kind} CPU" in record["cpu"]
    fastest = max(names[1:], key=rates.get)
    assert record["choice"] == (fastest if rates[fastest] >= measured.MARGIN * rates[table] else table)
    assert first.runner.name == record["choice"] and "timed here" in first.backend.reason
    if first.runner.name == "openvino":
        assert ("bfloat16" in first.backend_label) == (kind == "AMX")   # float32 without native bfloat16
    gate = int8.GATE["max_probability_difference"] if first.runner.name == "onnx-int8" else atol
    assert_close(_probs(first), float32, gate, f"{kind}: {first.runner.name} vs torch float32")

    other = table if record["choice"] != table else "openvino"
    record_file.write_text(json.dumps({**record, "choice": other}))     # the record decides, not a new timing
    again = Predictor.from_checkpoint(SHIPPED_MODEL)
    assert again.runner.name == other and json.loads(record_file.read_text())["choice"] == other
    assert_close(_probs(again), float32, atol, f"{kind}: {other} vs torch float32")

    record_file.unlink()
    monkeypatch.setenv("CXR_BACKEND", table)                   # a forced backend is never timed
    assert Predictor.from_checkpoint(SHIPPED_MODEL).runner.name == table and not record_file.exists()


def test_the_shared_torch_network_keeps_each_threads_features_and_stage_inputs_apart():
    """The dashboard's sessions share one predictor: two threads scoring at once on the torch backend
    must each get their own images' features (out-of-population score) and layer3 outputs (Grad-CAM),
    although both forward passes fire the same hooks on the shared network."""
    import threading
    from engine.model.checkpoint import load_checkpoint
    predictor = Predictor(*load_checkpoint(SHIPPED_MODEL), plain_policy(), checkpoint=SHIPPED_MODEL)
    prep = predictor.prep
    from engine.decode import read_image
    images = [prep.resize(read_image(p).pixels) for p in JPEGS[:5]]
    batches = {"a": images[:3], "b": images[3:]}
    alone = {k: predictor.score_arrays(v, keep_stage=True) for k, v in batches.items()}
    errors: list[str] = []

    def score(key: str) -> None:
        for _ in range(8):
            got = predictor.score_arrays(batches[key], keep_stage=True)
            if got.stage_inputs is None or len(got.stage_inputs) != len(batches[key]) or \
                    not np.allclose(np.stack(got.stage_inputs), np.stack(alone[key].stage_inputs), atol=1e-4) or \
                    not np.allclose(got.distances, alone[key].distances, rtol=1e-4):
                errors.append(key)
    threads = [threading.Thread(target=score, args=(k,)) for k in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"results mixed between threads: {errors}"


def test_a_record_written_first_by_another_process_is_kept(tmp_path):
    """Processes that start together (Ray's actors) end with one record: the first one written."""
    path = tmp_path / "timing.json"
    first = artefacts.write_json_once(path, {"choice": "onnx"})
    second = artefacts.write_json_once(path, {"choice": "openvino"})
    assert first == second == {"choice": "onnx"} == json.loads(path.read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["timing.json"]      # no temporary file left behind
