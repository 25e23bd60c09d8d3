"""The dashboard in a real headless browser (Debian's chromium driven by Playwright): every page
renders against a real ledger served by ``ledger serve`` in its own process, a job created by
another process appears without a reload, and an action without the token is refused.

Skipped, with the reason, only when chromium or Playwright cannot start here. With
``LEDGER_SCREENSHOTS=DIR`` the page test also saves a screenshot of each page into DIR (the
README's pictures in ``docs/`` are made that way, from ``docs/make_screenshots.py``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger import Ledger
from tests.web.conftest import EVIL, TOKEN, Populated

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
WAIT_MS = 15_000  # the longest any expectation waits (a deadline, not a sleep)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install playwright; no browser download)")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    manager = sync_playwright().start()
    try:
        launched = manager.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    except Exception as e:  # the browser cannot start on this machine: say why
        manager.stop()
        pytest.skip(f"chromium does not start under Playwright here: {e}")
    yield launched
    launched.close()
    manager.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``ledger serve`` in a process of its own, on a free port of 127.0.0.1."""

    def __init__(self, db: str, *, allow_actions: bool) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "ledger", "serve", "--db", db, "--port", str(self.port)]
        if allow_actions:
            command.append("--allow-actions")
        env = {**os.environ, "LEDGER_WEB_TOKEN": TOKEN}
        self.process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while True:  # poll until it answers (or died, or the deadline passed)
            if self.process.poll() is not None:
                raise AssertionError(f"ledger serve exited: {self.process.stderr.read()}")  # type: ignore[union-attr]
            try:
                with urllib.request.urlopen(self.url + "/metrics", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()


@pytest.fixture
def serve(populated: Populated) -> Iterator[Any]:
    started: list[Server] = []

    def start(*, allow_actions: bool = False) -> Server:
        server = Server(populated.path, allow_actions=allow_actions)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    with Ledger(populated.path, readonly=True) as ledger:
        assert ledger.verify().ok


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    dialogs: list[str] = []
    opened.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    opened.dialogs = dialogs
    yield opened
    context.close()


def test_every_page_renders(serve: Any, page: Any, populated: Populated) -> None:
    server = serve()
    shots = os.environ.get("LEDGER_SCREENSHOTS")
    visits = {
        "overview": ("/", "Overview", "Jobs by queue and status"),
        "jobs": ("/jobs", "Jobs", populated.completed[:8]),
        "job": (f"/jobs/{populated.failed}", f"Job {populated.failed[:8]}", "ValueError: boom"),
        "job-evil": (f"/jobs/{populated.evil}", f"Job {populated.evil[:8]}", EVIL),
        "chat": ("/chats/7", "Chat 7", "12.50 cents"),
        "workers": ("/workers", "Workers", "worker-b"),
    }
    for name, (path, heading, text) in visits.items():
        answer = page.goto(server.url + path)
        assert answer is not None and answer.status == 200, path
        assert page.locator("h1").inner_text() == heading
        assert text in page.locator("main").inner_text(), path
        if shots:
            page.screenshot(path=str(Path(shots) / f"dashboard-{name}.png"), full_page=True)
    assert page.dialogs == []  # the config's <script> was shown as text, never run
    missing = page.goto(server.url + "/jobs/no-such-job")
    assert missing is not None and missing.status == 404
    bad = page.goto(server.url + "/jobs?status=sleeping")
    assert bad is not None and bad.status == 400
    assert "unknown status" in page.locator("#error-message").inner_text()


def test_a_job_created_by_another_process_appears_without_a_reload(
    serve: Any, page: Any, populated: Populated
) -> None:
    server = serve()
    page.goto(server.url + "/jobs")
    page.wait_for_selector("body[data-live=connected]")
    page.evaluate("window.__sameDocument = true")
    code = (
        "from ledger import Ledger\n"
        f"with Ledger({populated.path!r}) as l: l.create_job(5, {{'task': 'from-elsewhere'}})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    page.wait_for_selector("text=from-elsewhere")  # fails after WAIT_MS if it never comes
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    assert int(page.get_attribute("body", "data-live-updates")) >= 1


def test_an_action_without_the_token_is_refused(
    serve: Any, page: Any, populated: Populated
) -> None:
    server = serve(allow_actions=True)
    with Ledger(populated.path, readonly=True) as ledger:
        before = ledger.last_position()
    page.goto(f"{server.url}/jobs/{populated.pending}")
    form = page.locator("#cancel-form")
    form.locator("input[name=by]").fill("mallory")
    with page.expect_navigation():
        form.locator("button").click()
    assert "Nothing was written" in page.locator("#error-message").inner_text()
    with Ledger(populated.path, readonly=True) as ledger:
        assert ledger.last_position() == before
        job = ledger.get_job(populated.pending)
        assert job is not None and job.status.value == "pending"
    page.goto(f"{server.url}/jobs/{populated.pending}")  # with the token it goes through
    form = page.locator("#cancel-form")
    form.locator("input[name=by]").fill("alice")
    form.locator("input[name=token]").fill(TOKEN)
    with page.expect_navigation():
        form.locator("button").click()
    assert page.locator("#job-status").inner_text() == "cancelled"
    assert "web:alice" in page.locator("main").inner_text()
