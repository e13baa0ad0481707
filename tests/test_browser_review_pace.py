"""Review at a reader's pace in a real browser: every keyboard decision lands on the study on screen.

A scripted reader opens Review with every study flagged, and presses D, A, D, A, D, each key 300 ms
after the next study's name appears (not after the page has finished its run: a reader does not wait
for that). The store is then read directly: five decisions on the five studies that were shown, each
the key pressed on it, none overwritten.
"""

from __future__ import annotations

import sqlite3

import pytest

from browser_helpers import ARTIFACTS, CHROMIUM, MODEL_TIMEOUT_MS, RERUN_TIMEOUT_MS, screenshot, start_server, \
    stop_server, wait_idle
from helpers import NORMAL, PNEUMONIA
from test_browser import go_to_triage, open_home, upload

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (make browser)"),
]

READER_DELAY_MS = 300


def shown_study(page) -> str:
    """The file name of the study on screen, as the Review selector shows it ("name — 0.993 ⚑")."""
    return page.get_by_role("combobox", name="Study").input_value().split(" — ")[0]


def wait_for_next_study(page, previous: str) -> str:
    page.wait_for_function("""prev => {
        const box = [...document.querySelectorAll('input[role="combobox"]')]
            .find(i => i.getAttribute('aria-label') === 'Study');
        return box && box.value.split(' — ')[0] !== prev;
    }""", arg=previous, timeout=MODEL_TIMEOUT_MS)
    return shown_study(page)


def test_five_keyboard_decisions_at_reading_pace_land_on_the_five_studies_shown(browser, tmp_path):
    store_dir = tmp_path / "store"
    server = start_server(ARTIFACTS / "streamlit_review_pace.log", {"CXR_STORE_DIR": str(store_dir)})
    try:
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        context.set_default_timeout(RERUN_TIMEOUT_MS)
        page = context.new_page()
        open_home(page, server)
        go_to_triage(page)
        upload(page, NORMAL[:3] + PNEUMONIA[:4])
        slider = page.get_by_role("slider", name="Threshold (flag when probability ≥ threshold)")
        slider.focus()
        slider.press("Home")                                    # threshold 0: every study is flagged
        wait_idle(page)
        page.get_by_role("button", name="Open in Review").click()
        page.wait_for_url("**/review?*")
        # The reviewer is asked for before the first decision: the buttons wait for a name.
        name_box = page.get_by_label("Your name, recorded with each decision (asked once for this worklist)")
        name_box.wait_for(timeout=MODEL_TIMEOUT_MS)
        assert page.get_by_role("button", name="Agree Shortcut A").is_disabled()
        name_box.fill("Dr A. Reader")
        name_box.press("Enter")
        page.get_by_role("button", name="Agree Shortcut A").and_(
            page.locator("button:not([disabled])")).wait_for(timeout=MODEL_TIMEOUT_MS)
        wait_idle(page, MODEL_TIMEOUT_MS)
        page.evaluate("document.activeElement && document.activeElement.blur()")   # out of any input

        pressed: list[tuple[str, str]] = []
        study = shown_study(page)
        for i, key in enumerate("dadad"):
            if i:
                study = wait_for_next_study(page, study)
                page.wait_for_timeout(READER_DELAY_MS)           # the reader's pace, not the page's
            pressed.append((study, "disagree" if key == "d" else "agree"))
            page.keyboard.press(key)
        wait_idle(page, MODEL_TIMEOUT_MS)
        screenshot(page, "review_pace_after_five_keys.png")
        assert not page.locator('[data-testid="stException"]').all_inner_texts()
    finally:
        stop_server(server)

    with sqlite3.connect(store_dir / "store.sqlite3") as con:
        rows = con.execute("SELECT s.name, d.decision, d.replaces, d.reviewer FROM decisions d "
                           "JOIN studies s ON s.id = d.study_id ORDER BY d.id").fetchall()
    decided = [(name.rsplit("/", 1)[-1], decision) for name, decision, _, _ in rows]
    assert len({name for name, _ in pressed}) == 5, pressed            # five different studies were shown
    assert decided == pressed, f"pressed on screen: {pressed}\nrecorded: {decided}"
    assert all(replaces is None for _, _, replaces, _ in rows), "a decision was overwritten"
    assert {reviewer for *_, reviewer in rows} == {"Dr A. Reader"}
