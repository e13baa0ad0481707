"""training/stress.py: the shipped model on the bundled sample under acquisition changes."""

import csv
from pathlib import Path

import numpy as np
import pytest

from engine.evaluation import metrics as M
from engine.decode import read_image
from engine.inference.predictor import Predictor
from training import data as ds
from training import stress

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "sample" / "kermany"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_checkpoint()


@pytest.fixture(scope="module")
def sample():
    samples = ds.index_folder(SAMPLE)
    images = [read_image(s.path.read_bytes(), s.path.name).pixels for s in samples]
    return images, np.array([s.label for s in samples])


def test_as_is_row_is_the_plain_evaluation(predictor, sample):
    images, labels = sample
    row, = stress.stress_rows(predictor.predict_images, images, labels, predictor.threshold,
                              {"as is": stress.CONDITIONS["as is"]})
    probs = predictor.predict_images(images)
    conf = M.confusion_at(labels, probs, predictor.threshold)
    assert row.n == len(images)
    assert row.auc == pytest.approx(M.roc_auc(labels, probs))
    assert (row.sensitivity, row.specificity) == pytest.approx((conf.sensitivity, conf.specificity))
    assert row.median_p_normal == pytest.approx(float(np.median(probs[labels == 0])))


def test_an_inverted_film_reads_as_pneumonia(predictor, sample):
    """A MONOCHROME1 image shown un-inverted: the real model flags the normal children."""
    images, labels = sample
    as_is, inverted = stress.stress_rows(predictor.predict_images, images, labels, predictor.threshold,
                                         {k: stress.CONDITIONS[k] for k in ("as is", "inverted polarity")})
    assert inverted.median_p_normal > 100 * as_is.median_p_normal
    assert inverted.specificity < as_is.specificity


@pytest.mark.parametrize("name", list(stress.CONDITIONS))
def test_every_condition_keeps_a_valid_image(name, sample):
    image = sample[0][0]
    out = np.clip(stress.CONDITIONS[name](image), 0, 1)
    assert out.ndim == 2 and min(out.shape) > 0.5 * min(image.shape) and np.isfinite(out).all()
    if name != "as is":
        assert out.shape != image.shape or not np.allclose(out, image)


def test_cli_writes_the_table_and_names_bad_conditions(tmp_path, capsys):
    out = tmp_path / "stress.csv"
    assert stress.cli(["--data-dir", str(SAMPLE), "--conditions", "as is,blur 5 px", "--out", str(out)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["condition"] for r in rows] == ["as is", "blur 5 px"] and all(int(r["n"]) == 12 for r in rows)
    assert "blur 5 px" in capsys.readouterr().out
    assert stress.cli(["--data-dir", str(SAMPLE), "--conditions", "as is,sepia"]) == 2
    assert "'sepia'" in capsys.readouterr().err


def test_help_lists_every_condition(capsys):
    with pytest.raises(SystemExit) as done:
        stress.cli(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())     # argparse wraps the lines
    assert all(name in text for name in stress.CONDITIONS)
