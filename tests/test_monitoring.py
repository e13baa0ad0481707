"""Monitoring (engine.monitoring, ``python -m engine.ingest`` / ``engine.monitor``, the Monitoring page).

Scoring uses the shipped model on real images: assets/sample always, ../shared/data when it is there
(children's films from the model's validation split, then adults from NIH). The reader-side tests
put results in the store directly (the statistics, not the network, are under test there).
"""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.worklist import AUDIT_TEXT, build_worklist
from engine.cli import ingest as ingest_cli, monitor as monitor_cli
from engine.model.checkpoint import DEFAULT_MODEL_DIR
from engine.monitoring import audit, cusum, periods, report, state, stats
from engine.monitoring.windows import WindowSpec, parse_range
from engine.worklist.store import Result, Store

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "dashboard" / "Home.py"
SAMPLE = ROOT / "assets" / "sample"
SHARED = ROOT.parent / "shared" / "data"
MODEL = periods.model_info(DEFAULT_MODEL_DIR)
THRESHOLD = MODEL.card_threshold
HIGH, LOW = (1 + THRESHOLD) / 2, THRESHOLD / 2      # flagged and not, whatever the card's threshold

needs_shared = pytest.mark.skipif(not (SHARED / "kermany224" / "train").is_dir() or
                                  not (SHARED / "nih-cxr" / "NORMAL").is_dir(),
                                  reason="../shared/data (Kermany and NIH films) is not here")


def scored_store(root: Path, probabilities, warnings=()) -> tuple[Store, list[int]]:
    """A store with one scored inbox study per probability (warnings on the indices given), monitored
    from its first study with the shipped model at its card threshold."""
    store = Store(root)
    ids = []
    for i, p in enumerate(probabilities):
        sha = store.put_file(f"study {i}".encode())
        ids.append(store.add_study(None, f"study-{i}.dcm", sha, source="receiver"))
        store.put_result(sha, MODEL.key, Result("ok", float(p), warnings=("outside",) if i in warnings else ()))
    periods.ensure(store, MODEL)
    return store, ids


def decide(store: Store, study_id: int, decision: str, probability: float, reviewer: str = "Dr A") -> None:
    store.record_decision(study_id, reviewer=reviewer, decision=decision, probability=probability,
                          threshold=THRESHOLD, model=MODEL.label)


def check(window: dict, name: str) -> dict:
    return next(c for c in window["checks"] if c["input"] == name)


# --------------------------------------------------------------------------- statistics

def test_statistics_against_published_and_known_values():
    d, lo, hi = stats.newcombe(56, 70, 48, 80)               # Newcombe (1998), example (a): 0.0524 to 0.3339
    assert (round(d, 4), round(lo, 4), round(hi, 4)) == (0.2, 0.0524, 0.3339)
    assert stats.chi2_sf(3.841459, 1) == pytest.approx(0.05, abs=1e-6)
    assert stats.chi2_sf(11.3449, 3) == pytest.approx(0.01, abs=1e-5)
    assert stats.psi([10, 10, 10], [100, 100, 100]) == pytest.approx(0.0)
    assert stats.psi([30, 0, 0], [100, 100, 100]) > 1.0
    h = cusum.limit_for(0.15, 0.30)
    assert 490 <= cusum.run_length(0.15, 0.30, h, 0.15) <= 560       # the documented in-control run length
    assert cusum.run_length(0.15, 0.30, h, 0.30) < 50                # a doubling is found in tens of decisions
    assert WindowSpec.parse("7d") == WindowSpec("days", 7) and WindowSpec.parse("200") == WindowSpec("studies", 200)
    with pytest.raises(ValueError):
        WindowSpec.parse("a week")
    start, end = parse_range("2025-01-06..2025-01-19")
    assert start.startswith("2025-01-06T00:00") and end.startswith("2025-01-20T00:00")


def test_an_older_store_gets_the_audit_column(tmp_path):
    store = Store(tmp_path)
    with sqlite3.connect(store.db_path) as con:
        con.execute("ALTER TABLE studies DROP COLUMN audit")
    Store(tmp_path)                                          # opened again by a newer release
    with sqlite3.connect(store.db_path) as con:
        assert "audit" in {r[1] for r in con.execute("PRAGMA table_info(studies)")}


# --------------------------------------------------------------------------- the batch way in (assets/sample)

def test_ingest_cli_adds_every_input_once_and_scores_it(tmp_path, capsys):
    store_dir = tmp_path / "store"
    assert ingest_cli.main([str(SAMPLE), "--store", str(store_dir), "--quiet", "--source", "night-batch"]) == 0
    line = capsys.readouterr().out
    store = Store(store_dir)
    rows = store.studies(None, MODEL.key)
    n_inputs = sum(1 for p in SAMPLE.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert len(rows) == n_inputs and all(r.inbox and r.source == "night-batch" for r in rows)
    scored = [r for r in rows if r.ok]
    assert len(scored) == 14 and {r.metadata.format for r in scored} == {"jpeg", "dicom"}
    assert f"{n_inputs} inputs: {n_inputs} added to the shared inbox" in line and "14 scored" in line
    assert "flagged at" in line and "IM-0115" not in line                # counts only, no file names
    period = periods.current(store)
    assert period.model_key == MODEL.key and period.reason == "first period"

    assert ingest_cli.main([str(SAMPLE), "--store", str(store_dir), "--quiet"]) == 0     # the same again
    assert f"{n_inputs} inputs: 0 added to the shared inbox ({n_inputs} already there)" in capsys.readouterr().out
    token, wl = store.create_worklist("Dr B")
    assert ingest_cli.main([str(SAMPLE / "dicom"), "--store", str(store_dir), "--quiet", "--worklist", token,
                            "--threshold", "0.5"]) == 0
    assert len(store.studies(wl, MODEL.key, include_inbox=False)) == 2
    assert periods.current(store).reason == "new threshold"             # a new threshold: a new period
    assert ingest_cli.main([str(SAMPLE), "--store", str(store_dir), "--worklist", "nope"]) == 2


# --------------------------------------------------------------------------- (a) the input alert on real films

def _children(n_normal: int = 10, n_pneumonia: int = 30) -> list[Path]:
    """Films of the model's validation split (held out from its training), its class mix kept."""
    with open(DEFAULT_MODEL_DIR / "val_predictions.csv", newline="") as f:
        val = list(csv.DictReader(f))
    folder = {"0": SHARED / "kermany224" / "train" / "NORMAL", "1": SHARED / "kermany224" / "train" / "PNEUMONIA"}
    found = {label: [folder[label] / r["file"] for r in val
                     if r["label"] == label and (folder[label] / r["file"]).is_file()] for label in folder}
    return found["0"][::7][:n_normal] + found["1"][::15][:n_pneumonia]


@needs_shared
def test_adult_films_raise_the_input_alert_and_children_do_not(tmp_path):
    store_dir, out = tmp_path / "store", tmp_path / "out"
    children = _children()
    adults = [p for c in ("NORMAL", "PNEUMONIA") for p in sorted((SHARED / "nih-cxr" / c).glob("*.jpeg"))[:20]]
    assert len(children) == 40 and len(adults) == 40
    assert ingest_cli.main([*map(str, children), "--store", str(store_dir), "--quiet"]) == 0
    assert monitor_cli.main(["--store", str(store_dir), "--window", "40", "--json", str(out / "1.json")]) == 0
    first = json.loads((out / "1.json").read_text())
    assert [w["scored"] for w in first["windows"]] == [40]
    assert not first["input_alert"]["alert"] and first["stop_rule"]["state"] == "in use"
    assert check(first["windows"][0], "probability (vs validation)")["status"] in ("stable", "watch")

    assert ingest_cli.main([*map(str, adults), "--store", str(store_dir), "--quiet"]) == 0
    assert monitor_cli.main(["--store", str(store_dir), "--window", "40", "--json", str(out / "2.json")]) == 0
    second = json.loads((out / "2.json").read_text())
    kids, grown = second["windows"]
    assert grown["scored"] == 40 and not kids["alert"] and kids["is_reference"]
    assert grown["alert"] and second["input_alert"] == {"window": 1, "alert": True, "moved": grown["moved"],
                                                        "windows_with_alert": [1]}
    assert {"warning share", "probability (vs validation)"} <= set(grown["moved"])
    psi_kids, psi_adults = (check(w, "probability (vs validation)")["value"] for w in (kids, grown))
    assert psi_adults >= 0.25 > psi_kids
    assert grown["rates"]["warning share"]["rate"] > 0.5 > kids["rates"]["warning share"]["rate"]
    assert any(a["kind"] == "drift" for a in second["stop_rule"]["alerts"])     # and the stop rule saw it
    text = (out / "2.json").read_text()
    assert not any(p.name in text or p.stem in text for p in children + adults)   # no file names in the report


# --------------------------------------------------------------------------- (b) + the page: stop rule and banner

def test_disagreements_cross_the_stop_rule_and_the_banner_appears(tmp_path, monkeypatch):
    probs = [HIGH] * 40
    store, ids = scored_store(tmp_path / "store", probs)
    for sid in ids[:20]:
        decide(store, sid, "agree", HIGH)
    assert report.refresh(store) == []                          # 20 agreements: nothing to say
    for sid in ids[20:26]:
        decide(store, sid, "disagree", HIGH)
    (alert,) = report.refresh(store)
    assert alert.kind == "disagreement" and alert.active
    # p0 = 0.15 (under 100 decisions), h = 3.24: each disagreement adds ln 2, so the 5th one crosses
    assert "disagreed on 5 of the 25 decisions" in alert.reason
    assert alert.since == store.decisions(ids[24])[0]["time"]

    monkeypatch.setenv("CXR_STORE_DIR", str(tmp_path / "store"))
    at = AppTest.from_file(str(HOME), default_timeout=180).run()
    assert not at.exception, [e.message for e in at.exception]
    banner = [e.value for e in at.main.error if "Model under review since" in e.value]
    assert len(banner) == 1 and alert.since[:16].replace("T", " ") in banner[0] and "disagreed" in banner[0]
    at.switch_page("views/triage.py").run()                     # on every page
    assert any("Model under review since" in e.value for e in at.main.error)

    at.switch_page("views/monitoring.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert len(at.get("plotly_chart")) >= 5
    at.text_input(key="mon_clear_by").input("Dr C")            # inside the form: sent with the button
    at.text_area(key="mon_clear_reason").input("a run of hard cases, checked with the team")
    next(b for b in at.button if b.label == "Clear the stop rule").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert not any("Model under review since" in e.value for e in at.main.error)
    (cleared,) = state.history(store)
    assert (cleared.cleared_by, cleared.clear_reason) == ("Dr C", "a run of hard cases, checked with the team")


# --------------------------------------------------------------------------- (c) the audit sample

def test_the_audit_share_is_honoured_and_marked_in_the_worklist(tmp_path):
    probs = [0.05] * 400 + [0.95] * 50                           # 400 unflagged, 50 flagged
    store, ids = scored_store(tmp_path / "store", probs)
    period = periods.ensure(store, MODEL, audit_share=0.2)
    assert period.audit_share == 0.2
    assert audit.draw(store, period) == 400
    rows = store.monitored_studies(MODEL.key, period.started)
    drawn = [r for r in rows if r.audit]
    assert all(r.probability < THRESHOLD for r in drawn)         # flagged studies are never drawn
    low, high = stats.clopper_pearson(len(drawn), 400, 0.99)
    assert low <= 0.2 <= high, len(drawn)
    assert {r.id for r in drawn} == {i for i in ids[:400] if audit.in_sample(0, i, 0.2)}   # reproducible
    periods.ensure(store, MODEL, audit_share=0.5)
    assert audit.draw(store, periods.current(store)) == 0         # a study is drawn once
    table = build_worklist(store.studies(None, MODEL.key))
    assert (table["audit"] == AUDIT_TEXT).sum() == len(drawn)

    for i, r in enumerate(drawn[:20]):                           # readers review 20 audited studies
        decide(store, r.id, "disagree" if i < 3 else "agree", r.probability)
    rep = report.build(store, WindowSpec.parse("200"))
    a = rep["audit"]
    assert a["drawn"]["k"] == len(drawn) and a["unflagged"] == 400 and a["reviewed"] == 20
    assert a["miss_rate"]["k"] == 3 and a["miss_rate"]["n"] == 20
    assert a["miss_rate"]["low"] < 0.15 < a["miss_rate"]["high"]


# --------------------------------------------------------------------------- (d) the reports

def test_json_and_html_reports(tmp_path, capsys):
    probs = [LOW, HIGH] * 30
    store, ids = scored_store(tmp_path / "store", probs, warnings={3, 40})
    for sid, p in zip(ids[:10], probs):
        decide(store, sid, "agree" if p > THRESHOLD else "disagree", p, reviewer="Dr Reader")
    out = tmp_path / "out"
    assert monitor_cli.main(["--store", str(tmp_path / "store"), "--window", "20", "--json", str(out / "r.json"),
                             "--html", str(out / "r.html")]) == 0
    assert "Period 1" in capsys.readouterr().out
    page = (out / "r.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "Plotly.newPlot" in page    # the charts, offline
    assert "<td>60</td>" in page                                 # the counts: 60 studies
    assert "1.000 (5 of 5;" in page                              # the PPV of a flag with its count
    rep = json.loads((out / "r.json").read_text())
    assert [w["scored"] for w in rep["windows"]] == [20, 20, 20]
    assert rep["readers"]["overall"]["decisions"] == 10 and rep["readers"]["overall"]["ppv"]["k"] == 5
    assert "check the threshold against the audit sample" in rep["period"]["notice"].lower()
    text = (out / "r.json").read_text()
    assert "Dr Reader" not in text and "study-" not in text and not any(
        store.studies(None, MODEL.key)[0].sha256 in x for x in (text, page))
    assert rep["readers"]["by"]["reader"][0]["group"] == state.pseudonym("Dr Reader")
    assert monitor_cli.main(["--store", str(tmp_path / "store"), "--window", "a week"]) == 2


def test_a_new_threshold_starts_a_new_period(tmp_path):
    store, _ = scored_store(tmp_path / "store", [0.2] * 5)
    first = periods.current(store)
    assert monitor_cli.main(["--store", str(tmp_path / "store"), "--threshold", "0.4", "--window", "10"]) == 0
    second = periods.current(store)
    assert second.id == first.id + 1 and second.reason == "new threshold" and second.threshold == 0.4
    rep = report.build(store, WindowSpec.parse("10"))
    assert "new monitoring period" in rep["period"]["notice"] and "audit sample" in rep["period"]["notice"]
    assert [p["reason"] for p in rep["periods"]] == ["first period", "new threshold"]


# --------------------------------------------------------------------------- (e) clearing is recorded

def test_clearing_from_the_command_line_is_recorded(tmp_path, capsys):
    store, ids = scored_store(tmp_path / "store", [HIGH] * 12)
    for sid in ids[:8]:
        decide(store, sid, "disagree", HIGH)
    assert [a.kind for a in report.refresh(store)] == ["disagreement"]
    d = str(tmp_path / "store")
    assert monitor_cli.main(["--store", d, "--clear", "--by", "Dr D"]) == 2          # a reason is required
    assert state.active(store)
    assert monitor_cli.main(["--store", d, "--clear", "--by", "Dr D", "--reason", "new reader onboarding"]) == 0
    assert "Cleared 1 alert" in capsys.readouterr().out
    (a,) = state.history(store)
    assert (a.cleared_by, a.clear_reason) == ("Dr D", "new reader onboarding") and a.cleared_at >= a.since
    assert report.refresh(store) == []                          # the sums restart at the clearing
    for sid in ids[8:12]:
        decide(store, sid, "disagree", HIGH)
    assert report.refresh(store) == []                          # 4 disagreements: not yet h again
    rep = report.build(store, WindowSpec.parse("10"))
    assert rep["stop_rule"]["state"] == "in use" and rep["stop_rule"]["history"][0]["cleared_by"] == \
        state.pseudonym("Dr D")
