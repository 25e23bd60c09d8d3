"""Every dashboard page over HTTP against a real ledger file: content, paging, escaping, 404 and
400 pages, and actions (refused without the token, writing nothing; recorded with who acted)."""

from __future__ import annotations

import re

from ledger import Ledger
from ledger.cli import format as fmt
from tests.conftest import FakeClock
from tests.web.conftest import EVIL, TOKEN, TRACEBACK, ClientFactory, Populated


def test_overview_shows_counts_totals_charts_and_the_oldest_pending(
    open_client: ClientFactory, populated: Populated
) -> None:
    page = open_client().get("/")
    assert page.status_code == 200
    html = page.text
    assert 'href="/jobs?queue=reports&amp;status=completed">1<' in html
    assert 'href="/jobs?queue=slow&amp;status=running">1<' in html
    assert "<dt>claimed</dt><dd>3</dd>" in html
    assert "12.50 cents" in html
    assert f'href="/jobs/{populated.pending}"' in html  # the oldest pending job
    assert html.count("<svg") == 4  # throughput and failure rate, last hour and last day
    assert "<form" not in html  # read-only: no actions


def test_job_list_filters_by_queue_status_chat_and_text(
    open_client: ClientFactory, populated: Populated
) -> None:
    client = open_client()

    def listed(query: str) -> set[str]:
        page = client.get("/jobs" + query)
        assert page.status_code == 200, page.text
        return set(re.findall(r'href="/jobs/([0-9a-f-]{36})"', page.text))

    every = {populated.completed, populated.failed, populated.running}
    assert listed("") == every | {populated.pending, populated.evil}
    assert listed("?queue=reports") == {populated.completed, populated.failed}
    assert listed("?status=running") == {populated.running}
    assert listed("?chat=9") == {populated.pending, populated.evil}
    assert listed("?q=SUMMARISE") == {populated.completed}
    assert listed("?q=boom") == {populated.failed}
    assert listed("?queue=reports&status=failed&chat=7") == {populated.failed}
    assert listed("?queue=&status=&chat=&q=") == every | {populated.pending, populated.evil}


def test_long_lists_come_in_pages_of_50(
    populated: Populated, clock: FakeClock, open_client: ClientFactory
) -> None:
    with Ledger(populated.path, clock=clock) as ledger:
        ledger.create_jobs(
            [{"chat_id": 1, "config": {"n": i}, "queue": "bulk"} for i in range(120)]
        )
    client = open_client()
    first = client.get("/jobs?queue=bulk")
    assert first.text.count('<tr class="status-') == 50
    assert "page 1 of 3" in first.text and 'href="?queue=bulk&amp;page=2"' in first.text
    last = client.get("/jobs?queue=bulk&page=3")
    assert last.text.count('<tr class="status-') == 20 and 'rel="next"' not in last.text
    beyond = client.get("/jobs?queue=bulk&page=9")
    assert beyond.status_code == 200 and "no jobs match" in beyond.text


def test_job_page_shows_the_timeline_payloads_and_traceback(
    open_client: ClientFactory, populated: Populated
) -> None:
    page = open_client().get(f"/jobs/{populated.failed[:8]}")  # a unique prefix works
    assert page.status_code == 200
    html = page.text
    for event_type in ("created", "claimed", "error", "failed"):
        assert f'<li class="event {event_type}">' in html
    assert '<pre class="traceback">' + TRACEBACK.replace('"', "&#34;") + "</pre>" in html
    assert "&#34;message&#34;: &#34;boom&#34;" in html  # pretty-printed JSON, escaped
    assert "ValueError: boom" in html


def test_chat_page_shows_the_summary_and_cost(
    open_client: ClientFactory, populated: Populated
) -> None:
    page = open_client().get("/chats/7")
    assert page.status_code == 200
    assert '<strong id="chat-cost">12.50 cents</strong>' in page.text
    assert "summarised 3 pages" in page.text  # the LLM summary lists the finished job
    assert populated.failed in page.text and populated.running not in page.text


def test_workers_page_shows_who_holds_what_and_the_lease_left(
    open_client: ClientFactory, populated: Populated
) -> None:
    page = open_client().get("/workers")
    assert page.status_code == 200
    assert "<td>worker-b</td>" in page.text and populated.running[:8] in page.text
    assert f"<td>{fmt.duration(300)}</td>" in page.text  # claimed with a 300 s lease, just now
    assert "1 running job, held by worker-b." in page.text


def test_text_from_configs_and_payloads_is_escaped(
    open_client: ClientFactory, populated: Populated
) -> None:
    client = open_client()
    for url in ("/jobs", f"/jobs/{populated.evil}", "/chats/9", "/jobs?q=" + EVIL):
        html = client.get(url).text
        assert "<script>alert" not in html, url
        assert "&lt;script&gt;alert(" in html, url


def test_unknown_pages_and_jobs_are_404(open_client: ClientFactory) -> None:
    client = open_client()
    for url in ("/jobs/ffffffff-0000", "/jobs/zzz", "/nowhere"):
        page = client.get(url)
        assert page.status_code == 404, url
        assert 'id="error-message"' in page.text


def test_bad_filters_are_400_with_the_reason(open_client: ClientFactory) -> None:
    client = open_client()
    reasons = {
        "/jobs?status=sleeping": "unknown status",
        "/jobs?chat=seven": "expected a whole number",
        "/jobs?page=0": "must be between 1",
        "/jobs?page=-3": "must be between 1",
        "/jobs?chat=99999999999999999999": "must be between",
        "/chats/seven": "expected a whole number",
        "/workers?page=x": "expected a whole number",
        "/jobs?q=" + "x" * 1001: "longer than 1000",
    }
    for url, reason in reasons.items():
        page = client.get(url)
        assert page.status_code == 400, url
        assert reason in page.text, url


def test_an_ambiguous_prefix_is_400(
    open_client: ClientFactory, populated: Populated, clock: FakeClock
) -> None:
    with Ledger(populated.path, clock=clock) as ledger:
        ids = ledger.create_jobs([{"chat_id": 1, "config": {}} for _ in range(17)])
    first = [i[0] for i in ids]
    shared = next(c for c in first if first.count(c) > 1)  # 17 ids, 16 hex digits
    page = open_client().get(f"/jobs/{shared}")
    assert page.status_code == 400 and "ambiguous prefix" in page.text


def test_read_only_server_has_no_action_routes(
    open_client: ClientFactory, populated: Populated
) -> None:
    client = open_client()
    answer = client.post(f"/jobs/{populated.pending}/cancel", data={"token": TOKEN, "by": "x"})
    assert answer.status_code in (404, 405)
    with Ledger(populated.path, readonly=True) as ledger:
        job = ledger.get_job(populated.pending)
        assert job is not None and job.status.value == "pending"


def test_an_action_without_the_token_is_refused_and_writes_nothing(
    open_client: ClientFactory, populated: Populated
) -> None:
    client = open_client(allow_actions=True)
    assert 'id="cancel-form"' in client.get(f"/jobs/{populated.pending}").text
    with Ledger(populated.path, readonly=True) as ledger:
        before = ledger.last_position()
    attempts = [
        (f"/jobs/{populated.pending}/cancel", {"by": "mallory"}),
        (f"/jobs/{populated.pending}/cancel", {"by": "mallory", "token": "wrong"}),
        (f"/jobs/{populated.failed}/retry", {"by": "mallory", "token": ""}),
        ("/queues/reports/pause", {"by": "mallory", "token": TOKEN[:-1]}),
    ]
    for url, form in attempts:
        answer = client.post(url, data=form)
        assert answer.status_code == 403, url
        assert "Nothing was written" in answer.text
    with Ledger(populated.path, readonly=True) as ledger:
        assert ledger.last_position() == before
        assert ledger.verify().ok


def test_actions_with_the_token_are_recorded_naming_who_acted(
    open_client: ClientFactory, populated: Populated
) -> None:
    client = open_client(allow_actions=True)
    form = {"by": "alice", "token": TOKEN}
    answer = client.post(f"/jobs/{populated.pending}/cancel", data=form)
    assert answer.status_code == 303 and answer.headers["location"] == f"/jobs/{populated.pending}"
    assert client.post(f"/jobs/{populated.failed}/retry", data=form).status_code == 303
    assert client.post("/queues/reports/pause", data=form).status_code == 303
    assert "paused" in client.get("/").text
    assert client.post(f"/jobs/{populated.completed}/retry", data=form).status_code == 409
    again = client.post(f"/jobs/{populated.pending}/cancel", data=form)
    assert again.status_code == 409 and "already ended" in again.text
    assert client.post("/queues/reports/pause", data=form).status_code == 409
    assert (
        client.post(f"/jobs/{populated.pending}/cancel", data={"token": TOKEN}).status_code == 400
    )
    with Ledger(populated.path, readonly=True) as ledger:
        cancelled = ledger.job_events(populated.pending, types=["cancelled"])
        assert [e.payload.get("by") for e in cancelled] == ["web:alice"]
        retried = ledger.job_events(populated.failed, types=["retried"])
        assert [e.payload.get("by") for e in retried] == ["web:alice"]
        assert ledger.paused_queues() == ["reports"]
        assert ledger.verify().ok
