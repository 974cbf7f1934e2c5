"""A signed-in user's token stays in the browser: after a chat through the real UI, with
its live stream opened and closed, no trace in Jaeger, no log file, no Prometheus series
and no row of PostgreSQL holds the token or any piece of its signature — whoever can read
those (Jaeger's query API has no authentication) cannot act as the user."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psycopg
import pytest
from playwright.sync_api import Page

from tests.support.browser import expect_answer, send, sign_in
from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e


def _needles(token: str) -> list[str]:
    """The token, and its signature alone (a store may keep the token cut up)."""
    return [token, token.rsplit(".", 1)[-1]]


def _stream_spans(base: str, conversation_id: str) -> str:
    """Jaeger's answer for the gateway's traces of the last hour, once it holds the span
    of this conversation's event stream (it ends, and is exported, when the stream does)."""
    now_us = int(time.time() * 1e6)
    params = {"service": "gateway", "start": str(now_us - 3600 * 10**6), "end": str(now_us), "limit": "1000"}
    response = httpx.get(f"{base}/api/traces", params=params, timeout=10)
    response.raise_for_status()
    return response.text if f"/v1/conversations/{conversation_id}/events" in response.text else ""


def test_the_token_is_in_no_trace_log_metric_or_row(page: Page, user_name: str, e2e_stack: Stack) -> None:
    settings = e2e_stack.settings
    sign_in(page, user_name)
    page.get_by_test_id("new-chat").click()
    send(page, "compute 6*7")
    expect_answer(page, 1, "42")
    token = page.evaluate("window.sessionStorage.getItem('a0.token')")
    conversation_id = page.evaluate("decodeURIComponent(location.hash.split('/').pop())")
    assert token and token.count(".") == 2, token
    # The stream's request ends, and its span is exported, when the page goes away.
    page.goto("about:blank")

    jaeger = settings.telemetry.query_url(settings.stack.host)
    traces = ""

    def stream_traced() -> bool:
        nonlocal traces
        traces = _stream_spans(jaeger, conversation_id)
        return bool(traces)

    wait_until(stream_traced, 30, "the event stream's span in Jaeger", poll_s=0.5)
    prometheus = settings.prometheus.base_url(settings.stack.host)
    series = httpx.get(f"{prometheus}/api/v1/series", params={"match[]": '{__name__=~".+"}'}, timeout=10)
    series.raise_for_status()
    logs = {
        str(path): path.read_bytes().decode(errors="replace")
        for path in Path(settings.stack.state_path / "logs").rglob("*")
        if path.is_file()
    }
    assert logs, "no log files to search"
    with psycopg.connect(settings.postgres_dsn) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
        rows = {
            table: "\n".join(
                str(row[0]) for row in conn.execute(f'SELECT row_to_json(t)::text FROM "{table}" t')
            )
            for table in tables
        }
    assert user_name in rows["conversations"], "the chat was not stored where the search looks"

    for needle in _needles(token):
        assert needle not in traces, "Jaeger serves the token"
        assert needle not in series.text, "a Prometheus series carries the token"
        assert [name for name, text in logs.items() if needle in text] == []
        assert [table for table, text in rows.items() if needle in text] == []
