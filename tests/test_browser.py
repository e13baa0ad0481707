"""The dashboard in a real browser: the server started as a user starts it, Chromium clicking through it.

What only a browser shows: the pages really load and navigate, the uploader really posts files, the
worklist and the metrics really render, the sidebar slider really re-flags, the Review page really shows
the radiograph beside its Grad-CAM overlay. Screenshots go to test-artifacts/browser/ (gitignored),
as does the server log, so a failing run leaves them for a person to look at.

Run: ``python -m pytest -m browser tests/test_browser.py`` (needs Debian's /usr/bin/chromium and the
``playwright`` Python package; never ``playwright install``). The AppTest versions of the same flows
are in test_dashboard_app.py.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import pytest

from browser_helpers import (ARTIFACTS, CHROMIUM, MODEL_TIMEOUT_MS, RERUN_TIMEOUT_MS, ROOT,
                             THRESHOLD_SLIDER, ServerMessageGate, choose, exceptions, grid_rows, metric,
                             metric_box, parse_float, scoring_seen, screenshot, start_server,
                             stop_server, threshold, wait_grid_rows, wait_idle, watch_for_scoring)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: "
                       "apt-get install -y --no-install-recommends chromium fonts-liberation (make browser)"),
]

SAMPLE = ROOT / "assets" / "sample"
DICOM = SAMPLE / "dicom" / "cr_chest_pa_mono1_j2k.dcm"
NORMAL = sorted((SAMPLE / "kermany" / "NORMAL").glob("*.jpeg"))[:2]
PNEUMONIA = sorted((SAMPLE / "kermany" / "PNEUMONIA").glob("*.jpeg"))[:2]
BROKEN_NAME = "broken.dcm"
WORKLIST_COLUMNS = ("File", "P(pneumonia)", "Unreadable because")


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The dashboard as a user starts it; stopped by PID at the end. Its log: test-artifacts/browser/."""
    store_dir = tmp_path_factory.mktemp("browser") / "store"      # the worklist store, never in the repo
    for stale in ARTIFACTS.glob("FAILED_*.png"):         # evidence of an earlier run only
        stale.unlink()
    srv = start_server(ARTIFACTS / "streamlit_server.log", {"CXR_STORE_DIR": str(store_dir)})
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture
def page(browser, server, request):
    """A fresh browser session (its own Streamlit session). A failing test leaves a screenshot."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(RERUN_TIMEOUT_MS)
    pg = context.new_page()
    failed_before = request.session.testsfailed
    yield pg
    if request.session.testsfailed > failed_before:        # the call phase of this test failed
        try:
            screenshot(pg, f"FAILED_{request.node.name}.png")
        except Exception:                                   # noqa: BLE001 - evidence only
            pass
        print(f"\n--- streamlit server log ({server.log_path}) ---\n{server.log()[-6000:]}")
    context.close()


@pytest.fixture
def batch(tmp_path) -> list[Path]:
    """A real DICOM, real JPEGs of both classes, and a text file named like a DICOM."""
    broken = tmp_path / BROKEN_NAME
    broken.write_text("this is a text file, not a radiograph\n")
    return [DICOM, *NORMAL, *PNEUMONIA, broken]


# --------------------------------------------------------------------------- steps a user takes

def assert_no_exception(page, where: str) -> None:
    assert not exceptions(page), f"Streamlit exception on {where}: {exceptions(page)}"


def open_home(page, server) -> None:
    page.goto(server.url)
    page.get_by_role("heading", name="Chest X-ray pneumonia triage").wait_for(timeout=MODEL_TIMEOUT_MS)
    page.get_by_role("slider", name=THRESHOLD_SLIDER).wait_for()     # the sidebar is drawn
    wait_idle(page, MODEL_TIMEOUT_MS)
    assert_no_exception(page, "Home")


def go_to_triage(page) -> None:
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Triage").click()
    page.get_by_role("heading", name="Triage", exact=True).wait_for()
    page.wait_for_url("**/triage?*")


def upload(page, files: list[Path]) -> None:
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files([str(f) for f in files])
    # The worklist: the metrics with the right file count, then the grid with one row per file.
    metric_box(page, "Files").wait_for(timeout=MODEL_TIMEOUT_MS)
    page.wait_for_function("""n => {
        const m = [...document.querySelectorAll('[data-testid="stMetric"]')]
            .find(e => e.querySelector('[data-testid="stMetricLabel"]')?.innerText.trim() === 'Files');
        return m && m.querySelector('[data-testid="stMetricValue"]').innerText.trim() === String(n);
    }""", arg=len(files), timeout=MODEL_TIMEOUT_MS)
    page.wait_for_function("""n => [...document.querySelectorAll('[data-testid="stDataFrame"] table[role="grid"]')]
        .some(t => t.querySelector('tr')?.textContent.includes('P(pneumonia)')
                   && t.querySelectorAll('tr').length - 1 >= n)""",
                           arg=len(files), timeout=RERUN_TIMEOUT_MS)
    wait_idle(page)


def worklist(page) -> tuple[list[str], list[dict[str, str]]]:
    """The worklist table (the grid whose header has a P(pneumonia) column)."""
    for grid in page.get_by_test_id("stMain").locator('[data-testid="stDataFrame"]').all():
        header, rows = grid_rows(grid)
        if "P(pneumonia)" in header:
            return header, rows
    raise AssertionError("no worklist table on the page")


def counts(page) -> tuple[int, int, int, int]:
    return tuple(int(metric(page, label).replace(",", ""))
                 for label in ("Flagged", "Not flagged", "Unreadable", "Files"))


def wait_reflagged(page, thr: str) -> None:
    """Until the worklist's flag column is headed by the new threshold and the run is over (the metrics
    come before the table in the same run)."""
    page.wait_for_function("""t => [...document.querySelectorAll('[data-testid="stMain"] table[role="grid"] th')]
        .some(th => th.textContent === 'At ' + t)""", arg=thr, timeout=RERUN_TIMEOUT_MS)
    wait_idle(page)


def expected_flagged(probabilities: list[float], thr: float) -> int:
    return sum(p >= thr for p in probabilities)          # the product's flag rule: probability >= threshold


# --------------------------------------------------------------------------- the tests

def test_triage_threshold_and_review_in_a_real_browser(page, server, batch):
    t0 = time.monotonic()
    open_home(page, server)
    go_to_triage(page)
    assert_no_exception(page, "Triage (empty)")

    # ---- upload: a DICOM, 2 NORMAL + 2 PNEUMONIA JPEGs, a broken file
    upload(page, batch)
    t_upload = time.monotonic() - t0
    assert_no_exception(page, "Triage after upload")
    header, rows = worklist(page)
    assert set(WORKLIST_COLUMNS) <= set(header), header
    flag_col = next(h for h in header if h.startswith("At "))
    thr0 = threshold(page)
    assert flag_col == f"At {thr0}", (flag_col, thr0)
    by_file = {r["File"]: r for r in rows}
    assert sorted(by_file) == sorted(f.name for f in batch), f"worklist files {sorted(by_file)}"
    bad = by_file[BROKEN_NAME]
    assert bad[flag_col] == "unreadable"
    assert bad["Unreadable because"].startswith(f"{BROKEN_NAME}:")
    assert "not a DICOM, JPEG or PNG" in bad["Unreadable because"], bad
    good = {name: r for name, r in by_file.items() if name != BROKEN_NAME}
    probs = {name: parse_float(r["P(pneumonia)"]) for name, r in good.items()}
    assert all(p is not None and 0.0 <= p <= 1.0 for p in probs.values()), probs
    assert [r["File"] for r in rows][:len(good)] == sorted(good, key=lambda n: -probs[n]), \
        "scored studies first, highest probability first"
    for name, r in good.items():
        assert r[flag_col] == ("FLAGGED" if probs[name] >= float(thr0) else "not flagged"), r
    flagged, not_flagged, unreadable, files = counts(page)
    assert (unreadable, files) == (1, len(batch))
    assert flagged + not_flagged + unreadable == files == len(batch)
    assert flagged == expected_flagged(list(probs.values()), float(thr0))
    # the unreadable file again, with its reason, under "could not be scored"
    expander = page.get_by_test_id("stExpander").filter(has_text="1 file could not be scored")
    expander.wait_for()
    bad_grid = expander.locator('[data-testid="stDataFrame"]')
    wait_grid_rows(bad_grid, 1)
    _, bad_rows = grid_rows(bad_grid)
    assert [r["File"] for r in bad_rows] == [BROKEN_NAME]
    assert "not a DICOM, JPEG or PNG" in bad_rows[0]["Reason"], bad_rows
    # the worklist CSV as the browser downloads it (made on click, outside the script run): one row per file
    with page.expect_download(timeout=MODEL_TIMEOUT_MS) as download:
        page.get_by_role("button", name="Download worklist CSV").click()
    exported = {r["file"]: r for r in csv.DictReader(io.StringIO(Path(download.value.path()).read_text()))}
    assert sorted(exported) == sorted(f.name for f in batch)
    assert exported[BROKEN_NAME]["status"] == "error" and exported[BROKEN_NAME]["probability"] == ""
    for name, p in probs.items():
        assert float(exported[name]["probability"]) == pytest.approx(p, abs=5e-4)   # the grid shows 3 decimals
        assert exported[name]["flagged"] == ("yes" if good[name][flag_col] == "FLAGGED" else "no"), name
    assert server.proc.poll() is None, "the server went down"
    shot_upload = screenshot(page, "01_triage_after_upload.png")

    # ---- the sidebar threshold: re-flags the worklist without scoring anything again
    watch_for_scoring(page)
    slider = page.get_by_role("slider", name=THRESHOLD_SLIDER)
    assert (slider.get_attribute("min"), slider.get_attribute("max"), slider.get_attribute("step")) == \
        ("0", "1", "0.001")
    readable = len(good)
    timings = {}

    def move(*keys: str) -> tuple[str, int, int]:
        """Press keys on the focused slider, one rerun at a time; check the re-flagged counts."""
        before = counts(page)
        start = time.monotonic()
        for key in keys:
            slider.focus()
            slider.press(key)
            wait_reflagged(page, threshold(page))
        thr = threshold(page)
        timings["+".join(keys)] = round(time.monotonic() - start, 2)
        f, nf, u, n = counts(page)
        assert (u, n) == before[2:], "the threshold changed which files are readable"
        assert f + nf == readable
        assert f == expected_flagged(list(probs.values()), float(thr)), (thr, f, probs)
        _, now = worklist(page)
        assert sum(r[f"At {thr}"] == "FLAGGED" for r in now) == f
        assert_no_exception(page, f"Triage after {keys}")
        return thr, f, nf

    thr, f_up, _ = move("ArrowRight", "ArrowRight", "ArrowRight")     # a hair up: never more flagged
    assert thr == f"{float(thr0) + 0.003:.3f}" and f_up <= flagged
    thr, f_end, nf_end = move("End")                                   # threshold 1.000
    assert thr == "1.000"
    assert f_end == sum(p >= 1.0 for p in probs.values()) and f_end <= f_up
    thr, f_home, nf_home = move("Home")                                # threshold 0.000: every study
    assert thr == "0.000" and (f_home, nf_home) == (readable, 0)
    assert scoring_seen(page) == [], "moving the threshold scored files again"
    shot_threshold = screenshot(page, "02_triage_threshold_0.png")

    # ---- Review: open the DICOM from the Triage page, as the UI offers
    choose(page, "Open a study in Review (or select a row above)", DICOM.name)
    page.get_by_role("button", name="Open in Review").click()
    page.get_by_role("heading", name="Review", exact=True).wait_for()
    page.wait_for_url("**/review?*")
    viewer = page.locator('[data-testid="cxrWindowViewer"]')
    page.locator('[data-testid="cxrWindowViewer"][data-ready]').wait_for(timeout=MODEL_TIMEOUT_MS)  # Grad-CAM ran
    wait_idle(page, MODEL_TIMEOUT_MS)
    assert_no_exception(page, "Review")
    assert DICOM.name in page.get_by_role("combobox", name="Study").input_value()
    original, overlay = page.get_by_label("Radiograph", exact=True), page.get_by_label("Heatmap overlay")
    for canvas in (original, overlay):
        w, h = canvas.evaluate("c => [c.width, c.height]")
        assert w > 0 and h > 0
    a, b = original.bounding_box(), overlay.bounding_box()
    assert abs(a["y"] - b["y"]) < 5 and b["x"] >= a["x"] + 0.9 * a["width"], ("not side by side", a, b)
    assert a["width"] > 200 and b["width"] > 200, (a, b)
    assert f"{DICOM.name} (WC 15000 / WW 30000)" in viewer.inner_text()
    assert "Grad-CAM overlay" in viewer.inner_text()
    agree = page.get_by_role("button", name="Agree Shortcut A")
    assert agree.bounding_box()["y"] < a["y"] and a["y"] + a["height"] <= 900, \
        ("the decision and the images are not in one screen", agree.bounding_box(), a)

    # ---- window/level: arrow keys on the width slider redraw in the browser, without a rerun
    page.evaluate("""() => {
        const app = document.querySelector('[data-testid="stApp"]');
        window.__runs = 0;
        new MutationObserver(() => { if (app.dataset.testScriptState === 'running') window.__runs++; })
            .observe(app, {attributes: true});
    }""")
    centre = "c => Array.from(c.getContext('2d').getImageData(c.width / 2, c.height / 2, 1, 1).data)"
    before = original.evaluate(centre)
    width = page.get_by_label("Window width", exact=True)
    width.focus()
    for _ in range(20):
        width.press("ArrowLeft")
    page.locator('[data-testid="cxrWindowViewer"][data-window="15000/29800"]').wait_for()   # 20 steps of 10
    assert original.evaluate(centre) != before, "the window moved but the image did not change"
    assert page.evaluate("window.__runs") == 0, "a window step reran the page"
    assert_no_exception(page, "Review (window/level)")

    p = probs[DICOM.name]
    shown_thr = threshold(page)
    verdict = "FLAGGED" if p >= float(shown_thr) else "not flagged"
    status = page.get_by_test_id("stMain").get_by_test_id("stMarkdown").filter(has_text="P(pneumonia)").inner_text()
    assert status.startswith(f"P(pneumonia) {p:.3f}") and shown_thr in status and verdict in status, status
    assert f"({p - float(shown_thr):+.3f} vs threshold)" in status, status
    shot_review = screenshot(page, "03_review.png")
    assert_no_exception(page, "Review (after the screenshot)")

    for shot in (shot_upload, shot_threshold, shot_review):
        assert shot.stat().st_size > 10_000, shot
    print(f"\nupload+score {t_upload:.1f} s; re-flag (s) {timings}; total {time.monotonic() - t0:.1f} s; "
          f"screenshots in {ARTIFACTS}")


def test_the_threshold_set_on_triage_holds_on_review(page, server):
    open_home(page, server)
    go_to_triage(page)
    upload(page, [DICOM, NORMAL[0]])
    slider = page.get_by_role("slider", name=THRESHOLD_SLIDER)
    slider.focus()
    slider.press("End")
    wait_reflagged(page, "1.000")
    choose(page, "Open a study in Review (or select a row above)", DICOM.name)
    page.get_by_role("button", name="Open in Review").click()
    page.get_by_role("heading", name="Review", exact=True).wait_for()
    status = page.get_by_test_id("stMain").get_by_test_id("stMarkdown").filter(has_text="P(pneumonia)")
    status.wait_for(timeout=MODEL_TIMEOUT_MS)
    wait_idle(page, MODEL_TIMEOUT_MS)
    assert_no_exception(page, "Review")
    assert "operating point Custom (slider) — 1.000" in status.inner_text() and threshold(page) == "1.000"


def test_two_quick_slider_moves_keep_the_slider_value(page, server):
    gate = ServerMessageGate(page)                     # before the page connects
    open_home(page, server)
    go_to_triage(page)
    upload(page, [NORMAL[0]])
    slider = page.get_by_role("slider", name=THRESHOLD_SLIDER)
    start = float(threshold(page))
    slider.focus()
    gate.close()
    slider.press("ArrowRight")                         # run 1: the server sets the preset to Custom ...
    gate.wait_held(THRESHOLD_SLIDER.encode())          # ... and has drawn the sidebar, not yet shown here
    slider.press("ArrowRight")                         # run 2, sent with the preset this page still shows
    gate.open()
    page.wait_for_function("""first => {
        const shown = document.querySelector('input[type="range"]')?.getAttribute('aria-valuetext');
        const head = [...document.querySelectorAll('[data-testid="stMain"] table[role="grid"] th')]
            .map(th => th.textContent).find(t => t.startsWith('At '));
        return shown && head === 'At ' + shown && head !== 'At ' + first;   // run 2 is on the page
    }""", arg=f"{start + 0.001:.3f}")
    wait_idle(page)
    assert_no_exception(page, "Triage")
    assert threshold(page) == f"{start + 0.002:.3f}"
    assert page.get_by_role("combobox", name="Operating point").input_value() == "Custom (slider)"
