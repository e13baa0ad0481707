"""The dashboard's pure helpers, without Streamlit: batch, worklist, evaluation, figures, presets."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from engine.evaluation import metrics as M
from engine.decode import read_image
from engine.errors import ImageReadError
from engine.image import PatientIdentifiers, StudyMetadata
from engine.inference.predictor import Prediction

from dashboard import batch as B
from engine.worklist.store import Result, Store, StudyRow
from dashboard import evaluation as E
from dashboard import figures as F
from dashboard import imaging, worklist as W
from dashboard.state import build_presets
from helpers import zip_bytes

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "assets" / "sample"
JPEGS = sorted((SAMPLE / "kermany").glob("*/*.jpeg"))


class FakePredictor:
    """Decodes with the engine and scores by a hash of the bytes; counts what it scores."""

    def __init__(self):
        self.scored: list[str] = []

    def predict_stream(self, items, *, batch_size=32, keep_images=False, progress=None, total=None):
        done = 0
        for item in items:
            data = item.read()
            sha = hashlib.sha256(data).hexdigest()
            done += 1
            try:
                img = read_image(data, item.name)
            except ImageReadError as exc:
                yield Prediction.refused(item.name, str(exc), sha)
                continue
            self.scored.append(item.name)
            p = int(sha[:8], 16) / 0xFFFFFFFF
            yield Prediction.scored(item.name, sha, p, img.warnings, img.metadata, identifiers=img.identifiers,
                                    image=img if keep_images else None)
            if progress:
                progress(done, total)


def _upload(path_or_name, data=None, uid=None):
    if data is None:
        data = Path(path_or_name).read_bytes()
        path_or_name = Path(path_or_name).name
    return B.Upload(uid or path_or_name, path_or_name, len(data), lambda d=data: d)


# --------------------------------------------------------------------------- batch (through the store)

@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store")


def _batch(store, wl, fake, model="m1", max_files=B.MAX_FILES, uploads=()):
    B.ingest_uploads(store, wl, list(uploads), max_files=max_files)
    B.score_worklist(store, wl, fake, model)
    return B.load_batch(store, wl, model, W.build_worklist)


def test_batch_scores_each_content_once_and_lists_unreadable(store):
    fake = FakePredictor()
    _, wl = store.create_worklist()
    ups = [_upload(p) for p in JPEGS[:3]] + [_upload("x.dcm", b"just text"),
                                            _upload("copy.jpeg", JPEGS[0].read_bytes())]
    batch = _batch(store, wl, fake, uploads=ups)
    records = {r.name: r for r in batch.records}
    assert [records[u.name].status for u in ups] == ["ok", "ok", "ok", "error", "ok"]
    assert records["x.dcm"].message.startswith("x.dcm: ") and "not a DICOM" in records["x.dcm"].message
    assert len(fake.scored) == 3                     # the copy has the same content: scored once
    assert records["copy.jpeg"].probability == records[JPEGS[0].name].probability
    assert records[JPEGS[0].name].thumbnail.startswith("data:image/png;base64,")
    _, other = store.create_worklist()               # another user uploads the same bytes, renamed
    again = _batch(store, other, fake, uploads=[_upload("renamed.jpeg", JPEGS[1].read_bytes()),
                                                _upload("y.dcm", b"just text")])
    assert len(fake.scored) == 3                     # already scored by this model: not called
    assert {r.name for r in again.records} == {"renamed.jpeg", "y.dcm"}   # nothing of the first user's
    assert next(r for r in again.records if r.name == "y.dcm").message.startswith("y.dcm: ")
    _batch(store, wl, fake, model="m2")
    assert len(fake.scored) == 6                     # another model scores the worklist again


def test_batch_limits_refuse_with_a_message(store, monkeypatch):
    monkeypatch.setattr(B, "MAX_FILE_BYTES", 10_000)
    _, wl = store.create_worklist()
    archive = zip_bytes({f"NORMAL/{p.name}": p.read_bytes() for p in JPEGS[:3]})
    batch = _batch(store, wl, FakePredictor(), max_files=3,
                   uploads=[_upload("big.dcm", bytes(20_000)), _upload("a.zip", archive)])
    records = {r.name: r for r in batch.records}
    assert records["big.dcm"].status == "refused" and "limit for one image" in records["big.dcm"].message
    zipped = [r for r in batch.records if r.name.startswith("a.zip/")]
    assert sorted(r.status for r in zipped) == ["ok", "ok", "refused"]
    refused = next(r for r in zipped if r.status == "refused")
    assert "3-study limit" in refused.message and "1,000" not in refused.message


def test_uploads_go_to_the_store_once_and_a_repeat_is_not_listed_twice(store):
    fake = FakePredictor()
    _, wl = store.create_worklist()
    _batch(store, wl, fake, uploads=[_upload(JPEGS[0]), _upload(JPEGS[1])])
    batch = _batch(store, wl, fake, uploads=[_upload(JPEGS[1]), _upload(JPEGS[2])])
    assert [r.name for r in batch.records] == [JPEGS[0].name, JPEGS[1].name, JPEGS[2].name]
    assert len(fake.scored) == 3
    assert batch.sources[batch.records[0].sha256].read() == JPEGS[0].read_bytes()   # from the file cache
    store.remove_studies(wl)
    assert B.load_batch(store, wl, "m1", W.build_worklist) is None


# --------------------------------------------------------------------------- worklist

def study(name: str, sha: str, status: str, probability=None, *, message: str = "", warnings=(),
          metadata=None, review_status: str = "unreviewed") -> StudyRow:
    """A stored study as the worklist reads it: scored ("ok"), unreadable ("error"), over a limit ("refused")."""
    if status in ("error", "refused"):
        return StudyRow(0, name, sha, "upload", "", False, read_error=message)
    result = Result("ok", probability, warnings=tuple(warnings), metadata=metadata or StudyMetadata())
    return StudyRow(0, name, sha, "upload", "", False, result=result, review_status=review_status)


def _records():
    return [
        study("low.jpeg", "1" * 64, "ok", 0.2),
        study("bad.dcm", "", "error", message="bad.dcm: not a DICOM, JPEG or PNG image"),
        study("high.dcm", "2" * 64, "ok", 0.9, warnings=("Modality CT is not a radiograph",),
                      metadata=StudyMetadata(format="dicom", modality="CT")),
        study("mid.png", "3" * 64, "ok", 0.5),
        study("huge.dcm", "", "refused", message="huge.dcm: 60.0 MB is over the limit"),
    ]


def test_worklist_sorted_flags_and_counts():
    df = W.build_worklist(_records())
    assert list(df["file"]) == ["high.dcm", "mid.png", "low.jpeg", "bad.dcm", "huge.dcm"]
    assert W.counts(df, 0.5) == W.Counts(flagged=2, not_flagged=1, unreadable=2)   # 0.5 >= 0.5
    assert W.counts(df, 0.51) == W.Counts(flagged=1, not_flagged=2, unreadable=2)
    assert list(W.flag_column(df, 0.5)) == ["FLAGGED", "FLAGGED", "not flagged", "unreadable", "unreadable"]
    assert list(W.view(df, 0.5, "Flagged")["file"]) == ["high.dcm", "mid.png"]
    assert list(W.view(df, 0.5, "Not flagged")["file"]) == ["low.jpeg"]
    assert list(W.view(df, 0.5, "Unreadable")["file"]) == ["bad.dcm", "huge.dcm"]
    shown = W.view(df, 0.5, "All", thumbnails=False)
    assert "thumbnail" not in shown and not set(W.IDENTIFIER_COLUMNS) & set(shown.columns)
    assert W.flagged_shas(df, 0.5) == ["2" * 64, "3" * 64]
    assert list(W.unreadable(df)["reason"])[0].startswith("bad.dcm:")


def test_export_without_identifiers_unless_opted_in():
    df = W.build_worklist(_records())
    plain = W.export_csv(df, 0.5, "m 1.0")
    assert "DOE" not in plain and "P123" not in plain and "patient_name" not in plain
    rows = list(csv.DictReader(io.StringIO(plain)))
    assert rows[0]["file"] == "high.dcm" and rows[0]["flagged"] == "yes" and rows[0]["threshold"] == "0.5"
    assert rows[3]["flagged"] == "" and "not a DICOM" in rows[3]["message"]
    ids = PatientIdentifiers(patient_name="DOE^JANE", patient_id="P123")
    filled = W.with_identifiers(df, lambda sha: ids if sha == "2" * 64 else PatientIdentifiers())
    with_ids = list(csv.DictReader(io.StringIO(W.export_csv(filled, 0.5, "m 1.0", include_identifiers=True))))
    assert with_ids[0]["patient_name"] == "DOE^JANE" and with_ids[0]["patient_id"] == "P123"


def test_worklist_export_writes_the_clis_results_row():
    from engine.cli.predict import CSV_COLUMNS, prediction_row
    meta = StudyMetadata(format="dicom", modality="CT")
    df = W.build_worklist([study("high.dcm", "2" * 64, "ok", 0.9, warnings=("Modality CT is not a radiograph",),
                                 metadata=meta)])
    [row] = list(csv.DictReader(io.StringIO(W.export_csv(df, 0.5, "m 1.0"))))
    pred = Prediction.scored("high.dcm", "2" * 64, 0.9, ("Modality CT is not a radiograph",), meta)
    assert list(row)[:len(CSV_COLUMNS)] == CSV_COLUMNS
    assert {k: row[k] for k in CSV_COLUMNS} == prediction_row(pred, 0.5, "m 1.0")


def test_export_defuses_formula_file_names():
    df = W.build_worklist([study("=cmd.jpeg", "4" * 64, "ok", 0.7)])
    assert "'=cmd.jpeg" in W.export_csv(df, 0.5, "m")


# --------------------------------------------------------------------------- evaluation

def test_labelled_csv_accepts_names_and_numbers_and_reports_bad_columns():
    ls = E.labelled_set_from_csv(b"file,Label,probability\na,normal,0.1\nb,PNEUMONIA,0.8\nc,1,0.6\nd,0.0,0.3\n", "p.csv")
    assert list(ls.labels) == [0, 1, 1, 0] and list(ls.scores) == [0.1, 0.8, 0.6, 0.3]
    with pytest.raises(E.LabelledDataError, match="missing 'label'"):
        E.labelled_set_from_csv(b"file,truth,probability\na,1,0.5\n", "p.csv")
    with pytest.raises(E.LabelledDataError, match="'maybe'"):
        E.labelled_set_from_csv(b"label,probability\nmaybe,0.5\n", "p.csv")
    with pytest.raises(E.LabelledDataError, match="in \\[0, 1\\]"):
        E.labelled_set_from_csv(b"label,probability\n1,1.5\n", "p.csv")


def test_label_from_class_folders():
    assert E.label_from_path("set.zip/test/PNEUMONIA/x.jpeg") == 1
    assert E.label_from_path("/data/normal/y.png") == 0
    assert E.label_from_path("pneumonia.jpeg") is None      # the file name is not a folder
    recs = [study("z/NORMAL/a.jpeg", "1" * 64, "ok", 0.3),
            study("z/PNEUMONIA/b.jpeg", "2" * 64, "ok", 0.7),
            study("z/other/c.jpeg", "3" * 64, "ok", 0.5),
            study("z/NORMAL/d.dcm", "", "error", message="z/NORMAL/d.dcm: corrupt")]
    ls = E.labelled_set_from_records(recs, "z")
    assert list(ls.labels) == [0, 1] and len(ls.skipped) == 2


def test_metrics_table_is_engine_metrics():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)
    table = E.metrics_table(E.LabelledSet("x", y, s), 0.5).set_index("metric")
    conf = M.confusion_at(y, s, 0.5)
    assert table.loc["Sensitivity", "value"] == pytest.approx(conf.sensitivity)
    assert table.loc["NPV", "value"] == pytest.approx(conf.npv)
    assert (table["ci_low"] <= table["value"]).all() and (table["value"] <= table["ci_high"]).all()


def _write_eval(folder: Path, y, s, name="m", version="1.0"):
    folder.mkdir(parents=True)
    pd.DataFrame({"file": [f"f{i}.jpeg" for i in range(len(y))], "label": y,
                  "probability": np.round(s, 6)}).to_csv(folder / "predictions.csv", index=False)
    metrics = M.summarize(y, np.round(s, 6), 0.5, n_resamples=200) | {"model_name": name, "model_version": version}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def test_evaluation_folders(tmp_path):
    y = np.array([0, 0, 1, 1, 1, 0])
    s = np.array([0.1, 0.6, 0.7, 0.4, 0.9, 0.2])
    metrics = _write_eval(tmp_path / "a", y, s)
    (tmp_path / "empty").mkdir()
    assert E.find_evaluation_folders(tmp_path) == [tmp_path / "a"]
    ev = E.load_evaluation_folder(tmp_path / "a")
    assert ev.model == "m 1.0" and list(ev.labels) == list(y)
    table = E.compare_table([ev])
    assert table.loc[0, "auc"] == pytest.approx(metrics["auc"]) and table.loc[0, "n"] == 6
    with pytest.raises(E.EvaluationFolderError, match="no metrics.json"):
        E.load_evaluation_folder(tmp_path / "empty")


# --------------------------------------------------------------------------- figures, presets, images

def test_figures_show_the_operating_point_and_threshold():
    y = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    s = np.array([0.1, 0.6, 0.7, 0.4, 0.9, 0.2, 0.55, 0.3])
    conf = M.confusion_at(y, s, 0.5)
    fpr, tpr, _ = M.roc_curve(y, s)
    roc = F.roc_figure(fpr, tpr, M.roc_auc(y, s), (1 - conf.specificity, conf.sensitivity), 0.5)
    point = roc.data[-1]
    assert (point.x[0], point.y[0]) == (pytest.approx(0.25), pytest.approx(0.75))
    assert f"AUC {M.roc_auc(y, s):.3f}" in roc.layout.title.text
    hist = F.histogram_figure(y, s, 0.5, ["normal", "pneumonia"])
    assert hist.layout.shapes[0].x0 == 0.5 and len(hist.data) == 2
    cm = F.confusion_figure(conf, ["normal", "pneumonia"], 0.5)
    assert np.array(cm.data[0].z).tolist() == conf.matrix()
    cal = F.calibration_figure(M.calibration_bins(y, s), M.expected_calibration_error(y, s))
    assert len(cal.data[1].x) == int((M.calibration_bins(y, s).counts > 0).sum())


def test_presets_are_the_engine_operating_points():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.clip(y * 0.4 + rng.random(200) * 0.6, 0, 1)
    presets = build_presets(0.42, y, s, {"clinic": 0.33})
    assert presets[0].threshold == 0.42 and presets[0].origin == "card"
    for rule, p in zip(M.PRESET_RULES, presets[1:4]):
        assert p.threshold == pytest.approx(M.choose_threshold(y, s, rule).threshold)
    assert presets[-1].name == "Site: clinic" and presets[-1].threshold == 0.33
    only_positives = build_presets(0.5, np.ones(5, int), np.linspace(0.1, 0.9, 5))
    assert [p.name for p in only_positives] == ["Model card", "Sensitivity ≥ 0.95"]   # the others need negatives


def test_thumbnail_and_review_panels():
    img = read_image(JPEGS[0].read_bytes(), JPEGS[0].name).pixels
    uri = imaging.thumbnail_data_uri(img)
    png = cv2.imdecode(np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert max(png.shape[:2]) == imaging.THUMBNAIL_PX and len(uri) < 8000
    heat = np.zeros((32, 32), np.float32)
    heat[8:16, 8:16] = 1.0
    original, overlay, alone = imaging.review_panels(img, heat, opacity=0.5)
    assert original.shape == overlay.shape == alone.shape == (*img.shape, 3)
    assert not np.array_equal(original, overlay)
    _, cut, _ = imaging.review_panels(img, heat, opacity=0.5, min_heat=0.5)   # heat only in one square
    hot = cv2.resize(heat, img.shape[::-1], interpolation=cv2.INTER_LINEAR) >= 0.5
    assert np.array_equal(cut[~hot], original[~hot]) and not np.array_equal(cut[hot], original[hot])
    # (below the cut-off untouched; above it the tint fades in: see test_overlay.py)
    dark = imaging.review_panels(img, None, center=0.9, width=0.1)[0]
    assert dark.mean() < original.mean()


def test_one_row_per_study_groups_a_studys_images_under_its_most_probable_one():
    same = StudyMetadata(format="dicom", study_key="a" * 16)
    records = [study("pa.dcm", "1" * 64, "ok", 0.4, metadata=same, review_status="agreed"),
               study("lat.dcm", "2" * 64, "ok", 0.8, metadata=same),
               study("other.jpeg", "3" * 64, "ok", 0.6),
               study("bad.dcm", "", "error", message="bad.dcm: not a DICOM, JPEG or PNG image")]
    df = W.build_worklist(records)
    rows = W.view(df, 0.5, studies=True)
    assert list(rows["file"]) == ["lat.dcm (+1 images)", "other.jpeg", "bad.dcm"]
    assert list(rows["flag"]) == ["FLAGGED", "FLAGGED", "unreadable"]
    assert rows["review"].iloc[0] == "unreviewed"          # one of its two images is not reviewed yet
    assert rows["sha256"].iloc[0] == "2" * 64              # opening the study opens its top image
    assert len(W.view(df, 0.5)) == 4                        # per image when asked


def test_per_file_results_list_the_errors_first_most_confident_first():
    ls = E.LabelledSet("set", np.array([0, 0, 1, 1, 1]), np.array([0.9, 0.2, 0.1, 0.7, 0.4]),
                       ("n1", "n2", "p1", "p2", "p3"))
    table = E.per_file(ls, 0.5)
    assert list(table["outcome"]) == ["FP", "FN", "FN", "TP", "TN"]
    assert list(table["file"])[:3] == ["n1", "p1", "p3"]           # the FN at 0.1 before the FN at 0.4


def test_the_per_file_csv_writes_probabilities_as_the_results_csvs_do():
    from engine.worklist.csvsafe import frame_csv
    ls = E.LabelledSet("set", np.array([0, 1]), np.array([0.000012, 0.9876543]), ("=n1", "p1"))
    rows = list(csv.DictReader(io.StringIO(frame_csv(E.per_file(ls, 0.5)))))
    assert [r["probability"] for r in rows] == ["0.987654", "0.000012"]      # fixed decimals, never 1.2e-05
    assert [r["flagged"] for r in rows] == ["yes", "no"] and rows[1]["file"] == "'=n1"


def test_window_level_in_the_dicoms_own_units_with_presets_and_invert():
    image = read_image(ROOT / "assets" / "sample" / "dicom" / "cr_chest_pa_mono1_j2k.dcm")
    raw, meta = image.modality_values, image.metadata
    assert raw.shape == image.pixels.shape and meta.photometric_interpretation == "MONOCHROME1"
    presets = imaging.window_presets(raw, meta.window_center, meta.window_width)
    first = next(iter(presets))
    assert first == "Header (WC 15000 / WW 30000)" and presets[first] == (15000.0, 30000.0)
    # the header window on MONOCHROME1 gives back the decoder's own display (white = dense)
    shown = imaging.window_units(raw, 15000.0, 30000.0, monochrome1=True, invert=False)
    np.testing.assert_allclose(shown, image.pixels, atol=1e-4)
    flipped = imaging.window_units(raw, 15000.0, 30000.0, monochrome1=True, invert=True)
    np.testing.assert_allclose(flipped, 1 - shown, atol=1e-6)
    narrow = imaging.window_units(raw, 15000.0, 2000.0, monochrome1=False, invert=False)
    assert set(np.unique(narrow[(raw < 14000) | (raw > 16000)])) <= {0.0, 1.0}    # outside the window: clipped


def test_window_values_are_shown_at_the_precision_of_their_range():
    cr = imaging.WindowScale.of(890.4, 26493.2)                     # a CR's values: steps of 10, no decimals
    assert (cr.step, cr.decimals, cr.fmt(12475.53348388672), cr.round(12475.53348388672)) == (10, 0, "12476", 12476)
    display = imaging.WindowScale.of(0.0, 1.0)                       # a JPEG's 0-1 display scale
    assert (display.step, display.decimals, display.fmt(0.5)) == (0.001, 3, "0.500")
    raw = np.linspace(890.4, 26493.2, 10_000).reshape(100, 100)
    presets = imaging.window_presets(raw, 12475.53348388672, 24000.123)
    assert list(presets)[0] == "Header (WC 12476 / WW 24000)" and presets[list(presets)[0]] == (12476, 24000)
    assert all(v == round(v) for pair in presets.values() for v in pair)
    assert not any("." in label for label in presets)


def test_study_values_reach_the_browser_exactly_or_within_half_a_step():
    import zlib

    def unpack(payload: str, lo: float, unit: float, shape) -> np.ndarray:
        planes = np.frombuffer(zlib.decompress(base64.b64decode(payload)), np.uint8)
        n = planes.size // 2
        return lo + ((planes[:n].astype(np.uint32) << 8) | planes[n:]).reshape(shape) * unit

    ints = np.random.default_rng(0).integers(803, 26512, (64, 48)).astype(np.float32)
    payload, unit = imaging.packed_values(ints, float(ints.min()), float(ints.max()))
    assert unit == 1.0 and np.array_equal(unpack(payload, float(ints.min()), unit, ints.shape), ints)
    floats = np.random.default_rng(1).random((64, 48)).astype(np.float32)
    payload, unit = imaging.packed_values(floats, 0.0, 1.0)
    assert unit == pytest.approx(1 / 65535)
    assert np.abs(unpack(payload, 0.0, unit, floats.shape) - floats).max() <= unit / 2 + 1e-9


def test_the_heat_layer_drawn_over_the_window_is_the_engines_overlay():
    from engine.inference.overlay import overlay_heatmap, to_gray_rgb
    img = read_image(JPEGS[0].read_bytes(), JPEGS[0].name).pixels
    heat = cv2.resize(np.random.default_rng(2).random((7, 7)).astype(np.float32), (224, 224))
    for opacity, min_heat in ((0.4, 0.0), (0.8, 0.5)):
        layer = imaging.heat_layer(heat, img.shape[:2], colormap="jet", opacity=opacity, min_heat=min_heat)
        alpha = layer[..., 3:].astype(np.float64) / 255          # what the browser's canvas does (source-over)
        drawn = to_gray_rgb(img) * (1 - alpha) + layer[..., :3] * alpha
        engine = overlay_heatmap(img, heat, colormap="jet", opacity=opacity, min_value=min_heat)
        assert np.abs(drawn - engine).max() <= 1.5                 # alpha in 8 bits: within one grey level


def test_the_viewer_is_sent_the_values_presets_and_heat_of_one_study():
    from dashboard.viewer import viewer_data
    image = read_image(ROOT / "assets" / "sample" / "dicom" / "cr_chest_pa_mono1_j2k.dcm")
    raw, meta = image.modality_values[::8, ::8], image.metadata
    data = viewer_data(raw, study="abc", name="cr.dcm", dicom_units=True, monochrome1=True,
                       header_window=(meta.window_center, meta.window_width), heatmap=np.ones((7, 7), np.float32))
    assert (data["width"], data["height"], data["monochrome1"]) == (raw.shape[1], raw.shape[0], True)
    assert data["presets"][0] == ["Header (WC 15000 / WW 30000)", 15000.0, 30000.0] and data["decimals"] == 0
    assert data["overlay"].startswith("data:image/png;base64,")
    jpeg = viewer_data(read_image(JPEGS[0].read_bytes(), JPEGS[0].name).pixels, study="j", name="a.jpeg",
                       dicom_units=False, monochrome1=False)
    assert jpeg["presets"] == [["Full range (0 to 1)", 0.5, 1.0]] and (jpeg["lo"], jpeg["hi"]) == (0.0, 1.0)
    assert jpeg["overlay"] is None and jpeg["unit"] == "on the 0-1 display scale"


def test_short_warnings_keep_the_first_clause():
    long = ("outside the training population: the patient is an adult (18 or older); the model was trained on "
            "frontal chest radiographs of children aged about 1 to 5 (Kermany et al., 2018)")
    assert W.short_warning(long) == "out of population: the patient is an adult"
    assert W.short_warning("Modality CT is not a radiograph (CR/DX/DR): the model was trained on chest "
                           "radiographs; treat the probability with caution") == "Modality CT is not a radiograph"
    assert W.short_warnings(long + " | every pixel has the same value: the image is blank") == \
        "out of population: the patient is an adult | every pixel has the same value"


def test_one_read_and_one_hash_per_file_from_upload_to_score(store, monkeypatch):
    """An upload is read once and hashed once; scoring reads the cached copy once and decodes it once."""
    import hashlib as real_hashlib
    from engine.worklist import ingest as I
    from engine.inference import predictor as P
    from engine.worklist import store as S
    from engine.decode.pool import DecodePool
    from engine.inference.predictor import Predictor
    counts = {"upload reads": 0, "hashes": 0, "cache reads": 0, "decodes": 0}
    _, wl = store.create_worklist()                # (its token is hashed too: before counting)
    predictor = Predictor.from_checkpoint()

    class CountingHashlib:
        @staticmethod
        def sha256(data=b""):
            counts["hashes"] += 1
            return real_hashlib.sha256(data)

    for module in (S, P, I):
        monkeypatch.setattr(module, "hashlib", CountingHashlib, raising=False)
    real_read_file, real_decode = Store.read_file, DecodePool.decode
    monkeypatch.setattr(Store, "read_file", lambda self, sha: (counts.__setitem__("cache reads", counts["cache reads"] + 1),
                                                                 real_read_file(self, sha))[1])
    monkeypatch.setattr(DecodePool, "decode", lambda self, *a, **k: (counts.__setitem__("decodes", counts["decodes"] + 1),
                                                                      real_decode(self, *a, **k))[1])

    def upload(path):
        data = path.read_bytes()
        def read():
            counts["upload reads"] += 1
            return data
        return B.Upload(path.name, path.name, len(data), read)

    files = JPEGS[:3]
    B.ingest_uploads(store, wl, [upload(p) for p in files])
    B.score_worklist(store, wl, predictor, "m")
    assert counts == {"upload reads": 3, "hashes": 3, "cache reads": 3, "decodes": 3}, counts


# --------------------------------------------------------------------------- review queue

def test_review_queue_opens_steps_and_moves_on_after_a_decision():
    from dashboard.review_queue import ReviewQueue
    recs = [study("a", "a" * 64, "ok", 0.9, review_status="agreed"), study("b", "b" * 64, "ok", 0.8),
            study("c", "c" * 64, "ok", 0.4), study("d", "d" * 64, "ok", 0.7),
            study("bad", "", "error", message="bad: corrupt")]
    q = ReviewQueue.of(W.build_worklist(recs), 0.5)
    a, b, c, d = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
    assert q.readable == [a, b, d, c] and q.flagged == [a, b, d] and q.unreviewed == [b, d]
    assert q.reviewed == {a}
    assert q.opening(None) == b and q.opening(c) == c            # first unreviewed flagged; else stays
    assert q.step(a, +1) == b and q.step(d, +1) == d and q.step(a, -1) == a   # kept at the ends
    assert q.step(c, -1) == d and q.step(c, +1) == a             # from an unflagged study: nearest, wrapping
    assert q.after_decision(b) == d and q.after_decision(d) == b
    assert ReviewQueue.of(W.build_worklist(recs[:1]), 0.5).after_decision(a) is None   # queue done
    assert ReviewQueue.of(W.build_worklist(recs), 0.95).step(c, +1) is None            # nothing flagged


def test_subgroup_metrics_split_by_what_the_data_carry():
    cr = StudyMetadata(format="dicom", modality="CR", view_position="PA", age_band="18 or older")
    dx = StudyMetadata(format="dicom", modality="DX", view_position="PA", age_band="18 or older")
    recs = [study("siteA/NORMAL/a.dcm", "1" * 64, "ok", 0.2, metadata=cr),
            study("siteA/PNEUMONIA/b.dcm", "2" * 64, "ok", 0.9, metadata=cr),
            study("siteB/NORMAL/c.dcm", "3" * 64, "ok", 0.8, metadata=dx),
            study("siteB/PNEUMONIA/d.dcm", "4" * 64, "ok", 0.6, metadata=dx),
            study("siteB/PNEUMONIA/e.dcm", "5" * 64, "ok", 0.3, metadata=dx)]
    ls = E.labelled_set_from_records(recs, "sites")
    assert ls.subgroups[0] == {"source": "siteA", "format": "dicom", "modality": "CR", "view": "PA",
                               "age band": "18 or older"}
    table = E.subgroup_metrics(ls, 0.5)
    assert set(table["subgroup"]) == {"source", "modality"}          # view, format, age band do not split
    b = table[(table["subgroup"] == "source") & (table["value"] == "siteB")].iloc[0]
    assert (b["n"], b["normal"], b["pneumonia"]) == (3, 1, 2)
    assert b["auc"] == 0.0 and b["sensitivity"] == 0.5 and b["specificity"] == 0.0   # hand-worked
    lo, hi = M.clopper_pearson(1, 2)
    assert b["sensitivity 95% CI"] == f"{lo:.3f} – {hi:.3f}"
    one_site = E.labelled_set_from_records(recs[:2], "A")
    assert E.subgroup_metrics(one_site, 0.5).empty
    assert E.subgroup_metrics(E.LabelledSet("csv", ls.labels, ls.scores), 0.5).empty   # a CSV carries none
