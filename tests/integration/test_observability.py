"""Traces and metrics of real turns: the span tree of a tool turn read back from Jaeger
through ``a0ctl trace --json``, counters after N turns, every dashboard query answered by
the stack's Prometheus, and no credential in a span or a log line."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from a0ctl.observe import TOP_QUERIES
from a0ctl.runtime.local import LocalRuntime
from services.common.secrets_env import apply_generated_secrets
from services.common.settings import Settings
from services.conversation_worker.main import POOL_CONNECTIONS as WORKER_CONNECTIONS
from services.gateway.main import POOL_CONNECTIONS
from tests.conftest import ROOT
from tests.support.cli import a0ctl, a0ctl_json
from tests.support.gateway import auth, collect_turn, create_conversation, post_message, sse_events
from tests.support.metrics import exported_names, scrape, value

pytestmark = pytest.mark.integration

DASHBOARD = ROOT / "stack" / "grafana" / "dashboards" / "a0.json"
PROMPT = "compute 6*7"


async def followed_turn(
    client: httpx.AsyncClient, headers: dict[str, str], conversation_id: str, content: str
) -> tuple[str, list[dict[str, Any]]]:
    """Post a message while a client follows the conversation (so the gateway delivers
    the turn's events live, the trace's last hop); the turn's id and its events."""
    events = sse_events(client, headers, conversation_id)

    async def first_event() -> dict[str, Any]:
        return await anext(events)

    first = asyncio.create_task(first_event())  # opens the stream
    await asyncio.sleep(0.5)
    accepted = await post_message(client, headers, conversation_id, content)

    async def rest() -> AsyncIterator[dict[str, Any]]:
        yield await first
        async for event in events:
            yield event

    try:
        return accepted["turn_id"], await asyncio.wait_for(collect_turn(rest(), accepted["turn_id"]), 60)
    finally:
        await events.aclose()


def prometheus(settings: Settings, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{settings.prometheus.base_url(settings.stack.host)}/api/v1/query",
        params={"query": expr},
        timeout=10,
    )
    body = response.json()
    assert body["status"] == "success", f"{expr}: {body}"
    return list(body["data"]["result"])


def wait_for_trace(conversation_id: str, turn_id: str, names: set[str]) -> dict[str, Any]:
    """``a0ctl trace --json`` until the turn's trace holds every span named (spans reach
    Jaeger within a second or two of their end)."""
    deadline = time.monotonic() + 30
    while True:
        result = a0ctl("trace", conversation_id, "--turn", turn_id, "--json")
        found = json.loads(result.stdout) if result.stdout.strip() else {"traces": []}
        seen = {span["name"] for trace in found["traces"] for span in trace["spans"]}
        if names <= seen or time.monotonic() > deadline:
            assert names <= seen, f"missing spans {names - seen}; got {sorted(seen)}"
            assert result.returncode == 0, result.stderr
            return dict(found)
        time.sleep(1)


def secrets_of(settings: Settings) -> dict[str, str]:
    filled = apply_generated_secrets(settings)
    values = {
        "jwt secret": filled.gateway.jwt_secret.get_secret_value(),
        "simulator key": filled.llm_sim.api_key.get_secret_value(),
        "postgres password": filled.postgres.password.get_secret_value(),
        "postgres admin password": filled.postgres.admin_password.get_secret_value(),
    }
    return {name: secret for name, secret in values.items() if len(secret) >= 8}


async def test_a_tool_turn_is_one_trace_across_every_hop(settings: Settings, client) -> None:
    headers = auth(settings, "trace-user")
    conversation_id = await create_conversation(client, headers)
    turn_id, events = await followed_turn(client, headers, conversation_id, PROMPT)
    assert events[-1]["type"] == "message.completed", events[-1]
    hops = {
        "gateway message",
        "conversation.inbound send",
        "a0-conversation-worker message.user",
        "llm call",
        "tool.requests send",
        "a0-tool-executor tool.request",
        "tool run",
        "tool.results send",
        "worker tool.result",
        "conversation.outbound send",
        "gateway deliver message.completed",
    }
    found = wait_for_trace(conversation_id, turn_id, hops)

    # One trace for the turn, rooted at the gateway's request, every span linked into it.
    assert len(found["traces"]) == 1, [t["trace_id"] for t in found["traces"]]
    spans = found["traces"][0]["spans"]
    by_id = {span["span_id"]: span for span in spans}
    roots = [span for span in spans if span["parent_id"] not in by_id]
    assert len(roots) == 1 and roots[0]["service"] == "gateway", roots
    assert roots[0]["name"].startswith("POST"), roots[0]
    assert {span["service"] for span in spans} >= {"gateway", "conversation-worker", "tool-executor"}
    for span in spans:
        assert set(span) >= {"span_id", "parent_id", "service", "name", "start", "duration_ms", "attributes"}
        assert span["duration_ms"] >= 0

    def one(name: str, service: str | None = None) -> dict[str, Any]:
        matches = [s for s in spans if s["name"] == name and (service is None or s["service"] == service)]
        assert matches, f"no span {name} ({service})"
        return matches[0]

    def parent(span: dict[str, Any]) -> dict[str, Any]:
        return by_id[span["parent_id"]]

    # Across Kafka, each consumer's span is the child of the producer's send span.
    consumed = one("a0-conversation-worker message.user")
    assert parent(consumed)["name"] == "conversation.inbound send"
    assert parent(consumed)["service"] == "gateway"
    assert consumed["attributes"]["a0.conversation_id"] == conversation_id
    assert consumed["attributes"]["a0.turn_id"] == turn_id
    assert consumed["attributes"]["messaging.destination.name"] == "conversation.inbound"
    assert "messaging.kafka.offset" in consumed["attributes"]
    assert "messaging.destination.partition.id" in consumed["attributes"]
    assert consumed["attributes"]["a0.outcome"] == "completed"

    executor = one("a0-tool-executor tool.request")
    assert parent(executor)["name"] == "tool.requests send"
    assert parent(executor)["service"] == "conversation-worker"
    run = one("tool run")
    assert parent(run)["span_id"] == executor["span_id"]
    assert run["attributes"]["a0.tool"] == "calculator" and run["attributes"]["a0.outcome"] == "ok"

    back = one("worker tool.result")
    assert parent(back)["name"] == "tool.results send" and parent(back)["service"] == "tool-executor"
    delivered = one("gateway deliver message.completed")
    assert parent(delivered)["name"] == "conversation.outbound send"
    assert parent(delivered)["service"] == "conversation-worker"

    # Two LLM calls (the tool call, then the answer), each one span; time to first token
    # is the first text, which only the answer has.
    calls = sorted((s for s in spans if s["name"] == "llm call"), key=lambda s: s["start"])
    assert len(calls) == 2, calls
    first_tokens = [[e for e in call.get("events", ()) if e.get("event") == "first token"] for call in calls]
    assert [len(events) for events in first_tokens] == [0, 1], calls
    for call in calls:
        assert parent(call)["span_id"] == consumed["span_id"]
    # Streamed text gets no spans: no delta is delivered or sent in the trace.
    assert not any("message.delta" in s["name"] for s in spans)
    # (The last piece of each answer goes out with the event that follows it, traced.)
    sends = [s for s in spans if s["name"] == "conversation.outbound send"]
    deltas = sum(e["type"] == "message.delta" for e in events)
    assert deltas >= 1, "the answer's text, in one delta or several"
    assert len(sends) <= len(events) - deltas + len(calls), (len(sends), len(events), deltas)

    # Neither a credential nor the message's text is in any attribute.
    attributes = json.dumps([s["attributes"] for s in spans])
    assert PROMPT not in attributes and "6*7" not in attributes
    for name, secret in secrets_of(settings).items():
        assert secret not in attributes, f"the {name} is in a span attribute"

    # The rich tree shows the same trace.
    shown = a0ctl("trace", conversation_id, "--turn", turn_id)
    assert shown.returncode == 0, shown.stderr
    assert found["traces"][0]["trace_id"] in shown.stdout
    assert "tool run" in shown.stdout and "first token" in shown.stdout and "ms" in shown.stdout


def test_trace_of_an_unknown_conversation_is_a_clear_error(stack: LocalRuntime) -> None:
    result = a0ctl("trace", "no-such-conversation", "--json")
    assert result.returncode == 1
    assert "no trace of conversation no-such-conversation" in result.stderr
    assert json.loads(result.stdout) == {"traces": []}


async def test_counters_move_by_the_turns_run(settings: Settings, client) -> None:
    turns = 3
    headers = auth(settings, "metrics-user")
    conversation_id = await create_conversation(client, headers)
    before = scrape(settings)
    for _ in range(turns):
        _, events = await followed_turn(client, headers, conversation_id, PROMPT)
        assert events[-1]["type"] == "message.completed"
    await asyncio.sleep(0.5)
    after = scrape(settings)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("a0_turns_total", outcome="completed") == turns
    assert moved("a0_turn_seconds_count") == turns
    assert moved("a0_llm_ttft_seconds_count") == turns  # the answer's first text; a tool call has none
    assert moved("a0_tool_calls_total", tool="calculator", outcome="ok") == turns
    assert moved("a0_tool_seconds_count", tool="calculator") == turns
    assert moved("a0_tool_errors_total") == 0
    assert moved("a0_messages_produced_total", topic="conversation.inbound") == turns
    assert (
        moved("a0_messages_consumed_total", group="a0-conversation-worker", topic="conversation.inbound")
        == turns
    )
    assert moved("a0_messages_produced_total", topic="tool.requests") == turns
    assert moved("a0_messages_consumed_total", group="a0-tool-executor", topic="tool.requests") == turns
    assert moved("a0_messages_produced_total", topic="tool.results") == turns
    assert moved("a0_dead_letters_total") == 0
    # Every outbound record the worker sent reached the gateway's consumer.
    sent = moved("a0_messages_produced_total", topic="conversation.outbound")
    assert sent >= turns * 5
    assert moved("a0_messages_consumed_total", topic="conversation.outbound") == sent
    assert value(after, "a0_turns_inflight") == 0
    lag = [v for (n, labels), v in after.items() if n == "a0_consumer_lag_records"]
    assert lag and all(v >= 0 for v in lag)
    # Each service's PostgreSQL pool: every turn took connections from the gateway's and
    # the worker's; each pool holds its full size from the start.
    assert moved("a0_db_pool_requests_total", pool="gateway") >= 2 * turns
    assert moved("a0_db_pool_requests_total", pool="conversation-worker") >= 4 * turns
    assert moved("a0_db_pool_requests_total", pool="tool-executor") >= turns
    gateway_pool = max(8, POOL_CONNECTIONS // settings.gateway.workers)
    assert value(after, "a0_db_pool_connections", pool="gateway") == gateway_pool * settings.gateway.workers
    assert value(after, "a0_db_pool_connections", pool="conversation-worker") == WORKER_CONNECTIONS
    assert value(after, "a0_db_pool_connections", pool="tool-executor") == settings.tools.max_inflight + 2
    assert value(after, "a0_db_pool_waiting") == 0


async def test_streams_dropped_while_the_backlog_is_read_cost_no_connection(
    settings: Settings, client
) -> None:
    """Clients that drop their stream at once (a reload, a reconnect) often leave while
    the gateway reads the conversation's stored events: the read must still end cleanly,
    not have psycopg close its connection and the pool open another."""
    headers = auth(settings, "stream-dropper")
    conversation_id = await create_conversation(client, headers)
    for _ in range(3):
        _, events = await followed_turn(client, headers, conversation_id, PROMPT)
        assert events[-1]["type"] == "message.completed"
    before = scrape(settings)

    async def dropped() -> None:
        async with client.stream("GET", f"/v1/conversations/{conversation_id}/events", headers=headers) as r:
            assert r.status_code == 200

    for _ in range(30):
        await asyncio.gather(*(dropped() for _ in range(10)))
    await asyncio.sleep(1)
    after = scrape(settings)
    assert value(after, "a0_db_pool_connects_total", pool="gateway") == value(
        before, "a0_db_pool_connects_total", pool="gateway"
    )
    assert value(after, "a0_db_pool_connections", pool="gateway") == value(
        before, "a0_db_pool_connections", pool="gateway"
    )


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
        if "expr" in target
    ]


async def test_every_dashboard_and_top_query_names_exported_metrics_and_answers(
    settings: Settings, client
) -> None:
    headers = auth(settings, "dashboard-user")
    conversation_id = await create_conversation(client, headers)
    for _ in range(3):
        await followed_turn(client, headers, conversation_id, PROMPT)
    # Two scrapes after the traffic, so rates over the last minute see it.
    await asyncio.sleep(2 * settings.prometheus.scrape_interval_s + 1)
    exported = exported_names(settings)
    queries = [*_dashboard_queries(), *TOP_QUERIES.items()]
    assert len(_dashboard_queries()) >= 8
    empty = []
    for title, expr in queries:
        names = set(re.findall(r"\ba0_[a-z0-9_]+", expr))
        assert names, f"{title}: names no a0 metric"
        assert names <= exported, f"{title}: {names - exported} is exported by no service"
        concrete = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
        if not prometheus(settings, concrete):
            empty.append(title)
    assert not empty, f"queries that return nothing after real traffic: {empty}"

    # `a0ctl top` reads the same figures.
    snapshot = a0ctl_json("top")
    assert snapshot["turns_per_s"] > 0 and snapshot["turn_p95_s"] > 0
    assert snapshot["messages_out_per_s"]["conversation.outbound"] > 0
    shown = a0ctl("top", "--once")
    assert shown.returncode == 0, shown.stderr
    assert "turns/s" in shown.stdout and "consumer lag" in shown.stdout


def test_no_credential_in_any_log_line(stack: LocalRuntime, settings: Settings) -> None:
    secrets = secrets_of(settings)
    assert secrets, "the stack has generated secrets to look for"
    logs = sorted(Path(stack.state / "logs").glob("*.log*"))
    assert logs
    for log in logs:
        text = log.read_text(errors="replace")
        for name, secret in secrets.items():
            assert secret not in text, f"the {name} is in {log.name}"
