"""training.evaluate on the tiny run's checkpoints, then training.compare over two evaluations."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_training import SAMPLE, read_predictions, single_thread, train_tiny_run  # noqa: E402

from engine.evaluation import metrics as M  # noqa: E402
from training import compare, evaluate  # noqa: E402

FIGURES = ("confusion_matrix", "roc", "precision_recall", "calibration")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.getbasetemp())   # trained once, shared with test_training


def run_evaluate(*argv: str) -> dict:
    with single_thread():
        return evaluate.main(evaluate.get_args_parser().parse_args([*argv, "--quiet"]))


@pytest.fixture(scope="module")
def evaluations(tiny_run, tmp_path_factory):
    """e1: best/ over the sample (an unsplit folder), card threshold, Grad-CAM.
    e2: last/ over a split copy of the sample with one broken file, --split test, --threshold 0.5."""
    base = tmp_path_factory.mktemp("evaluations")
    e1 = base / "e1"
    m1 = run_evaluate("--checkpoint", str(tiny_run / "best"), "--data-dir", str(SAMPLE), "--out", str(e1),
                      "--gradcam-samples", "2", "--batch-size", "5")
    data = base / "split_data"
    shutil.copytree(SAMPLE, data / "test")
    (data / "test" / "NORMAL" / "broken.jpeg").write_bytes(b"not an image at all")
    e2 = base / "e2"
    m2 = run_evaluate("--checkpoint", str(tiny_run / "last"), "--data-dir", str(data), "--split", "test",
                      "--out", str(e2), "--threshold", "0.5", "--gradcam-samples", "0")
    return {"e1": (e1, m1), "e2": (e2, m2), "tiny_run": tiny_run}


def test_evaluate_writes_its_files(evaluations):
    out, result = evaluations["e1"]
    for name in ("metrics.json", "predictions.csv", "model_card.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(result))
    assert (out / "model_card.json").read_bytes() == (evaluations["tiny_run"] / "best" / "model_card.json").read_bytes()
    figs = out / "figures"
    for stem in FIGURES:
        html = (figs / f"{stem}.html").read_text()
        assert '<script charset="utf-8" src="plotly.min.js"></script>' in html      # offline, shared
        assert "cdn.plot.ly" not in html and len(html) < 200_000
        png = cv2.imread(str(figs / f"{stem}.png"))
        assert png is not None and png.shape[0] > 200
    assert (figs / "plotly.min.js").stat().st_size > 1_000_000
    assert len(list(out.rglob("plotly.min.js"))) == 1


def test_gradcam_samples_per_group(evaluations):
    out, result = evaluations["e1"]
    labels, probs = _from_csv(out)
    picked = evaluate.pick_gradcam(labels, probs, result["threshold"], 2)
    expected = {g: min(2, int(n)) for g, n in zip(
        ("TN", "FP", "FN", "TP"), np.array(result["confusion_matrix"]).ravel())}
    pngs = sorted(p.name for p in (out / "gradcam").glob("*.png") if p.name != "overview.png")
    assert len(pngs) == sum(expected.values()) > 0
    names = [r["file"] for r in read_predictions(out / "predictions.csv")]
    for group, n in expected.items():
        mine = [p for p in pngs if p.startswith(group + "_")]
        assert len(mine) == n == len(picked[group])
        # the most confident images of the group, its probability in the name
        want = {f"p{probs[i]:.3f}_{Path(names[i]).stem}.png" for i in picked[group]}
        assert {p.split("_", 2)[2] for p in mine} == want, group
    img = cv2.imread(str(out / "gradcam" / pngs[0]))
    assert img.shape[1] == 2 * img.shape[0]                 # original | overlay
    assert cv2.imread(str(out / "gradcam" / "overview.png")) is not None
    assert not (evaluations["e2"][0] / "gradcam").exists()  # --gradcam-samples 0


def _from_csv(out: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = read_predictions(out / "predictions.csv")
    return (np.array([int(r["label"]) for r in rows]), np.array([float(r["probability"]) for r in rows]))


@pytest.mark.parametrize("which", ["e1", "e2"])
def test_metrics_equal_engine_metrics_recomputed_from_predictions(evaluations, which):
    out, result = evaluations[which]
    labels, probs = _from_csv(out)
    again = evaluate.jsonable(M.summarize(labels, probs, result["threshold"]))
    for key, value in again.items():
        if isinstance(value, float):
            assert result[key] == pytest.approx(value, abs=1e-12), key
        else:
            assert result[key] == value, key
    assert sum(map(sum, result["confusion_matrix"])) == result["n"] == len(labels)
    assert result["counts"]["scored"] == result["n"]
    assert result["counts"]["normal"] + result["counts"]["pneumonia"] == result["n"]
    for rule in M.PRESET_RULES:
        assert result["operating_points"][rule]["threshold"] == M.choose_threshold(labels, probs, rule).threshold


def test_evaluate_uses_the_products_predictions(evaluations, tmp_path):
    """predictions.csv equals what `python -m engine.predict` writes for the same checkpoint."""
    from engine.cli import predict
    out, _ = evaluations["e1"]
    csv_path = tmp_path / "product.csv"
    with single_thread():
        assert predict.main([str(SAMPLE), "--out", str(csv_path), "--quiet",
                             "--checkpoint", str(evaluations["tiny_run"] / "best")]) == 0
    with open(csv_path, newline="") as f:
        product = {r["file"]: float(r["probability"]) for r in csv.DictReader(f)}   # relative to the folder given
    mine = {r["file"]: float(r["probability"]) for r in read_predictions(out / "predictions.csv")}
    assert mine.keys() == product.keys()
    for name in mine:
        assert mine[name] == pytest.approx(product[name], abs=1.5e-6), name


def test_evaluate_details(evaluations):
    _, r1 = evaluations["e1"]
    assert r1["split"] is None and r1["counts"]["unreadable"] == 0 and r1["unreadable"] == []
    assert r1["architecture"] == "resnet18_cbam" and r1["model_name"] == "tiny" and r1["parameters"] > 1e6
    card = json.loads((evaluations["tiny_run"] / "best" / "model_card.json").read_text())
    assert r1["threshold"] == card["decision_threshold"]["value"]
    assert r1["threshold_source"].startswith("model card")
    # the sample is the tiny run's own training data: said loudly
    assert r1["overlap_with_training"] == {"train": 6, "val": 6}
    assert any("not a held-out evaluation" in w for w in r1["warnings"])

    _, r2 = evaluations["e2"]
    assert r2["split"] == "test" and r2["threshold"] == 0.5 and r2["threshold_source"] == "--threshold"
    assert r2["counts"] == {**r1["counts"], "files": r1["counts"]["files"] + 1, "unreadable": 1}
    assert r2["unreadable"][0]["file"] == "test/NORMAL/broken.jpeg"
    assert "broken.jpeg" in r2["unreadable"][0]["error"]


def test_evaluate_errors_name_the_problem(tiny_run, tmp_path, capsys):
    best = str(tiny_run / "best")
    cases = [
        (["--data-dir", str(SAMPLE), "--split", "test"], 2, "is not split"),
        (["--data-dir", str(tmp_path)], 2, "neither class folders"),
        (["--data-dir", str(tmp_path / "missing")], 2, "does not exist"),
    ]
    for extra, code, message in cases:
        assert evaluate.cli(["--checkpoint", best, "--out", str(tmp_path / "o"), "--quiet", *extra]) == code
        assert message in capsys.readouterr().err, extra
    split = tmp_path / "split"
    shutil.copytree(SAMPLE, split / "val")
    shutil.copytree(SAMPLE, split / "test")
    assert evaluate.cli(["--checkpoint", best, "--data-dir", str(split), "--out", str(tmp_path / "o")]) == 2
    assert "split into test, val: choose one with --split" in capsys.readouterr().err
    assert evaluate.cli(["--checkpoint", best, "--data-dir", str(split), "--split", "train",
                         "--out", str(tmp_path / "o")]) == 2
    assert "choose one of test, val" in capsys.readouterr().err
    assert evaluate.cli(["--checkpoint", str(tmp_path), "--data-dir", str(SAMPLE), "--out", str(tmp_path / "o")]) == 3
    assert "cannot load the model" in capsys.readouterr().err


# ------------------------------------------------------------------ compare

def test_compare_two_evaluations(evaluations, tmp_path, capsys):
    (e1, m1), (e2, m2) = evaluations["e1"], evaluations["e2"]
    out_csv, html = tmp_path / "comparison.csv", tmp_path / "html" / "roc.html"
    assert compare.cli([str(e1), str(e2), "--out", str(out_csv), "--html", str(html)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    header, rule = lines[0], lines[1]
    for col in ("model", "architecture", "weights", "CBAM", "params", "AUC [95% CI]", "AP", "sens",
                "spec", "F1", "acc", "threshold", "n"):
        assert re.search(rf"(^|\s){re.escape(col)}(\s|$)", header), col
    # aligned: every column boundary of the dashes rule is blank on every line of the table
    gaps = [i for i, ch in enumerate(rule) if ch == " "]
    table = lines[:4]
    for line in table:
        assert all(i >= len(line) or line[i] == " " for i in gaps), line
    assert table[2].split()[0] == "tiny" and "scratch" in table[2] and " yes " in table[2]
    assert f"{m1['auc']:.3f} [{m1['auc_ci_95'][0]:.3f}, {m1['auc_ci_95'][1]:.3f}]" in table[2]
    assert table[2].rstrip().endswith("e1") and table[3].rstrip().endswith("e2")

    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["evaluation"] for r in rows] == ["e1", "e2"]
    for row, m in zip(rows, (m1, m2)):
        for key in ("auc", "average_precision", "sensitivity", "specificity", "f1", "accuracy", "threshold"):
            assert float(row[key]) == pytest.approx(m[key]), key
        assert int(row["n"]) == m["n"] and row["architecture"] == "resnet18_cbam" and row["cbam"] == "yes"
        assert row["training"] == "scratch" and int(row["parameters"]) == m["parameters"]
        assert float(row["auc_ci_low"]) == pytest.approx(m["auc_ci_95"][0])
    assert rows[1]["split"] == "test"
    text = html.read_text()
    assert 'src="plotly.min.js"' in text and (html.parent / "plotly.min.js").is_file()
    assert "e1 (AUC" in text and "e2 (AUC" in text


def test_compare_names_the_folder_without_metrics(evaluations, tmp_path, capsys):
    empty = tmp_path / "not_an_evaluation"
    empty.mkdir()
    code = compare.cli([str(evaluations["e1"][0]), str(empty), "--out", str(tmp_path / "c.csv")])
    assert code == 2
    err = capsys.readouterr().err
    assert str(empty) in err and "metrics.json" in err
    assert not (tmp_path / "c.csv").exists()


def test_compare_prints_delong_for_evaluations_on_the_same_files(capsys):
    from engine.evaluation.paired import paired_tests
    from training.compare import cli
    folders = [Path(__file__).resolve().parents[1] / "assets" / "evaluations" / n for n in ("resnet18_cbam", "resnet18")]
    (t,) = paired_tests(folders)
    assert (t["a"], t["b"]) == ("resnet18_cbam", "resnet18") and 0 <= t["p"] <= 1
    assert t["ci_95"][0] < t["difference"] < t["ci_95"][1]
    import tempfile
    assert cli([*map(str, folders), "--out", str(Path(tempfile.mkdtemp()) / "c.csv")]) == 0
    assert "Paired AUC differences (DeLong)" in capsys.readouterr().out


def test_a_shipped_checkpoint_without_a_run_folder_still_says_it_is_not_held_out(tmp_path):
    """The shipped model has no split.json beside it: its training images' hashes tell instead
    (the bundled sample comes from its training and validation images)."""
    from engine.model.checkpoint import DEFAULT_MODEL_DIR
    from engine.evaluation.provenance import file_sha256, training_hashes
    seen = training_hashes(DEFAULT_MODEL_DIR)
    files = [p for p in SAMPLE.rglob("*") if p.is_file() and p.suffix.lower() in (".jpeg", ".jpg", ".png")]
    expected = {side: sum(file_sha256(p) in seen[side] for p in files) for side in ("train", "val")}
    assert expected["train"] + expected["val"] > 0
    r = run_evaluate("--checkpoint", str(DEFAULT_MODEL_DIR), "--data-dir", str(SAMPLE), "--out", str(tmp_path / "e"),
                     "--gradcam-samples", "0")
    assert r["overlap_with_training"] == expected
    assert any("not a held-out evaluation" in w for w in r["warnings"])
