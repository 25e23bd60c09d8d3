"""Make the dashboard screenshots in docs/: a demo ledger whose jobs finished over the last day,
``ledger serve`` over it, and headless chromium (Playwright, Debian's /usr/bin/chromium).

    python docs/make_screenshots.py        # writes docs/dashboard-*.png
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from playwright.sync_api import sync_playwright

from ledger import Ledger

DOCS = Path(__file__).parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def build(path: str) -> str:
    """Jobs of three queues finishing over the last 24 hours; a few failed, some running."""
    rng = random.Random(14)
    clock = Clock(datetime.now(UTC) - timedelta(hours=24))
    failed_id = ""
    with Ledger(path, clock=clock) as ledger:
        for i in range(160):
            queue = rng.choice(["llm", "llm", "email", "reports"])
            chat = rng.choice([101, 102, 103, 204])
            job_id = ledger.create_job(chat, {"task": f"{queue}-{i}", "n": i}, queue=queue)
            clock.now += timedelta(seconds=rng.uniform(5, 60))
            ledger.claim(f"worker-{rng.randint(1, 3)}", queues=[queue])
            clock.now += timedelta(seconds=rng.uniform(2, 90))
            if rng.random() < 0.1:
                ledger.log_event(
                    job_id,
                    "error",
                    {
                        "message": "upstream timed out",
                        "traceback": "Traceback (most recent call "
                        'last):\n  File "handler.py", line 12\n'
                        "TimeoutError: upstream timed out",
                    },
                )
                ledger.fail(job_id, "TimeoutError: upstream timed out", retry=False)
                failed_id = job_id
            else:
                ledger.log_event(job_id, "progress", {"step": "drafting", "percent": 50})
                ledger.complete(job_id, f"answered {queue} request {i}",
                                cost_cents=round(rng.uniform(0.2, 9), 2))  # fmt: skip
            clock.now += timedelta(seconds=rng.uniform(380, 560))
        clock.now = datetime.now(UTC) - timedelta(minutes=3)
        for i in range(3):
            ledger.create_job(101, {"task": f"long-{i}"}, queue="llm")
            ledger.claim(f"worker-{i + 1}", queues=["llm"], lease=600)
        for i in range(6):
            ledger.create_job(204, {"task": f"waiting-{i}", "note": "<script>x</script>"},
                              queue=rng.choice(["email", "reports"]))  # fmt: skip
        assert ledger.verify().ok
    return failed_id


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "demo.db")
        failed = build(db)
        port = 8471
        server = subprocess.Popen([sys.executable, "-m", "ledger", "serve", "--db", db,
                                   "--port", str(port)])  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    urllib.request.urlopen(url + "/metrics", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                page = browser.new_page(viewport={"width": 1200, "height": 800})
                pages = {"overview": "/", "jobs": "/jobs?queue=llm", "job": f"/jobs/{failed}",
                         "chat": "/chats/101", "workers": "/workers"}  # fmt: skip
                for name, path in pages.items():
                    page.goto(url + path)
                    page.screenshot(
                        path=str(DOCS / f"dashboard-{name}.png"), full_page=name == "job"
                    )
                browser.close()
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
