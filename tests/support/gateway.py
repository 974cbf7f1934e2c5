"""Talk to the gateway as a client would: HTTP, SSE and WebSocket, no shortcuts. The
API's paths, bearer header and event stream are :mod:`a0ctl.client`'s; these helpers
wrap them with the tests' assertions on each answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from a0ctl.client import CONVERSATIONS, bearer, conversation_path, read_events
from services.common.envelope import TERMINAL_EVENTS
from services.common.settings import Settings


def auth(settings: Settings, user: str) -> dict[str, str]:
    return bearer(settings, user)


async def create_conversation(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> str:
    response = await client.post(CONVERSATIONS, json=body or {"title": "test"}, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def post_message(
    client: httpx.AsyncClient, headers: dict[str, str], conversation_id: str, content: str
) -> dict[str, Any]:
    response = await client.post(
        conversation_path(conversation_id, "messages"), json={"content": content}, headers=headers
    )
    assert response.status_code == 202, response.text
    return dict(response.json())


async def sse_events(
    client: httpx.AsyncClient, headers: dict[str, str], conversation_id: str, last_event_id: int | None = None
) -> AsyncGenerator[dict[str, Any], None]:
    """Yield events from the SSE endpoint; each dict also carries the SSE id and event name."""
    request_headers = dict(headers)
    if last_event_id is not None:
        request_headers["Last-Event-ID"] = str(last_event_id)
    async with client.stream(
        "GET",
        conversation_path(conversation_id, "events"),
        headers=request_headers,
        timeout=httpx.Timeout(60, read=60),
    ) as response:
        assert response.status_code == 200, await response.aread()
        async for event, message in read_events(response.aiter_lines()):
            event["_sse_id"] = message["id"]
            event["_sse_event"] = message["event"]
            yield event


async def collect_turn(events: AsyncIterator[dict[str, Any]], turn_id: str) -> list[dict[str, Any]]:
    """Events of one turn, up to and including its terminal event."""
    collected = []
    async for event in events:
        if event["turn_id"] != turn_id:
            continue
        collected.append(event)
        if event["type"] in TERMINAL_EVENTS:
            break
    return collected


async def send_and_collect(
    client: httpx.AsyncClient, headers: dict[str, str], conversation_id: str, content: str, after: int = 0
) -> list[dict[str, Any]]:
    """Post a message and return its turn's events from the SSE stream. Every event is in
    the history before a client sees it, so the stream may open after the post."""
    accepted = await post_message(client, headers, conversation_id, content)
    events = sse_events(client, headers, conversation_id, last_event_id=after)
    try:
        return await asyncio.wait_for(collect_turn(events, accepted["turn_id"]), 60)
    finally:
        await events.aclose()


async def read_until(
    events: AsyncIterator[dict[str, Any]], event_type: str, count: int = 1
) -> list[dict[str, Any]]:
    """Events up to and including the ``count``-th one of ``event_type``."""
    seen = []
    async for event in events:
        seen.append(event)
        if sum(e["type"] == event_type for e in seen) == count:
            break
    return seen


def answer_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["payload"]["text"] for e in events if e["type"] == "message.delta")


def comparable(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """What a user sees of a turn: event types and payloads, without transport details."""
    return [(e["type"], json.dumps(e["payload"], sort_keys=True)) for e in events]


async def streaming_clients(client: httpx.AsyncClient, transport: str = "sse") -> float:
    """How many streaming clients the gateway behind ``client`` has connected, from its
    ``a0_gateway_clients`` gauge: a subscription is registered once it is counted."""
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "a0_gateway_clients" and sample.labels.get("transport") == transport:
                return sample.value
    return 0.0
