"""Every dashboard page through Streamlit's AppTest, with the shipped model and the real sample.

Run from the project root (AppTest reads .streamlit/config.toml from the working directory).
The model is counted, not mocked: ``Predictor.score_arrays`` and ``Explainer.explain_images``
are wrapped to count the images they receive, so the tests see when the network really runs.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.labels import display_label, short_label
from engine.evaluation import metrics as M
from engine.evaluation.site import load_profile
from engine.model.checkpoint import DEFAULT_MODEL_DIR, read_card
from engine.decode import read_image
from engine.inference.explain import Explainer
from engine.inference.predictor import Predictor
from engine.inputs.sources import items_from_uploads, iter_inputs
from helpers import write_tiny_checkpoint

from dashboard import resources

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "dashboard" / "Home.py"
SAMPLE = ROOT / "assets" / "sample"
NORMAL = sorted((SAMPLE / "kermany" / "NORMAL").glob("*.jpeg"))
PNEUMONIA = sorted((SAMPLE / "kermany" / "PNEUMONIA").glob("*.jpeg"))
DICOM = SAMPLE / "dicom" / "cr_chest_pa_mono1_j2k.dcm"
DICOM2 = SAMPLE / "dicom" / "cr_chest_pa_mono2_jpeg_baseline.dcm"
BROKEN = ("x.dcm", b"this is a text file, not a radiograph\n", "application/dicom")
CARD = read_card(DEFAULT_MODEL_DIR)


def _file(path: Path, name: str | None = None, mime: str = "application/octet-stream"):
    return (name or path.name, path.read_bytes(), mime)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The batch the triage tests upload: a DICOM, a DICOM without extension, 4 JPEGs, a text "x.dcm".
BATCH = [_file(DICOM, mime="application/dicom"), _file(DICOM2, "study_without_extension"),
         *[_file(p, mime="image/jpeg") for p in (NORMAL[:2] + PNEUMONIA[:2])], BROKEN]


@dataclass
class Calls:
    scored: int = 0          # images the network scored
    explained: int = 0       # images Grad-CAM explained


@pytest.fixture(scope="module")
def engine_probabilities() -> dict[str, float]:
    """What the engine itself says about BATCH (same items, same order), for comparison."""
    pred = Predictor.from_checkpoint(DEFAULT_MODEL_DIR)
    return {p.name: p.probability for p in pred.predict_items(
        items_from_uploads([(n, d) for n, d, _ in BATCH]), batch_size=16) if p.ok}


@pytest.fixture
def calls(monkeypatch) -> Calls:
    c = Calls()
    predict, explain = Predictor.score_arrays, Explainer.explain_images

    def counted_predict(self, resized, batch_size=64, **kwargs):   # every probability goes through score_arrays
        c.scored += len(resized)
        return predict(self, resized, batch_size, **kwargs)

    def counted_explain(self, resized, method="gradcam", batch_size=32):
        c.explained += len(resized)
        return explain(self, resized, method, batch_size)

    monkeypatch.setattr(Predictor, "score_arrays", counted_predict)
    monkeypatch.setattr(Explainer, "explain_images", counted_explain)
    return c


@pytest.fixture
def app(tmp_path, monkeypatch, calls) -> AppTest:
    monkeypatch.setenv("CXR_STORE_DIR", str(tmp_path / "store"))   # each test starts with an empty store
    monkeypatch.setenv("CXR_PROFILES_DIR", str(tmp_path / "profiles"))
    resources.heatmap.clear()
    at = AppTest.from_file(str(HOME), default_timeout=120).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def decision_button(at: AppTest, decision: str):
    """Review's Agree or Disagree button for the study on screen (its key carries the study's hash)."""
    return next(b for b in at.button if b.key and b.key.startswith(f"review_{decision}_"))


def viewer_data(at: AppTest) -> dict:
    """What Review's window/level viewer (dashboard/viewer.py) was sent in the last run."""
    [element] = at.get("bidi_component")
    return json.loads(element.proto.json)


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if column in d.value.columns)


def all_text(at: AppTest) -> str:
    """Every string the page shows: markdown, captions, metrics, tables, alerts."""
    parts = [e.value for kind in ("markdown", "caption", "title", "header", "subheader", "info",
                                  "warning", "error", "success") for e in getattr(at, kind)]
    parts += [m.label + " " + m.value for m in at.metric]
    parts += [d.value.to_csv() for d in at.dataframe]
    return "\n".join(map(str, parts))


def upload_batch(at: AppTest, files=BATCH) -> AppTest:
    at.switch_page("views/triage.py").run()
    at.file_uploader[0].set_value(files).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


# --------------------------------------------------------------------------- home and sidebar

def test_home_shows_model_card_notice_and_threshold(app):
    assert app.title[0].value == "Chest X-ray pneumonia triage"
    assert any("not a diagnostic device" in i.value for i in app.sidebar.info)
    assert metric(app, "Decision threshold") == f"{CARD.threshold:.3f}"
    assert metric(app, "Architecture") == CARD.architecture
    assert app.slider(key="threshold").value == pytest.approx(CARD.threshold)
    val = pd.read_csv(DEFAULT_MODEL_DIR / "val_predictions.csv")
    conf = M.confusion_at(val["label"], val["probability"], CARD.threshold)
    table = frame_with(app, "ci_low").set_index("metric")
    assert table.loc["Sensitivity", "value"] == pytest.approx(conf.sensitivity)
    assert table.loc["Specificity", "value"] == pytest.approx(conf.specificity)
    assert table.loc["Sensitivity", "ci_low"] <= conf.sensitivity <= table.loc["Sensitivity", "ci_high"]
    train = frame_with(app, "patients").set_index("split")
    assert train.loc["train", "images"] == CARD.extra["training"]["train"]["n"]
    # which backend runs the network here, and the shipped INT8 graph's gate as its card records it
    running = " ".join(m.value for m in app.markdown)
    from engine.inference.backends import choose_for_checkpoint
    assert "Network: **" in running and choose_for_checkpoint(DEFAULT_MODEL_DIR, CARD).reason in running
    gate = CARD.extra["int8"]["max_probability_difference"]
    assert "INT8 graph: passed its gate" in running and f"{gate['validation']:.4f} on validation" in running


def test_presets_move_the_shared_threshold(app):
    val = pd.read_csv(DEFAULT_MODEL_DIR / "val_predictions.csv")
    youden = M.choose_threshold(val["label"], val["probability"], "youden").threshold
    preset = app.selectbox(key="preset")
    label = next(o for o in preset.options if o.startswith("Youden"))
    preset.set_value(label).run()
    assert app.slider(key="threshold").value == pytest.approx(youden)
    app.switch_page("views/triage.py").run()          # one threshold for every page
    assert app.slider(key="threshold").value == pytest.approx(youden)
    app.slider(key="threshold").set_value(0.3).run()
    assert app.selectbox(key="preset").value.startswith("Custom")


def _checkpoint_copy(folder: Path, name: str, threshold: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").symlink_to(DEFAULT_MODEL_DIR / "model.safetensors")
    card = json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())
    card["name"], card["decision_threshold"]["value"] = name, threshold
    (folder / "model_card.json").write_text(json.dumps(card))
    return folder


def test_sidebar_other_checkpoint_and_bad_path(app, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_MODELS_ROOT", str(tmp_path / "models"))
    other = _checkpoint_copy(tmp_path / "models" / "other", "other-model", 0.25)
    outside = _checkpoint_copy(tmp_path / "elsewhere", "outside-model", 0.4)
    messages = []
    for typed in (str(tmp_path / "models" / "nowhere"), str(outside), "/etc", "../elsewhere"):
        app.text_input(key="model_dir").input(typed).run()
        (error,) = app.sidebar.error
        assert "not an allowed folder on this server, or does not exist" in error.value
        assert "shipped default" in error.value
        messages.append(error.value.replace(typed, "<typed>"))
        assert app.slider(key="threshold").value == pytest.approx(CARD.threshold)
    assert len(set(messages)) == 1          # "not allowed" and "does not exist" cannot be told apart
    app.text_input(key="model_dir").input(str(other)).run()
    assert not app.exception and not app.sidebar.error
    assert any("other-model" in m.value for m in app.sidebar.markdown)
    assert app.slider(key="threshold").value == pytest.approx(0.25)      # the new card's threshold
    app.text_input(key="model_dir").input("other").run()                 # relative to the root
    assert not app.sidebar.error and app.slider(key="threshold").value == pytest.approx(0.25)
    app.text_input(key="model_dir").input("").run()
    assert app.slider(key="threshold").value == pytest.approx(CARD.threshold)


def test_two_sessions_do_not_share_worklists(app):
    upload_batch(app, BATCH[:2])
    other = AppTest.from_file(str(HOME), default_timeout=120).run()
    other.switch_page("views/triage.py").run()
    assert not other.dataframe and any("Upload files" in i.value for i in other.main.info)
    other.switch_page("views/review.py").run()
    assert not other.image
    assert metric(app.run(), "Files") == "2"


# --------------------------------------------------------------------------- triage

def test_triage_lists_unreadable_scores_the_rest_and_reflags_without_the_model(app, calls,
                                                                                 engine_probabilities):
    upload_batch(app)
    df = app.dataframe[0].value
    assert len(df) == len(BATCH)
    bad = df[df["flag"] == "unreadable"]
    assert list(bad["file"]) == ["x.dcm"]
    assert bad["reason"].iloc[0].startswith("x.dcm:") and "not a DICOM, JPEG or PNG" in bad["reason"].iloc[0]
    good = df[df["flag"] != "unreadable"]
    assert calls.scored == len(BATCH) - 1 == len(good)
    assert list(good["probability"]) == sorted(good["probability"], reverse=True)
    for name, p in zip(good["file"], good["probability"]):
        assert p == pytest.approx(engine_probabilities[name], abs=1e-4)
    assert "study_without_extension" in set(good["file"])        # DICOM found by content
    assert metric(app, "Unreadable") == "1"

    probs = np.sort(good["probability"].to_numpy())
    thr = float((probs[2] + probs[3]) / 2)                        # 3 above, 3 below
    app.slider(key="threshold").set_value(thr).run()
    assert (metric(app, "Flagged"), metric(app, "Not flagged"), metric(app, "Unreadable")) == ("3", "3", "1")
    df = app.dataframe[0].value
    readable = df["flag"] != "unreadable"
    assert ((df.loc[readable, "probability"] >= thr) == (df.loc[readable, "flag"] == "FLAGGED")).all()
    app.slider(key="threshold").set_value(float(probs[0])).run()  # flag rule: probability >= threshold
    assert metric(app, "Flagged") == "6"
    assert calls.scored == len(BATCH) - 1                         # the model did not run again

    app.radio(key="wl_view").set_value("Unreadable").run()
    assert list(app.dataframe[0].value["file"]) == ["x.dcm"]
    app.radio(key="wl_view").set_value("Flagged").run()
    assert len(app.dataframe[0].value) == 6
    assert app.checkbox(key="export_ids").value is False          # identifiers: opt-in only
    assert calls.explained == 0                                   # no heatmap computed up front


def test_triage_keeps_the_good_files_of_an_upload_with_corrupt_members(app, calls):
    """A ZIP with a bad-CRC, a broken-deflate and a Deflate64 member, and a truncated DICOM, among good files."""
    import hostile_corpus as hostile
    good = {"in/a.jpeg": NORMAL[0].read_bytes(), "in/b.jpeg": PNEUMONIA[0].read_bytes()}
    archives = [(f"{kind}.zip", hostile.zip_with_bad_member(good, "bad.jpeg", kind), "application/zip")
                for kind in ("crc", "deflate", "deflate64")]
    cut = hostile.truncated_with_eoi(DICOM2.read_bytes(), 0.7)
    upload_batch(app, [*archives, ("cut.dcm", cut, "application/dicom"), _file(NORMAL[1], mime="image/jpeg")])
    df = app.dataframe[0].value
    assert len(df) == 3 * 3 + 2                                   # one row per member and per file
    bad = df[df["flag"] == "unreadable"].set_index("file")["reason"]
    assert sorted(bad.index) == ["crc.zip/bad.jpeg", "cut.dcm", "deflate.zip/bad.jpeg", "deflate64.zip/bad.jpeg"]
    assert "bad CRC-32" in bad["crc.zip/bad.jpeg"] and "broken deflate stream" in bad["deflate.zip/bad.jpeg"]
    assert "unsupported compression method" in bad["deflate64.zip/bad.jpeg"]
    assert "the JPEG Baseline stream is damaged or truncated" in bad["cut.dcm"]
    assert calls.scored == 3                                      # the two good members (once each) and the JPEG
    assert metric(app, "Unreadable") == "4"


def test_triage_adds_new_files_only_and_keeps_the_worklist_across_pages(app, calls):
    upload_batch(app, BATCH[:3])
    assert calls.scored == 3
    app.switch_page("views/home.py").run()
    app.switch_page("views/triage.py").run()
    assert metric(app, "Files") == "3"
    assert not app.file_uploader[0].value                         # the bytes left the session for the store
    app.file_uploader[0].set_value([BATCH[3], BATCH[0]]).run()
    assert metric(app, "Files") == "4"                            # the re-uploaded DICOM listed once
    assert calls.scored == 4                                      # only the new content was scored


def test_the_worklist_survives_a_reload_and_a_server_restart(app, calls):
    upload_batch(app, BATCH[:3])
    token = app.query_params["w"]
    assert len(token) >= 20                                       # the link carries the worklist's secret
    resources._open_store.clear()                                 # as after a restart: nothing in memory
    again = AppTest.from_file(str(HOME), default_timeout=120)
    again.query_params["w"] = token                               # a reload: the same link, a new session
    again.run()
    again.switch_page("views/triage.py").run()
    assert metric(again, "Files") == "3" and calls.scored == 3    # read back, not scored again
    stranger = AppTest.from_file(str(HOME), default_timeout=120)
    stranger.query_params["w"] = "not-a-worklist-token"
    stranger.run()
    stranger.switch_page("views/triage.py").run()
    assert not stranger.dataframe and stranger.query_params["w"] != "not-a-worklist-token"


def test_triage_refuses_files_over_the_size_limit(app, monkeypatch):
    from dashboard import batch
    monkeypatch.setattr(batch, "MAX_FILE_BYTES", 100_000)         # the DICOMs are larger than this
    upload_batch(app, BATCH[:3])
    df = app.dataframe[0].value
    refused = df[df["reason"].str.contains("limit for one image")]
    assert set(refused["file"]) == {DICOM.name, "study_without_extension"}
    assert metric(app, "Unreadable") == "2" and metric(app, "Flagged") != ""
    assert any("refused by a limit" in w.value for w in app.warning)


def test_non_radiograph_warning_in_worklist_and_review(app):
    import pydicom
    ds = pydicom.dcmread(io.BytesIO(DICOM2.read_bytes()))
    ds.Modality = "CT"
    buf = io.BytesIO()
    ds.save_as(buf)
    upload_batch(app, [("ct_slice.dcm", buf.getvalue(), "application/dicom")])
    row = app.dataframe[0].value.iloc[0]
    assert row["modality"] == "CT" and "not a radiograph" in row["warnings"]
    app.button(key="open_review").click().run()
    assert any("Modality CT" in w.value for w in app.warning)


# --------------------------------------------------------------------------- review

def test_review_heatmap_header_identifiers_and_log(app, calls, tmp_path):
    upload_batch(app, BATCH[:3] + [BATCH[-1]])
    dicom_sha = _sha(DICOM.read_bytes())
    app.selectbox(key="open_study").set_value(dicom_sha).run()
    app.button(key="open_review").click().run()
    assert not app.exception, [e.message for e in app.exception]
    assert decision_button(app, "agree") and decision_button(app, "disagree")   # the Review page
    assert decision_button(app, "agree").key.endswith(dicom_sha[:16])          # bound to the study shown
    assert app.session_state["review_sha"] == dicom_sha
    app.switch_page("views/review.py")      # AppTest does not follow st.switch_page for later runs
    view = viewer_data(app)                 # the radiograph and overlay: window/level drawn in the browser
    raw = read_image(DICOM.read_bytes(), DICOM.name).modality_values
    assert view["study"] == dicom_sha[:16] and view["monochrome1"] and view["unit"] == "in the DICOM's own units"
    assert view["presets"][0] == ["Header (WC 15000 / WW 30000)", 15000.0, 30000.0]
    assert all(str(c) == str(round(c)) + ".0" for _, c, _ in view["presets"])      # no 12475.53348388672
    assert raw.min() <= view["lo"] < view["hi"] <= raw.max()       # the display-size copy of the file's values
    assert view["overlay"].startswith("data:image/png;base64,") and "opacity 0.40" in view["overlay_caption"]
    assert [c for img in app.image for c in img.captions] == [next(c for img in app.image for c in img.captions
                                                                   if "alone" in c)]   # only the heat alone
    assert calls.explained == 1                                   # only the study under review

    header = frame_with(app, "field").set_index("field")["value"]
    assert header["modality"] == "CR" and header["photometric interpretation"] == "MONOCHROME1"
    ids = read_image(DICOM.read_bytes(), DICOM.name).identifiers
    assert ids.patient_name and ids.patient_name not in all_text(app)   # hidden by default
    app.checkbox(key="show_ids").check().run()
    assert ids.patient_name in frame_with(app, "identifier")["value"].tolist()

    app.slider(key="rv_opacity").set_value(0.8).run()
    assert "opacity 0.80" in viewer_data(app)["overlay_caption"]
    app.slider(key="rv_min_heat").set_value(0.5).run()
    assert "heat ≥ 0.50" in viewer_data(app)["overlay_caption"]
    assert viewer_data(app)["pixels"] == view["pixels"] and viewer_data(app)["overlay"] != view["overlay"]
    app.toggle(key="rv_linked").set_value(True).run()                # linked zoom: one figure, two views
    linked = json.loads(app.get("plotly_chart")[0].proto.spec)
    assert [d["type"] for d in linked["data"]] == ["image", "image"]
    for trace in linked["data"]:                                  # the file's own pixels (1,841 x 1,955), lossless
        png = base64.b64decode(trace["source"].removeprefix("data:image/png;base64,"))
        assert cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED).shape[:2] == (1955, 1841)
    assert linked["layout"]["xaxis2"]["matches"] == "x" and linked["layout"]["yaxis2"]["matches"] == "y"
    app.toggle(key="rv_linked").set_value(False).run()
    assert calls.explained == 1                                   # display changes reuse the heatmap

    app.slider(key="threshold").set_value(0.0).run()              # every study flagged
    app.text_input(key="reviewer_name").input("Dr A. Reader").run()
    assert not [b for b in app.button if b.key == "review_submit"]  # no form with a preset choice: two buttons
    app.text_input(key="review_note").input("no consolidation seen").run()
    decision_button(app, "disagree").click().run()
    assert not app.exception, [e.message for e in app.exception]
    from engine.worklist.store import Store
    rows = list(csv.DictReader(io.StringIO(Store(tmp_path / "store").decisions_csv(None))))
    assert len(rows) == 1
    e = rows[0]
    assert (e["file_sha256"], e["file_name"], e["decision"], e["note"], e["reviewer"]) == (
        dicom_sha, DICOM.name, "disagree", "no consolidation seen", "Dr A. Reader")
    assert e["model"] == f"{CARD.name} {CARD.version}"
    assert float(e["threshold"]) == pytest.approx(0.0)
    assert ids.patient_name not in Store(tmp_path / "store").decisions_csv(None)
    assert app.session_state["review_sha"] != dicom_sha            # moved on to the next unreviewed flagged
    next_sha = app.session_state["review_sha"]
    app.switch_page("views/review.py").run()
    assert calls.explained == 2
    app.button(key="next_flagged").click().run()
    if app.session_state["review_sha"] == next_sha:               # the last flagged study: kept at the end
        app.button(key="prev_flagged").click().run()
    assert app.session_state["review_sha"] != next_sha
    app.switch_page("views/triage.py").run()
    reviews = app.dataframe[0].value.set_index("sha256")["review"]
    assert reviews[dicom_sha] == "disagreed" and (reviews.drop(dicom_sha) == "unreviewed").all()


def test_reviewed_studies_become_a_labelled_set_for_a_site_profile(app):
    upload_batch(app, BATCH[:4])
    app.slider(key="threshold").set_value(0.0).run()               # every study flagged
    app.switch_page("views/review.py").run()
    assert decision_button(app, "agree").disabled                   # the reviewer is asked for first
    app.text_input(key="review_reviewer").input("Dr A. Reader").run()
    for decision in ("agree", "disagree", "agree"):               # each moves on to the next flagged study
        decision_button(app, decision).click().run()
        app.switch_page("views/review.py").run()
    app.switch_page("views/performance.py").run()
    app.radio(key="perf_source").set_value("Your reviewed studies").run()
    assert not app.exception, [e.message for e in app.exception]
    assert any("your 3 reviewed studies: 3 studies (2 pneumonia, 1 normal)" in c.value for c in app.caption)
    app.selectbox(key="site_target_kind").set_value("The current threshold").run()
    app.text_input(key="site_name").input("from my reviews").run()
    app.button(key="site_save").click().run()
    assert any("unreliable: fitted on 2 pneumonia and 1 normal cases" in w.value for w in app.warning)


def test_review_without_a_batch_says_what_to_do(app):
    app.switch_page("views/review.py").run()
    assert not app.exception
    assert any("upload studies on the Triage page" in i.value for i in app.main.info)
    assert not app.image


# --------------------------------------------------------------------------- performance

def _shown_metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _expected(conf: M.Confusion) -> dict[str, str]:
    return {"Sensitivity": f"{conf.sensitivity:.3f}", "Specificity": f"{conf.specificity:.3f}",
            "PPV": f"{conf.ppv:.3f}", "NPV": f"{conf.npv:.3f}", "F1": f"{conf.f1:.3f}",
            "Accuracy": f"{conf.accuracy:.3f}", "True positives": str(conf.tp),
            "False positives": str(conf.fp), "False negatives": str(conf.fn), "True negatives": str(conf.tn)}


def test_performance_figures_and_metrics_match_the_engine(app):
    app.switch_page("views/performance.py").run()
    assert not app.exception, [e.message for e in app.exception]
    val = pd.read_csv(DEFAULT_MODEL_DIR / "val_predictions.csv")
    y, s = val["label"].to_numpy(), val["probability"].to_numpy()
    charts = app.get("plotly_chart")
    assert len(charts) == 5
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in charts]
    assert f"AUC {M.roc_auc(y, s):.3f}" in titles[1]
    assert f"AP {M.average_precision(y, s):.3f}" in titles[2]
    assert _expected(M.confusion_at(y, s, CARD.threshold)).items() <= _shown_metrics(app).items()

    thr = float(np.median(s))
    app.slider(key="threshold").set_value(thr).run()
    conf = M.confusion_at(y, s, thr)
    assert _expected(conf).items() <= _shown_metrics(app).items()
    roc = json.loads(app.get("plotly_chart")[1].proto.spec)
    point = roc["data"][-1]
    n_neg = int((y == 0).sum())
    # the false-positive axis is logarithmic from half a false positive: zero is drawn at 1/(2n)
    assert roc["layout"]["xaxis"]["type"] == "log"
    assert point["x"][0] == pytest.approx(max(1 - conf.specificity, 0.5 / n_neg))
    assert point["y"][0] == pytest.approx(conf.sensitivity)
    hist = json.loads(app.get("plotly_chart")[3].proto.spec)
    assert hist["layout"]["shapes"][0]["x0"] == pytest.approx(thr)

    # A site profile typed by the user: specificity at least 0.9 on the data shown, saved by name.
    app.selectbox(key="site_target_kind").set_value("Specificity at least").run()
    app.number_input(key="site_target").set_value(0.9).run()
    app.text_input(key="site_name").input("screening clinic").run()
    app.button(key="site_save").click().run()
    assert not app.exception, [e.message for e in app.exception]
    expected = M.choose_threshold(y, s, "specificity>=0.9").threshold
    assert app.slider(key="threshold").value == pytest.approx(expected)      # the slider moved to it
    profile = load_profile("screening clinic")                              # on disk: survives a restart
    assert profile.threshold == pytest.approx(expected) and profile.n_normal == int((y == 0).sum())
    assert any("sensitivity" in m.value and "specificity" in m.value for m in app.success)
    label = f"Site: screening clinic ({int(y.sum())}+{int((y == 0).sum())} cases) — {expected:.3f}"
    assert app.selectbox(key="preset").value == label                        # the sidebar names it in force
    assert any(f"In force: **{label}**" in c.value for c in app.sidebar.caption)
    fresh = AppTest.from_file(str(HOME), default_timeout=120).run()          # another session, later
    assert label in fresh.selectbox(key="preset").options


def test_performance_csv_upload_checks_columns(app):
    app.switch_page("views/performance.py").run()
    app.radio(key="perf_source").set_value("Predictions CSV").run()
    app.file_uploader(key="perf_csv").set_value([("p.csv", b"file,truth,score\na,1,0.5\n", "text/csv")]).run()
    assert "needs columns 'label' and 'probability'" in app.error[0].value
    good = b"label,probability\nnormal,0.1\npneumonia,0.9\nNORMAL,0.7\n1,0.4\n"
    app.file_uploader(key="perf_csv").set_value([("p.csv", good, "text/csv")]).run()
    assert not app.error
    app.slider(key="threshold").set_value(0.5).run()      # one flag at least, so that PPV is a number
    conf = M.confusion_at([0, 1, 0, 1], [0.1, 0.9, 0.7, 0.4], app.slider(key="threshold").value)
    assert _expected(conf).items() <= _shown_metrics(app).items()


def test_performance_scores_a_zip_of_class_folders(app, calls):
    app.switch_page("views/performance.py").run()
    app.radio(key="perf_source").set_value("Images in class folders").run()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in NORMAL + PNEUMONIA:
            zf.writestr(f"sample/{p.parent.name}/{p.name}", p.read_bytes())
        zf.writestr("sample/README.txt", b"not an image and not in a class folder")
    app.file_uploader(key="perf_zip").set_value([("sample.zip", buf.getvalue(), "application/zip")]).run()
    app.button(key="perf_run").click().run()
    assert not app.exception, [e.message for e in app.exception]
    assert calls.scored == 12
    assert any("12 studies (6 pneumonia, 6 normal)" in c.value for c in app.caption)
    assert len(app.get("plotly_chart")) == 5
    assert any("were in the model's training split" in w.value and "not a held-out evaluation" in w.value
               for w in app.warning)                                  # the sample comes from training
    errors = app.dataframe(key="perf_errors").value
    assert set(errors["outcome"]) <= {"FP", "FN"} and app.get("download_button")   # errors listed, exportable
    app.slider(key="threshold").set_value(0.45).run()              # re-flags from the stored scores
    assert calls.scored == 12 and len(app.get("plotly_chart")) == 5
    app.file_uploader(key="perf_zip").set_value([]).run()
    app.text_input(key="perf_folder").input(str(SAMPLE / "kermany")).run()
    app.button(key="perf_run").click().run()                        # the same images from a folder
    assert any("12 studies (6 pneumonia, 6 normal)" in c.value for c in app.caption)
    assert calls.scored == 12                                       # same content: no new scoring


def test_performance_folder_field_is_confined_to_the_data_roots(app, calls, tmp_path, monkeypatch):
    app.switch_page("views/performance.py").run()
    app.radio(key="perf_source").set_value("Images in class folders").run()
    messages = []
    for typed in ("/etc", str(tmp_path / "missing"), "../../..", str(SAMPLE.parent)):
        app.text_input(key="perf_folder").input(typed).run()
        app.button(key="perf_run").click().run()
        assert not app.exception, [e.message for e in app.exception]
        (error,) = app.error
        assert "not an allowed folder on this server, or does not exist" in error.value
        messages.append(error.value.replace(typed, "<typed>"))
    assert len(set(messages)) == 1 and calls.scored == 0          # nothing listed, nothing read
    monkeypatch.setenv("CXR_DATA_ROOT", str(SAMPLE.parent))         # an administrator widens the root
    app.text_input(key="perf_folder").input("sample/kermany").run()
    app.button(key="perf_run").click().run()
    assert any("12 studies (6 pneumonia, 6 normal)" in c.value for c in app.caption)


# --------------------------------------------------------------------------- compare

def _evaluation(folder: Path, y: np.ndarray, s: np.ndarray, version: str) -> dict:
    folder.mkdir(parents=True)
    s = np.round(s, 6)
    pd.DataFrame({"file": [f"img{i}.jpeg" for i in range(len(y))], "label": y, "probability": s}
                 ).to_csv(folder / "predictions.csv", index=False)
    metrics = M.summarize(y, s, CARD.threshold, n_resamples=200)
    metrics |= {"model_name": CARD.name, "model_version": version, "data_dir": "/data/test", "split": None}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    shutil.copyfile(DEFAULT_MODEL_DIR / "model_card.json", folder / "model_card.json")
    return metrics


def test_compare_two_evaluation_folders(app, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_DATA_ROOT", str(tmp_path))               # typed folders must be under a root
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    good = _evaluation(tmp_path / "strong", y, np.clip(0.6 * y + 0.4 * rng.random(120), 0, 1), "2.0")
    weak = _evaluation(tmp_path / "weak", y, rng.random(120), "1.0")
    app.switch_page("views/compare.py").run()
    app.text_area(key="cmp_extra").input(f"{tmp_path / 'strong'}\n{tmp_path / 'weak'}\n{tmp_path / 'missing'}").run()
    assert not app.exception, [e.message for e in app.exception]
    assert any("missing" in e.value and "not an allowed folder on this server, or does not exist" in e.value
               for e in app.error)
    app.text_area(key="cmp_extra").input("/etc").run()                # outside every root: refused alike
    assert any("'/etc' is not an allowed folder" in e.value for e in app.error)
    app.text_area(key="cmp_extra").input(f"{tmp_path / 'strong'}\n{tmp_path / 'weak'}").run()
    delong = frame_with(app, "A − B")
    pair = delong[(delong["A"] == "strong") & (delong["B"] == "weak")]
    assert len(pair) == 1 and float(pair["p"].iloc[0]) < 0.05             # paired: same files and labels
    table = frame_with(app, "auc").set_index("evaluation").loc[["strong", "weak"]]
    assert table.loc["strong", "auc"] == pytest.approx(good["auc"])
    assert table.loc["weak", "sensitivity"] == pytest.approx(weak["sensitivity"])
    assert table.loc["strong", "model"] == short_label(f"{CARD.name} {CARD.version}")   # from model_card.json
    spec = json.loads(app.get("plotly_chart")[-1].proto.spec)
    names = [t["name"] for t in spec["data"]]
    assert f"strong (AUC {good['auc']:.3f})" in names and f"weak (AUC {weak['auc']:.3f})" in names


def test_compare_scores_checkpoints_on_a_labelled_folder(app, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_MODELS_ROOT", str(tmp_path / "models"))
    tiny = (tmp_path / "models" / "tiny").resolve()
    write_tiny_checkpoint(tiny, seed=3)
    # each checkpoint is named by its card, as every page names a model; the shipped one is marked
    tiny_name, shipped_name = display_label(read_card(tiny)), display_label(CARD) + " · shipped"
    app.switch_page("views/compare.py").run()
    assert tiny_name in app.multiselect(key="cmp_ckpts").options             # found under the models root
    app.multiselect(key="cmp_ckpts").select(str(tiny)).run()
    app.text_input(key="cmp_folder").input("kermany").run()                 # under the data root
    app.button(key="cmp_score").click().run()
    assert not app.exception, [e.message for e in app.exception]
    table = frame_with(app, "auc 95% CI").set_index("model")
    assert list(table.index) == [shipped_name, tiny_name]
    # the sample images were among the shipped model's training images: the page says so
    assert any(w.value.startswith(f"{shipped_name}:") and "not a held-out evaluation" in w.value
               for w in app.warning)
    # the shipped model's row is the engine's own scores of these images, labelled by their folders
    files = sorted((SAMPLE / "kermany").glob("*/*.jpeg"))
    labels = np.array([1 if f.parent.name == "PNEUMONIA" else 0 for f in files])
    probs = np.array([p.probability for p in Predictor.from_checkpoint(DEFAULT_MODEL_DIR).predict_stream(
        iter_inputs([str(f) for f in files]))])
    shipped = table.loc[shipped_name]
    assert shipped["n"] == len(files) and shipped["auc"] == pytest.approx(M.roc_auc(labels, probs), abs=1e-6)
    assert shipped["threshold"] == pytest.approx(CARD.threshold)
    assert shipped["sensitivity"] == pytest.approx(M.confusion_at(labels, probs, CARD.threshold).sensitivity)
    delong = frame_with(app, "A − B")                                        # paired, on the same files
    assert len(delong) == 1 and delong["A − B"].iloc[0] == pytest.approx(
        shipped["auc"] - table.loc[tiny_name, "auc"], abs=1e-9)


# --------------------------------------------------------------------------- review safety (issue 19)

def _store(tmp_path):
    from engine.worklist.store import Store
    return Store(tmp_path / "store")


def test_a_decided_study_changes_only_when_asked_and_keeps_its_history(app, tmp_path):
    upload_batch(app, BATCH[2:5])
    app.slider(key="threshold").set_value(0.0).run()
    app.text_input(key="reviewer_name").input("Dr A. Reader").run()
    app.switch_page("views/review.py").run()
    first = app.session_state["review_sha"]
    stale_agree = decision_button(app, "agree")                       # the buttons of the first study
    decision_button(app, "disagree").click().run()
    assert app.session_state["review_sha"] != first                   # moved on
    # A press that arrives from the first study's page (the reader's key as the page moved on) is bound
    # to that study, which has a decision: refused with a message, nothing overwritten.
    app.session_state["review_sha"] = first
    app.switch_page("views/review.py").run()
    assert not [b for b in app.button if b.key == stale_agree.key]    # a decided study offers no A/D
    change = next(b for b in app.button if b.key and b.key.startswith("review_change_"))
    change.click().run()
    decision_button(app, "agree").click().run()
    assert not app.exception, [e.message for e in app.exception]
    assert any("changed to agree" in m.value for m in app.success)
    rows = list(csv.DictReader(io.StringIO(_store(tmp_path).decisions_csv(None))))
    assert [(r["decision"], r["status"]) for r in rows] == [("disagree", "changed later"),
                                                          ("agree", "current (changed)")]


def test_the_store_refuses_a_second_decision_without_an_explicit_change(tmp_path):
    from engine.worklist.store import DecisionExists
    store = _store(tmp_path)
    _, wl = store.create_worklist("r")
    sid = store.add_study(wl, "a.jpeg", "a" * 64)
    store.record_decision(sid, reviewer="r", decision="disagree", probability=0.9, threshold=0.5, model="m")
    with pytest.raises(DecisionExists, match="already has a decision \\(disagree by r\\)"):
        store.record_decision(sid, reviewer="r", decision="agree", probability=0.9, threshold=0.5, model="m")
    assert [d["decision"] for d in store.decisions(sid)] == ["disagree"]


def test_clear_asks_first_archives_and_undo_brings_back_the_decisions(app, tmp_path):
    upload_batch(app, BATCH[2:5])
    app.slider(key="threshold").set_value(0.0).run()
    app.text_input(key="reviewer_name").input("Dr A. Reader").run()
    app.switch_page("views/review.py").run()
    decision_button(app, "agree").click().run()
    app.switch_page("views/triage.py").run()
    app.button(key="clear_worklist").click().run()                    # asks first: nothing cleared yet
    assert metric(app, "Files") == "3" and any("Clear the worklist?" in w.value for w in app.warning)
    app.button(key="clear_cancel").click().run()
    assert metric(app, "Files") == "3"
    app.button(key="clear_worklist").click().run()
    app.button(key="clear_confirm").click().run()
    assert any("Cleared 3 studies" in i.value for i in app.info)
    assert not [m for m in app.metric if m.label == "Files"]          # the worklist is empty
    store = _store(tmp_path)
    assert store.count_studies(app.session_state["worklist"]) == 0
    app.button(key="undo_clear").click().run()
    assert metric(app, "Files") == "3"
    assert sorted(app.dataframe[0].value["review"]) == ["agreed", "unreviewed", "unreviewed"]


def test_research_scoring_never_enters_the_worklist(app, tmp_path, calls):
    upload_batch(app, BATCH[2:4])
    wl = app.session_state["worklist"]
    store = _store(tmp_path)
    before = [(r.name, r.sha256) for r in store.studies(wl, "any")]
    app.switch_page("views/performance.py").run()
    app.radio(key="perf_source").set_value("Images in class folders").run()
    app.text_input(key="perf_folder").input(str(SAMPLE / "kermany")).run()
    app.button(key="perf_run").click().run()
    app.slider(key="threshold").set_value(0.0).run()                  # every normal a false positive
    assert not app.exception, [e.message for e in app.exception]
    assert [(r.name, r.sha256) for r in store.studies(wl, "any")] == before
    app.switch_page("views/triage.py").run()
    assert metric(app, "Files") == "2"
