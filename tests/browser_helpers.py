"""Helpers for the real-browser tests (tests/test_browser.py): the server, Chromium, and reading the page.

The dashboard runs as a user starts it (``python -m streamlit run dashboard/Home.py``) and Debian's
Chromium drives it through Playwright. Playwright never downloads a browser here
(``playwright install`` fails): it launches ``/usr/bin/chromium``. See docs/TESTING.md.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "browser"          # gitignored; a failing run leaves its evidence here
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run"]
THRESHOLD_SLIDER = "Threshold (flag when probability ≥ threshold)"
MODEL_TIMEOUT_MS = 120_000       # the first prediction imports torch and loads the model (slow on a busy machine)
RERUN_TIMEOUT_MS = 30_000        # a rerun that only re-flags


# --------------------------------------------------------------------------- the server

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def start_server(log_path: Path, env_extra: dict[str, str], timeout_s: float = 90.0) -> Server:
    """``streamlit run dashboard/Home.py`` on a free port from the project root; wait for its health check."""
    port = free_port()
    env = {**os.environ, **env_extra, "PYTHONUNBUFFERED": "1"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")
    cmd = [sys.executable, "-m", "streamlit", "run", "dashboard/Home.py", "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true",
           "--browser.gatherUsageStats", "false"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()                   # the child keeps its own handle
    server = Server(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode} before answering:\n{server.log()}")
        try:
            with urllib.request.urlopen(f"{server.url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            stop_server(server)
            raise RuntimeError(f"streamlit did not answer {server.url}/_stcore/health within "
                               f"{timeout_s:.0f} s:\n{server.log()}")
        time.sleep(0.5)


def stop_server(server: Server) -> None:
    """Stop the server by its PID: terminate, then kill if it does not exit."""
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=15)


# --------------------------------------------------------------------------- reading the page

def screenshot(page, name: str) -> Path:
    """A full-page PNG in test-artifacts/browser/: the viewport grows to the main area's scroll height
    first (Streamlit scrolls inside [data-testid="stMain"], so full_page alone shows one screen)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size or {"width": 1400, "height": 900}
    height = page.locator('[data-testid="stMain"]').evaluate("e => e.scrollHeight")
    page.set_viewport_size({"width": size["width"], "height": max(int(height), size["height"])})
    page.wait_for_timeout(300)    # one layout pass at the new size (the grid redraws its canvas)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)
    return path


def wait_idle(page, timeout_ms: int = RERUN_TIMEOUT_MS) -> None:
    """Until the script run is over (the app root says so) — call after the change is visible."""
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(
        state="attached", timeout=timeout_ms)


def exceptions(page) -> list[str]:
    return page.locator('[data-testid="stException"]').all_inner_texts()


def metric_box(page, label: str):
    """The st.metric in the main area whose label is exactly ``label``."""
    return page.locator('[data-testid="stMain"] [data-testid="stMetric"]').filter(
        has=page.locator('[data-testid="stMetricLabel"]', has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")))


def metric(page, label: str) -> str:
    return metric_box(page, label).locator('[data-testid="stMetricValue"]').inner_text().strip()


def metric_delta(page, label: str) -> str:
    return metric_box(page, label).locator('[data-testid="stMetricDelta"]').inner_text().strip()


def grid_rows(grid) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of an st.dataframe, read from the accessible table that glide-data-grid keeps
    inside its canvas (the pixels themselves are not readable). Row values are strings."""
    table = grid.evaluate("""g => Array.from(g.querySelectorAll('table[role="grid"] tr'))
        .map(tr => Array.from(tr.querySelectorAll('th, td')).map(c => c.textContent))""")
    if not table:
        return [], []
    header, body = table[0], table[1:]
    return header, [dict(zip(header, r)) for r in body]


def wait_grid_rows(grid, n: int, timeout_ms: int = RERUN_TIMEOUT_MS) -> None:
    """Until the grid's accessible table holds ``n`` data rows (it is filled after the canvas draws)."""
    grid.locator('table[role="grid"] tr').nth(n).wait_for(state="attached", timeout=timeout_ms)


def threshold(page) -> str:
    """The sidebar slider's value as it shows it (``"0.483"``)."""
    return page.get_by_role("slider", name=THRESHOLD_SLIDER).get_attribute("aria-valuetext")


def choose(page, combobox_name: str, option: str, timeout_ms: int = RERUN_TIMEOUT_MS) -> None:
    """Pick ``option`` in the st.selectbox labelled ``combobox_name`` as a user does: open, click."""
    box = page.get_by_role("combobox", name=combobox_name)
    deadline = time.monotonic() + timeout_ms / 1000
    while box.get_attribute("aria-expanded") != "true":      # a click can land during a rerun
        if time.monotonic() > deadline:
            raise AssertionError(f"the select box {combobox_name!r} does not open")
        box.click()
        try:
            page.get_by_role("listbox").wait_for(timeout=2_000)
        except Exception:                                     # noqa: BLE001 - retry the click
            pass
    page.get_by_role("option", name=option, exact=True).click()


WATCH_SCORING_JS = """() => {
    window.__scoringSeen = [];
    const look = () => {
        for (const el of document.querySelectorAll('[data-testid="stProgress"]')) {
            window.__scoringSeen.push(el.innerText);
        }
    };
    window.__scoringObserver = new MutationObserver(look);
    window.__scoringObserver.observe(document.body, {childList: true, subtree: true});
}"""


def watch_for_scoring(page) -> None:
    """Record every progress bar ("Reading and scoring new files") the page shows from now on."""
    page.evaluate(WATCH_SCORING_JS)


def scoring_seen(page) -> list[str]:
    return page.evaluate("() => window.__scoringSeen || []")


def parse_float(text: Optional[str]) -> Optional[float]:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


class ServerMessageGate:
    """Holds the server's websocket messages to the page while closed, then delivers them in order.

    Makes a race between a script run and the next user input deterministic: the browser keeps
    showing the previous run while the server has already run the next one. Install before goto.
    """

    def __init__(self, page, url_glob: str = "**/_stcore/stream"):
        self.page = page
        self.closed = False
        self.held: list = []
        self._to_page = None
        page.route_web_socket(url_glob, self._route)

    def _route(self, ws) -> None:
        server = ws.connect_to_server()              # page -> server: forwarded as is
        self._to_page = ws

        def from_server(message) -> None:
            if self.closed:
                self.held.append(message)
            else:
                ws.send(message)

        server.on_message(from_server)

    def close(self) -> None:
        self.closed = True

    def open(self) -> None:
        self.closed = False
        held, self.held = self.held, []
        for message in held:
            self._to_page.send(message)

    def wait_held(self, needle: bytes, timeout_ms: int = RERUN_TIMEOUT_MS) -> None:
        """Until a held server message contains ``needle`` (the server's run got that far)."""
        deadline = time.monotonic() + timeout_ms / 1000
        while not any(needle in (m if isinstance(m, bytes) else m.encode()) for m in self.held):
            if time.monotonic() > deadline:
                raise AssertionError(f"the server sent nothing with {needle!r} within {timeout_ms} ms")
            self.page.wait_for_timeout(50)           # lets Playwright dispatch the route's events
