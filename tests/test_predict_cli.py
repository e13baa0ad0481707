"""``python -m engine.predict`` end to end on real and broken files, in-process and as a subprocess."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from engine.model.checkpoint import read_card
from engine.decode import read_image
from engine.decode.pool import shrink_to
from engine.inputs.limits import DISPLAY_MAX_SIDE
from engine.cli.predict import IDENTIFIER_COLUMNS, main
from helpers import DICOMS, NORMAL, PNEUMONIA, SHIPPED_MODEL, tree, zip_bytes

REQUIRED = ["file", "status", "message", "probability", "flagged", "threshold", "model"]


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A mixed batch: real JPEGs, a real non-square DICOM, broken files and a ZIP with a hostile member.

    Returns the folder, the paths to pass and, per expected CSV row, the label and the source
    bytes (None for the files that must be refused).
    """
    root = tmp_path_factory.mktemp("cli")
    inputs = root / "inputs"
    inputs.mkdir()
    (inputs / "notes.dcm").write_text("not a DICOM file, just text\n")
    (inputs / "empty.jpeg").write_bytes(b"")
    members = {"in/a.jpeg": NORMAL[2].read_bytes(), "../../x.jpeg": PNEUMONIA[2].read_bytes()}
    (inputs / "batch.zip").write_bytes(zip_bytes(members))
    files = [NORMAL[0], NORMAL[1], PNEUMONIA[0], PNEUMONIA[1], DICOMS[0]]
    paths = [str(p) for p in files] + [str(inputs / n) for n in ("notes.dcm", "empty.jpeg", "batch.zip")]
    # Names are relative: a file given directly is named by its base name, a member by archive/member.
    rows = [(p.name, p.read_bytes()) for p in files] + [("notes.dcm", None), ("empty.jpeg", None)]
    rows += [("batch.zip/in/a.jpeg", members["in/a.jpeg"]), ("batch.zip/x.jpeg", members["../../x.jpeg"])]
    return root, paths, rows


@pytest.fixture(scope="module")
def run(batch):
    """One in-process run with heatmaps, from a working folder where stray files would show."""
    root, paths, _ = batch
    work = root / "work" / "deep"
    work.mkdir(parents=True)
    before = tree(root)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        code = main([*paths, "--out", str(root / "out" / "results.csv"), "--heatmaps", str(root / "maps"),
                     "--checkpoint", str(SHIPPED_MODEL), "--batch-size", "4", "--quiet"])
    finally:
        os.chdir(cwd)
    columns, rows = read_csv(root / "out" / "results.csv")
    return code, columns, rows, tree(root) - before


def test_one_row_per_input_in_order(run, batch):
    code, columns, rows, _ = run
    assert code == 0
    assert columns[:len(REQUIRED)] == REQUIRED
    assert [r["file"] for r in rows] == [label for label, _ in batch[2]]
    assert [r["status"] for r in rows] == ["ok" if data else "error" for _, data in batch[2]]


def test_refused_files_have_a_message_naming_them_and_no_probability(run):
    for row in run[2]:
        if row["status"] == "error":
            assert row["probability"] == "" and row["flagged"] == ""
            assert row["file"] in row["message"]
        else:
            assert 0.0 <= float(row["probability"]) <= 1.0 and row["message"] == ""


def test_default_threshold_and_model_come_from_the_card(run):
    card = read_card(SHIPPED_MODEL)
    assert {float(r["threshold"]) for r in run[2]} == {card.threshold}
    assert {r["model"] for r in run[2]} == {f"{card.name} {card.version}".strip()}
    assert all(r["flagged"] == ("yes" if float(r["probability"]) >= card.threshold else "no")
               for r in run[2] if r["status"] == "ok")


def test_heatmaps_one_png_per_readable_file_original_beside_overlay(run, batch):
    root, _, sources = batch
    written = run[3]
    pngs = sorted(p for p in written if p.startswith("maps/"))
    readable = [(label, data) for label, data in sources if data]
    assert len(pngs) == len(readable)
    for label, data in readable:
        (png,) = [p for p in pngs if p.endswith(Path(label).name + ".png")]
        # The display copy the decoding worker sends back: the original shrunk to 1024 px a side at most.
        original = shrink_to(read_image(data, label).pixels, DISPLAY_MAX_SIDE)
        picture = cv2.imread(str(root / png), cv2.IMREAD_COLOR)
        height, width = original.shape
        assert max(height, width) <= DISPLAY_MAX_SIDE
        assert picture.shape == (height, 2 * width, 3), f"{png} for {label}"
        left = np.clip(original * 255 + 0.5, 0, 255).astype(np.uint8)
        assert np.abs(picture[:, :width, 0].astype(int) - left).max() <= 1   # the original, untinted, on the left


def test_nothing_is_written_but_the_csv_and_the_heatmaps(run):
    written = run[3]
    assert {p for p in written if not p.startswith("maps")} == {"out", "out/results.csv"}
    assert all(p == "maps" or (p.startswith("maps/") and p.count("/") == 1) for p in written if p.startswith("maps"))


def test_no_identifiers_unless_asked(run, batch, tmp_path):
    columns = run[1]
    ds = pydicom.dcmread(DICOMS[0], stop_before_pixels=True)
    assert not set(IDENTIFIER_COLUMNS) & set(columns)
    text = (batch[0] / "out" / "results.csv").read_text()
    assert str(ds.PatientID) not in text and str(ds.PatientName) not in text

    out = tmp_path / "with_ids.csv"
    assert main([str(DICOMS[0]), "--out", str(out), "--checkpoint", str(SHIPPED_MODEL),
                 "--include-identifiers", "--quiet"]) == 0
    columns, (row,) = read_csv(out)
    assert set(IDENTIFIER_COLUMNS) <= set(columns)
    assert row["patient_id"] == str(ds.PatientID)


def test_flagged_follows_the_threshold_given(run, batch, tmp_path):
    values = sorted({float(r["probability"]) for r in run[2] if r["status"] == "ok"})
    gap = int(np.argmax(np.diff(values)))
    threshold = (values[gap] + values[gap + 1]) / 2     # in the widest gap: some flagged, some not
    out = tmp_path / "t.csv"
    assert main([*batch[1], "--out", str(out), "--checkpoint", str(SHIPPED_MODEL),
                 "--threshold", str(threshold), "--batch-size", "4", "--quiet"]) == 0
    rows = [r for r in read_csv(out)[1] if r["status"] == "ok"]
    assert {float(r["threshold"]) for r in rows} == {threshold}
    assert [r["probability"] for r in rows] == [r["probability"] for r in run[2] if r["status"] == "ok"]
    flagged = [r["flagged"] for r in rows]
    assert flagged == ["yes" if float(r["probability"]) >= threshold else "no" for r in rows]
    assert "yes" in flagged and "no" in flagged


# ------------------------------------------------------------------ exit codes

@pytest.mark.parametrize("threshold", ["1.5", "-0.1", "nan", "inf", "high"])
def test_bad_threshold_exits_2_before_writing(tmp_path, threshold, capsys):
    out = tmp_path / "r.csv"
    with pytest.raises(SystemExit) as exc:
        main([str(NORMAL[0]), "--out", str(out), "--threshold", threshold])
    assert exc.value.code == 2
    assert f"argument --threshold: must be a number between 0 and 1, got {threshold!r}" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("module, argv", [
    ("engine.cli.predict", []), ("engine.cli.archive", []), ("engine.cli.ingest", []), ("engine.cli.monitor", []),
    ("engine.pacs.receive", []), ("engine.pacs.send", ["send"]), ("training.evaluate", []), ("training.stress", [])])
def test_every_command_checks_the_threshold_alike(module, argv, capsys):
    """One rule and one message for --threshold in every python -m entry point (engine.inputs.arguments)."""
    import importlib
    parser = importlib.import_module(module).get_args_parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([*argv, "--threshold", "1.5"])
    assert exc.value.code == 2
    assert "argument --threshold: must be a number between 0 and 1, got '1.5'" in capsys.readouterr().err
    threshold = next(a for a in (parser._subparsers._group_actions[0].choices[argv[0]] if argv else parser)._actions
                     if "--threshold" in a.option_strings)
    assert threshold.type("0.25") == 0.25 and threshold.type("0") == 0.0 and threshold.type("1") == 1.0


@pytest.mark.parametrize("size", ["0", "-1"])
def test_bad_batch_size_exits_2(tmp_path, size):
    out = tmp_path / "r.csv"
    assert main([str(NORMAL[0]), "--out", str(out), "--checkpoint", str(tmp_path / "none"),
                 "--batch-size", size]) == 2
    assert not out.exists()


def test_missing_checkpoint_exits_3(tmp_path, capsys):
    missing = tmp_path / "no_model"
    assert main([str(NORMAL[0]), "--out", str(tmp_path / "r.csv"), "--checkpoint", str(missing)]) == 3
    assert str(missing) in capsys.readouterr().err


def test_subprocess_exits_0_with_refused_files(tmp_path):
    """As a user runs it: the process ends without the interpreter's teardown (engine.fast_exit), so
    everything must be written and flushed before main returns."""
    (tmp_path / "notes.dcm").write_text("text\n")
    proc = subprocess.run([sys.executable, "-m", "engine.predict", str(PNEUMONIA[0]), "notes.dcm",
                           "--out", "r.csv", "--quiet", "--heatmaps", "maps"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)   # the default checkpoint: the shipped model
    assert proc.returncode == 0, proc.stderr
    assert [r["status"] for r in read_csv(tmp_path / "r.csv")[1]] == ["ok", "error"]
    assert "1 refused" in proc.stderr
    [png] = (tmp_path / "maps").iterdir()
    height, width = shrink_to(read_image(PNEUMONIA[0]).pixels, DISPLAY_MAX_SIDE).shape
    assert cv2.imread(str(png)).shape == (height, 2 * width, 3)   # complete: decodes at full size


def test_subprocess_exit_code_3_when_the_model_cannot_load(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "engine.predict", str(PNEUMONIA[0]), "--out", "r.csv",
                           "--checkpoint", "missing"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3
    assert "cannot load the model" in proc.stderr and not (tmp_path / "r.csv").exists()
