"""engine.archive on a real local Ray instance (``ray start --head`` on 127.0.0.1, no mocks).

Scores real sample images (loose, in a ZIP, and broken files), compares the probabilities with
``engine.predict`` on the same files, kills the driver half-way and resumes: every input ends as
exactly one row, and nothing that was written before the kill is scored again.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import DICOMS, JPEGS, ROOT, assert_close, zip_bytes

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")
BF16_ATOL = 2e-2   # the same backend, other batch compositions (bfloat16 on a bf16 CPU)
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    """A one-node Ray cluster for this module, stopped by the PID of the process that started it."""
    ray_bin = Path(sys.executable).with_name("ray")
    port = _free_port()
    temp = tmp_path_factory.mktemp("ray")
    log = open(temp / "ray-start.log", "w")
    proc = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                             f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                             # every fixed default port of its own, so a Ray someone else runs here does not clash
                             f"--ray-client-server-port={_free_port()}", f"--metrics-export-port={_free_port()}",
                             f"--dashboard-agent-listen-port={_free_port()}",
                             f"--dashboard-agent-grpc-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
                             "--disable-usage-stats", f"--temp-dir={Path('/tmp') / ('ray-test-' + str(port))}"],
                            env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited: {(temp / 'ray-start.log').read_text()[-3000:]}")
        if "Ray runtime started" in (temp / "ray-start.log").read_text():
            break
        time.sleep(0.5)
    else:
        raise RuntimeError("ray start did not come up in 120 s")
    yield address
    os.killpg(proc.pid, signal.SIGTERM)     # the group of the process this fixture started
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    log.close()
    shutil.rmtree(Path("/tmp") / f"ray-test-{port}", ignore_errors=True)


@pytest.fixture(scope="module")
def archive_dir(tmp_path_factory) -> Path:
    """60 inputs: the sample JPEGs four times over, the DICOMs, a ZIP of three and two broken files."""
    root = tmp_path_factory.mktemp("archive")
    for copy in range(4):
        for p in JPEGS:
            dest = root / f"site{copy}" / p.parent.name / p.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest)
    for p in DICOMS:
        shutil.copyfile(p, root / p.name)
    (root / "batch.zip").write_bytes(zip_bytes({f"z/{p.name}": p.read_bytes() for p in JPEGS[:3]}))
    (root / "broken").mkdir()
    (root / "broken" / "truncated.jpeg").write_bytes(JPEGS[0].read_bytes()[:500])
    (root / "broken" / "notes.jpg").write_bytes(b"not an image\n")
    return root


def _archive(args, env=ENV, **kw):
    return subprocess.Popen([sys.executable, "-m", "engine.archive", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _parts_rows(out: Path) -> list[dict]:
    rows = []
    for f in sorted((out / "parts").glob("*.parquet")):
        rows += pq.read_table(f).to_pylist()
    return rows


@pytest.mark.slow
def test_archive_matches_predict_and_resumes_after_a_kill(ray_address, archive_dir, tmp_path):
    out = tmp_path / "out"
    args = [str(archive_dir), "--out", str(out), "--address", ray_address, "--workers", "1",
            "--batch-size", "2", "--csv", "--quiet"]
    first = _archive(args)
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:
        scored = [r for r in (_parts_rows(out) if (out / "parts").is_dir() else []) if r["status"] == "ok"]
        if len(scored) >= 4:
            break
        time.sleep(0.2)
    assert first.poll() is None, "the first run ended before it could be killed"
    first.send_signal(signal.SIGKILL)          # the driver dies half-way
    first.communicate(timeout=60)
    before = {r["file"]: r for r in _parts_rows(out)}
    assert before, "nothing was written before the kill"

    second = _archive(args)
    stdout, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    table = pq.read_table(out / "predictions.parquet").to_pylist()
    names = [r["file"] for r in table]
    assert len(names) == len(set(names)) == 4 * len(JPEGS) + len(DICOMS) + 3 + 2
    # nothing written before the kill was scored again, and nothing was written twice
    all_rows = _parts_rows(out)
    assert len(all_rows) == len(names), "a file was written twice"
    assert summary["this_run"]["skipped"] == len([r for r in before.values() if r["sha256"]])
    assert summary["this_run"]["scored"] == 4 * len(JPEGS) + len(DICOMS) + 3 - len(
        [r for r in before.values() if r["status"] == "ok"])
    assert summary["errors"] == 2 and {r["file"] for r in table if r["status"] == "error"} == \
        {"broken/notes.jpg", "broken/truncated.jpeg"}
    assert "batch.zip/z/" + JPEGS[0].name in names

    # the same files through the batch CLI: same rows, same order, same probabilities
    cli = tmp_path / "cli.csv"
    subprocess.run([sys.executable, "-m", "engine.predict", str(archive_dir), "--out", str(cli), "--quiet"],
                   cwd=ROOT, env=ENV, check=True, timeout=600)
    expected = list(csv.DictReader(open(cli)))
    assert [r["file"] for r in expected] == names
    assert [r["status"] for r in expected] == [r["status"] for r in table]
    ok = [(float(e["probability"]), r["probability"]) for e, r in zip(expected, table) if r["status"] == "ok"]
    assert_close([a for a, _ in ok], [b for _, b in ok], BF16_ATOL, "archive vs engine.predict")
    assert all(r["flagged"] == (r["probability"] >= r["threshold"]) for r in table if r["status"] == "ok")
    assert [r["sha256"] for r in expected] == [r["sha256"] for r in table]
    # identifiers stay out unless asked; the CSV has engine.predict's columns
    assert "patient_name" not in table[0]
    assert list(csv.DictReader(open(out / "predictions.csv")).fieldnames) == list(expected[0].keys())

    # a third run has nothing left to score
    third = _archive(args)
    _, stderr = third.communicate(timeout=600)
    assert third.returncode == 0, stderr[-3000:]
    again = json.loads((out / "summary.json").read_text())
    assert again["this_run"]["scored"] == 0 and again["rows"] == len(names)
    assert len(_parts_rows(out)) == len(names)


@pytest.mark.slow
def test_archive_manifest_glob_heatmaps_and_a_changed_file(ray_address, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for p in JPEGS[:4]:
        shutil.copyfile(p, data / p.name)
    manifest = tmp_path / "list.csv"
    manifest.write_text("path\n" + "".join(f"data/{p.name}\n" for p in JPEGS[:2]) + "data/missing.jpeg\n")
    out = tmp_path / "out"
    args = [str(manifest), str(data / "*.jpeg"), "--out", str(out), "--address", ray_address,
            "--workers", "1", "--heatmaps", "--quiet"]
    run = _archive(args)
    _, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr[-3000:]
    table = pq.read_table(out / "predictions.parquet").to_pylist()
    by_name = {r["file"]: r for r in table}
    assert by_name["missing.jpeg"]["status"] == "error"
    assert sum(r["status"] == "ok" for r in table) == 4      # each file once, whichever source named it
    assert len(list((out / "heatmaps").glob("*.png"))) == 4

    # a file whose content changed is scored again; the newest row wins
    shutil.copyfile(JPEGS[-1], data / JPEGS[0].name)
    run = _archive(args)
    _, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["this_run"]["scored"] == 1 and summary["this_run"]["skipped"] == 3
    new = {r["file"]: r for r in pq.read_table(out / "predictions.parquet").to_pylist()}
    assert new[JPEGS[0].name]["sha256"] != by_name[JPEGS[0].name]["sha256"]
    assert len(new) == len(by_name)

    # --anonymise-names: the outputs name files by a hash (file names often hold patients' names)
    from engine.worklist.csvsafe import anonymous_name
    shutil.copyfile(JPEGS[-2], data / JPEGS[1].name)
    before = {p.name for p in (out / "heatmaps").iterdir()}
    run = _archive(args + ["--anonymise-names", "--csv"])
    _, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr[-3000:]
    hidden = pq.read_table(out / "predictions.parquet").to_pylist()
    assert sorted(r["file"] for r in hidden) == sorted(anonymous_name(n) for n in new)
    [png] = {p.name for p in (out / "heatmaps").iterdir()} - before        # the one file scored again
    text = (out / "predictions.csv").read_text() + " " + png
    assert not any(n in text or n.rsplit(".", 1)[0] in text for n in new)
    assert png.startswith(anonymous_name(JPEGS[1].name))
