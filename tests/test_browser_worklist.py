"""The worklist in a real browser: it survives a reload and a server restart, users are apart, and a
reviewer works through it with the keyboard.

The server runs as a user starts it, on a worklist store in a temporary folder; it is stopped by its
PID and started again on the same store to show what a restart keeps.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest

from browser_helpers import (ARTIFACTS, CHROMIUM, MODEL_TIMEOUT_MS, RERUN_TIMEOUT_MS, screenshot,
                             start_server, stop_server, wait_idle)
from helpers import DICOMS, NORMAL, PNEUMONIA
from test_browser import counts, go_to_triage, open_home, upload, worklist

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (make browser)"),
]


def new_page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.set_default_timeout(RERUN_TIMEOUT_MS)
    return context.new_page()


def token_of(page) -> str:
    return parse_qs(urlparse(page.url).query)["w"][0]


def wait_worklist(page, n: int) -> None:
    """Until the worklist grid (header with P(pneumonia)) shows at least ``n`` rows."""
    page.wait_for_function("""n => [...document.querySelectorAll('[data-testid="stDataFrame"] table[role="grid"]')]
        .some(t => t.querySelector('tr')?.textContent.includes('P(pneumonia)')
                   && t.querySelectorAll('tr').length - 1 >= n)""", arg=n, timeout=MODEL_TIMEOUT_MS)


def review_column(page) -> dict[str, str]:
    _, rows = worklist(page)
    return {r["File"]: r["Review"] for r in rows}


def test_reload_restart_two_users_and_keyboard_review(browser, tmp_path):
    store_dir = tmp_path / "store"
    server = start_server(ARTIFACTS / "streamlit_worklist.log", {"CXR_STORE_DIR": str(store_dir)})
    try:
        alice = new_page(browser)
        open_home(alice, server)
        go_to_triage(alice)
        files = [NORMAL[0], PNEUMONIA[0], PNEUMONIA[1], DICOMS[1]]
        upload(alice, files)
        token = token_of(alice)
        assert len(token) >= 20
        # The uploads went through the server's disk spool (not its memory) and left it once stored.
        spool = store_dir / "spool"
        assert spool.is_dir() and [p.name for p in spool.iterdir()] == [str(server.proc.pid)]
        assert not [p for p in spool.rglob("*") if p.is_file()], "uploaded files left in the spool"

        alice.reload()                                               # a reload keeps the worklist
        alice.get_by_role("heading", name="Triage", exact=True).wait_for(timeout=MODEL_TIMEOUT_MS)
        wait_idle(alice, MODEL_TIMEOUT_MS)
        assert counts(alice)[3] == len(files) and token_of(alice) == token

        bob = new_page(browser)                                      # another user: his own, empty worklist
        open_home(bob, server)
        go_to_triage(bob)
        bob.get_by_text("Upload files to build a worklist").wait_for()
        assert token_of(bob) != token

        # Review with the keyboard: set the reviewer, open the top study with one click on its row,
        # then A (agree) records and moves on to the next unreviewed flagged study.
        name_box = alice.get_by_label("Reviewer name (recorded with your decisions)")
        name_box.fill("Dr A. Reader")
        name_box.press("Enter")
        wait_idle(alice)
        slider = alice.get_by_role("slider", name="Threshold (flag when probability ≥ threshold)")
        slider.focus()
        slider.press("Home")                                         # threshold 0: every study flagged
        wait_idle(alice)
        alice.get_by_role("combobox", name="Open a study in Review (or select a row above)").wait_for()
        alice.get_by_role("button", name="Open in Review").click()
        alice.wait_for_url("**/review?*")
        alice.get_by_role("button", name="Agree Shortcut A").wait_for(timeout=MODEL_TIMEOUT_MS)
        wait_idle(alice, MODEL_TIMEOUT_MS)
        first = alice.get_by_role("combobox", name="Study").input_value()
        alice.evaluate("document.activeElement && document.activeElement.blur()")   # out of any input
        alice.keyboard.press("a")
        wait_idle(alice, MODEL_TIMEOUT_MS)
        alice.get_by_text("Decision recorded: agree").wait_for()
        second = alice.get_by_role("combobox", name="Study").input_value()
        assert second != first, "recording did not move on to the next study"
        alice.keyboard.press("d")
        wait_idle(alice, MODEL_TIMEOUT_MS)
        alice.get_by_text("Decision recorded: disagree").wait_for()
        screenshot(alice, "worklist_01_review_1440x900.png")
        for button in ("Agree Shortcut A", "Disagree Shortcut D"):                         # the decision is in view at 1440x900
            box = alice.get_by_role("button", name=button).bounding_box()
            assert box and box["y"] + box["height"] <= 900, (button, box)
        # Full resolution with linked zoom: both views drawn by the browser from lossless PNGs.
        alice.locator('[data-testid="stExpander"] summary', has_text="Display").click()
        alice.get_by_text("Full resolution, linked zoom and pan").click()
        wait_idle(alice, MODEL_TIMEOUT_MS)
        alice.get_by_text("both views move together").wait_for(timeout=MODEL_TIMEOUT_MS)   # the server drew it
        alice.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
        alice.wait_for_function("""() => [...document.querySelectorAll('.js-plotly-plot image')]
            .filter(i => (i.getAttribute('href') || '').startsWith('data:image/png')).length == 2""",
                                timeout=MODEL_TIMEOUT_MS)
        screenshot(alice, "worklist_01b_linked_full_resolution.png")
    finally:
        stop_server(server)

    server = start_server(ARTIFACTS / "streamlit_worklist_restart.log", {"CXR_STORE_DIR": str(store_dir)})
    try:
        again = new_page(browser)
        again.goto(f"{server.url}/triage?w={token}")                 # the same link, after a restart
        again.get_by_role("heading", name="Triage", exact=True).wait_for(timeout=MODEL_TIMEOUT_MS)
        wait_idle(again, MODEL_TIMEOUT_MS)
        assert counts(again)[3] == len(files)
        again.get_by_text("One row per study").click()                # one row per image, to read each
        wait_idle(again)
        wait_worklist(again, len(files))
        reviews = review_column(again)
        assert sorted(reviews.values()) == ["agreed", "disagreed", "unreviewed", "unreviewed"], reviews
        screenshot(again, "worklist_02_after_restart.png")
    finally:
        stop_server(server)
