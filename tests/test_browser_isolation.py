"""A file that aborts its decoder, uploaded in a real browser, costs that file only.

Before decoding moved to worker processes, one crafted JPEG Lossless DICOM (Bits Allocated 32) made
GDCM abort the Streamlit server: every user's session showed "Connection error". Here the server runs
as a user starts it, with the header checks that would refuse that file first switched off
(``CXR_UNSAFE_SKIP_STREAM_CHECKS=1``), so GDCM really aborts, in a decoding worker. Two browser
sessions: one uploads the crafted file among good ones, the other keeps working.
"""

from __future__ import annotations

import urllib.request

import pytest

import hostile_corpus as hostile
from browser_helpers import (ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, RERUN_TIMEOUT_MS, screenshot, start_server,
                             stop_server)
from helpers import NORMAL, PNEUMONIA
from test_browser import counts, go_to_triage, open_home, upload, worklist

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (make browser)"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("isolation")
    srv = start_server(ARTIFACTS / "streamlit_isolation.log",
                       {"CXR_STORE_DIR": str(folder / "store"),
                        "CXR_UNSAFE_SKIP_STREAM_CHECKS": "1"})
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    path = tmp_path_factory.mktemp("crafted") / "crafted.dcm"
    path.write_bytes(hostile.lossless_bits_allocated_32())
    return path


def test_an_aborting_decoder_costs_one_file_and_no_session(server, crafted):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            pages = []
            for _ in range(2):
                context = browser.new_context(viewport={"width": 1400, "height": 900})
                context.set_default_timeout(RERUN_TIMEOUT_MS)
                page = context.new_page()
                open_home(page, server)
                go_to_triage(page)
                pages.append(page)
            alice, bob = pages
            upload(bob, [NORMAL[0]])                                   # another user, mid-session

            upload(alice, [crafted, NORMAL[1], PNEUMONIA[0]])
            _, rows = worklist(alice)
            by_file = {r["File"]: r for r in rows}
            assert sorted(by_file) == sorted(["crafted.dcm", NORMAL[1].name, PNEUMONIA[0].name])
            reason = by_file["crafted.dcm"]["Unreadable because"]
            assert "the JPEG Lossless decoder (GDCM) crashed on this file (SIGABRT)" in reason, reason
            assert counts(alice)[2:] == (1, 3)                         # unreadable, files
            screenshot(alice, "isolation_01_crafted_upload.png")

            assert server.proc.poll() is None, "the server process died"
            with urllib.request.urlopen(f"{server.url}/_stcore/health", timeout=5) as r:
                assert r.status == 200
            assert "Connection error" not in bob.content()
            upload(bob, [NORMAL[0], PNEUMONIA[1]])                     # the other session still works
            assert counts(bob)[3] == 2
            upload(alice, [crafted, NORMAL[1], PNEUMONIA[0], PNEUMONIA[2]])   # new content decodes: the
            assert counts(alice)[2:] == (1, 4)                                # worker was replaced
            screenshot(bob, "isolation_02_other_session.png")
        finally:
            browser.close()
