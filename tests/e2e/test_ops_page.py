"""The ops page (/ops) in the browser, on the real stack: an admin sees live charts with
data after real turns, the services and topics tables, a turn's trace as a waterfall
opened from the chat's link (spans of the gateway, the worker and the tool executor), and
replays a dead letter from the page, after which the user sees the answer once. Anyone
else gets 404 on the page and on every endpoint of its API. axe finds no serious
violation on it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
from playwright.sync_api import Page, expect

from a0ctl.runtime.local import LocalRuntime
from services.common.envelope import Envelope, EventType, new_id
from services.common.topics import INBOUND
from tests.e2e.conftest import Stack
from tests.e2e.test_accessibility import check
from tests.support.browser import WAIT_MS, api_headers, expect_answer, send
from tests.support.cli import a0ctl
from tests.support.kafka import dead_letters, send_raw

pytestmark = pytest.mark.e2e

ADMIN = "ops-admin"
# Prometheus scrapes every 10 s; a rate needs two scrapes after the turns.
CHARTS_WAIT_MS = 90_000
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """An asyncio coroutine from a test that Playwright's sync API drives."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def admin_token(user: str = ADMIN) -> str:
    """A token with the admin role, as docs/runbook.md says to make one."""
    made = a0ctl("token", "--user", user, "--role", "user", "--role", "admin")
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]


def sign_in_with_token(page: Page, token: str, user: str = ADMIN) -> None:
    page.goto("/")
    page.get_by_test_id("signin-use-token").click()
    page.get_by_test_id("signin-token").fill(token)
    page.get_by_test_id("signin-token-submit").click()
    expect(page.get_by_test_id("app")).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_test_id("user-name")).to_have_text(user)


def chart_max(page: Page, panel: str) -> float:
    value = page.locator(f"[data-testid=chart][data-panel={panel}]").get_attribute("data-max")
    return float(value or 0)


def wait_for_chart_data(page: Page, panel: str) -> float:
    """The largest value the panel's chart shows, once it is above zero."""
    page.wait_for_function(
        "panel => Number(document.querySelector(`[data-testid=chart][data-panel=${panel}]`)"
        "?.dataset.max || 0) > 0",
        arg=panel,
        timeout=CHARTS_WAIT_MS,
    )
    return chart_max(page, panel)


def test_an_admin_sees_charts_services_topics_and_a_turns_trace(
    page: Page, e2e_stack: Stack, snapshot: Callable[[str], None]
) -> None:
    sign_in_with_token(page, admin_token())
    expect(page.get_by_test_id("ops-link")).to_be_visible()
    page.get_by_test_id("new-chat").click()
    send(page, "compute 6*7")
    expect_answer(page, 1, "42")
    send(page, "hello there")
    expect_answer(page, 2, "")
    links = page.get_by_test_id("trace-link")
    expect(links).to_have_count(2, timeout=WAIT_MS)
    first_turn = page.get_by_test_id("turn").first.get_attribute("data-turn-id")
    assert first_turn

    # The chat's link opens the first turn's trace on the ops page. Each service sends its
    # spans to Jaeger a moment after they end, so until all have, the page says there is
    # no trace yet or shows the spans it has: try again, as a user would, until it shows
    # the three services' spans.
    links.first.click()
    expect(page).to_have_url(re.compile(rf"/ops#/trace/[^/]+/{first_turn}$"))
    expect(page.get_by_test_id("ops")).to_be_visible(timeout=WAIT_MS)
    waterfall = page.get_by_test_id("waterfall")
    error = page.get_by_test_id("trace-error")
    spans = waterfall.get_by_test_id("span")
    turn_services = {"gateway", "conversation-worker", "tool-executor"}

    def services_shown() -> set[str | None]:
        return {spans.nth(i).get_attribute("data-service") for i in range(spans.count())}

    for _ in range(10):
        answered = page.locator("[data-testid=waterfall], [data-testid=trace-error]:not([hidden])")
        expect(answered.first).to_be_visible(timeout=WAIT_MS)
        if waterfall.count() and turn_services <= services_shown():
            break
        if not waterfall.count():
            expect(error).to_contain_text("no trace of")
        page.wait_for_timeout(1500)
        page.get_by_test_id("trace-submit").click()
    expect(waterfall).to_have_count(1, timeout=WAIT_MS)
    services = services_shown()
    assert turn_services <= services, services
    # A span opens to its attributes.
    spans.first.locator("button").click()
    expect(spans.first.get_by_test_id("span-details")).to_contain_text("http.route")
    expect(waterfall).to_contain_text("ms")

    # Services: every a0 process Prometheus scrapes, running; each dependency healthy. On
    # a stack just started a process is listed from Prometheus' first scrape of it (every
    # 10 s), and the page asks again every 5 s.
    rows = page.get_by_test_id("service-row")
    expect(rows.filter(has_text="conversation-worker").first).to_have_attribute(
        "data-state", "running", timeout=WAIT_MS
    )
    for service in ("gateway", "tool-executor"):
        expect(page.locator(f"[data-testid=service-row][data-service={service}]").first).to_have_attribute(
            "data-state", "running", timeout=WAIT_MS
        )
    for dependency in ("kafka", "redis", "postgres", "opa", "prometheus", "jaeger"):
        expect(page.locator(f"[data-testid=dependency-row][data-dependency={dependency}]")).to_have_attribute(
            "data-ok", "true"
        )

    # Topics: each partition with its end offset and the worker group's lag.
    inbound = page.locator("[data-testid=topic-row][data-topic='conversation.inbound']")
    answered = page.locator("[data-testid=topic-row], [data-testid=topics-error]:not([hidden])")
    expect(answered.first).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_test_id("topics-error")).to_be_hidden()
    expect(inbound.first).to_be_visible()
    expect(page.get_by_test_id("topics-table")).to_contain_text("a0-conversation-worker lag")
    ends = [int(inbound.nth(i).locator("td").nth(2).inner_text()) for i in range(inbound.count())]
    assert sum(ends) >= 2  # the two messages at least

    # Charts with data: throughput above zero after the turns, latency measured.
    assert wait_for_chart_data(page, "throughput") > 0
    assert wait_for_chart_data(page, "turn_latency") > 0
    assert wait_for_chart_data(page, "records") > 0
    for panel in ("errors", "ttft", "lag", "inflight", "dead_letters"):
        expect(page.locator(f"[data-testid=chart][data-panel={panel}]")).to_be_visible()
    snapshot("with-data")
    # Another range: the charts are drawn again over an hour.
    page.get_by_test_id("range-1h").check()
    expect(page.get_by_test_id("chart-grid")).to_have_attribute("data-range", "1h")
    expect(page.get_by_test_id("charts-error")).to_be_hidden()

    # An unknown turn: a clear message, no waterfall.
    page.get_by_test_id("trace-conversation").fill("")
    page.get_by_test_id("trace-turn").fill(new_id())
    page.get_by_test_id("trace-submit").click()
    expect(page.get_by_test_id("trace-error")).to_contain_text("no trace of turn")
    expect(page.get_by_test_id("waterfall")).to_have_count(0)


def test_an_admin_replays_a_dead_letter_from_the_page_and_the_user_sees_the_answer_once(
    page: Page, e2e_stack: Stack
) -> None:
    settings = e2e_stack.settings
    conversation_id = new_id()
    envelope = Envelope(
        type=EventType.USER_MESSAGE,
        conversation_id=conversation_id,
        turn_id=new_id(),
        user_id=ADMIN,
        payload={"message_id": new_id(), "content": "hello from before the conversation existed"},
    )

    async def dead_lettered() -> str:
        async with dead_letters(settings, "dlq.conversation-worker") as dlq:
            await send_raw(settings, INBOUND, envelope.to_bytes(), key=conversation_id.encode())
            while (record := await dlq.next()).key != conversation_id.encode():
                pass
        return f"{record.topic}:{record.partition}:{record.offset}"

    entry = run(dead_lettered())
    sign_in_with_token(page, admin_token())
    page.goto("/ops#dead-letters")
    row = page.locator(f"[data-testid=dead-letter-row][data-id='{entry}']")
    expect(row).to_contain_text(f"unknown conversation {conversation_id}", timeout=WAIT_MS)
    expect(row).to_have_attribute("data-state", "pending")

    # The cause fixed (the conversation's row restored), the admin replays it.
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as db:
        db.execute(
            "INSERT INTO conversations (id, owner_id, title) VALUES (%s, %s, 'restored')",
            (conversation_id, ADMIN),
        )
    row.get_by_test_id("dead-letter-replay").click()
    expect(page.get_by_test_id("dead-letters-status")).to_contain_text(f"Replayed {entry} → {INBOUND}:")
    expect(row).to_have_count(0)  # no longer pending
    page.get_by_test_id("dead-letters-all").check()
    expect(row).to_have_attribute("data-state", "replayed")
    expect(row).to_contain_text(f"replay by {ADMIN}")

    # The user sees the answer, once.
    page.goto(f"/#/c/{conversation_id}")
    expect_answer(page, 1, "")
    expect(page.get_by_test_id("user-message")).to_have_count(1)
    page.wait_for_timeout(1500)
    expect(page.get_by_test_id("assistant-message")).to_have_count(1)

    # Replaying it again is refused with why: the API answers 409.
    headers = {"Authorization": f"Bearer {admin_token()}"}
    again = httpx.post(f"{e2e_stack.url}/v1/ops/dead-letters/{entry}/replay", headers=headers, timeout=30)
    assert again.status_code == 409 and f"already replayed by {ADMIN}" in again.json()["error"]["message"]


def test_anyone_but_an_admin_gets_404_on_the_page_and_its_api(page: Page, e2e_stack: Stack) -> None:
    user = f"not-admin-{new_id()[-6:]}"
    page.goto("/")
    page.get_by_test_id("signin-user").fill(user)
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_test_id("app")).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_test_id("ops-link")).to_be_hidden()
    page.goto("/ops")
    expect(page.get_by_test_id("ops-denied")).to_contain_text("404 Not found")
    expect(page.get_by_test_id("ops")).to_be_hidden()

    headers = api_headers(e2e_stack.url, user)
    for method, path in (
        ("GET", "/v1/ops/access"),
        ("GET", "/v1/ops/charts?range=5m"),
        ("GET", "/v1/ops/services"),
        ("GET", "/v1/ops/topics"),
        ("GET", f"/v1/ops/traces?turn_id={new_id()}"),
        ("GET", "/v1/ops/dead-letters"),
        ("POST", "/v1/ops/dead-letters/dlq.conversation-worker:0:0/replay"),
        ("POST", "/v1/ops/dead-letters/dlq.conversation-worker:0:0/discard"),
    ):
        answer = httpx.request(method, f"{e2e_stack.url}{path}", headers=headers, timeout=30)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json()["error"]["code"] == "not_found"
    # Without a token: 401, as everywhere in the API.
    assert httpx.get(f"{e2e_stack.url}/v1/ops/access", timeout=10).status_code == 401


def test_the_ops_page_has_no_serious_accessibility_violation(axe_page: Page) -> None:
    sign_in_with_token(axe_page, admin_token())
    axe_page.goto("/ops")
    expect(axe_page.get_by_test_id("service-row").first).to_be_visible(timeout=WAIT_MS)
    expect(axe_page.get_by_test_id("chart").first).to_be_visible(timeout=WAIT_MS)
    expect(axe_page.get_by_test_id("topic-row").first).to_be_visible(timeout=WAIT_MS)
    check(axe_page, "ops", {})


def test_prometheus_down_is_a_clear_message_on_the_page_and_a_502(
    page: Page, e2e_stack: Stack, local_stack: LocalRuntime
) -> None:
    sign_in_with_token(page, admin_token())
    assert local_stack.stop_service("prometheus")
    try:
        page.goto("/ops")
        expect(page.get_by_test_id("charts-error")).to_contain_text(
            "Prometheus does not answer", timeout=WAIT_MS
        )
        expect(page.get_by_test_id("services-error")).to_contain_text("Prometheus does not answer")
        headers = {"Authorization": f"Bearer {admin_token()}"}
        answer = httpx.get(f"{e2e_stack.url}/v1/ops/charts", headers=headers, timeout=30)
        assert answer.status_code == 502 and answer.json()["error"]["code"] == "upstream_unavailable"
    finally:
        local_stack.supervisor.start("prometheus")
        wait_for(f"{e2e_stack.settings.prometheus.base_url(e2e_stack.settings.stack.host)}/-/ready")


def wait_for(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout_s:g} s")
