"""Recorded provider streams (tests/support/recorded_streams.py) through the whole stack:
a user's credential points at the replaying server, allowed by the operator's
A0_EGRESS_ALLOW; each case asserts what the user is shown (text, tool calls, the answer
or the error code), the stored transcript, and that the turn ended."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import psycopg
import pytest
from redis.asyncio import Redis

from services.common import open_turns
from services.common.settings import Settings
from tests.conftest import REPLAY_PORT
from tests.support.gateway import answer_text, auth, create_conversation, send_and_collect
from tests.support.metrics import scrape, value
from tests.support.recorded_streams import AFTER_TOOLS_TEXT, CASES, DROP, Case, Replay, serving
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def _transcript(settings: Settings, conversation_id: str) -> tuple[list[tuple[str, Any]], list[str]]:
    """The stored messages (key prefix, body) in order, and the statuses of its turns."""
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True) as conn:
        rows = await (
            await conn.execute(
                "SELECT message_key, body FROM messages WHERE conversation_id = %s ORDER BY position",
                (conversation_id,),
            )
        ).fetchall()
        statuses = await (
            await conn.execute("SELECT status FROM turns WHERE conversation_id = %s", (conversation_id,))
        ).fetchall()
    return [(key.split(":")[0], body) for key, body in rows], [status for (status,) in statuses]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
async def test_recorded_stream_through_the_stack(
    case: Case, settings: Settings, client: httpx.AsyncClient
) -> None:
    headers = auth(settings, f"rec-{case.name}"[:64])
    replay = Replay()
    async with serving(replay.app, REPLAY_PORT) as base_url:
        body = {"base_url": base_url, "model": case.name, "api_key": "sk-replay-0123456789"}
        saved = await client.put("/v1/settings/credentials/openai", json=body, headers=headers)
        assert saved.status_code == 200, saved.text
        conversation_id = await create_conversation(client, headers)
        events = await send_and_collect(client, headers, conversation_id, "compute 6*7")
    last = events[-1]
    calls = [(e["payload"]["name"], e["payload"]["arguments"]) for e in events if e["type"] == "tool.call"]
    assert calls == case.tools
    stored, statuses = await _transcript(settings, conversation_id)
    assert len(statuses) == 1 and statuses[0] in ("completed", "failed"), statuses  # no turn left open
    if case.error is not None:
        assert last["type"] == "error", last
        assert last["payload"]["code"] == case.error, last
        assert last["payload"].get("finish_reason") == case.finish_reason
        shown = answer_text(events)
        if any(DROP in answer.body for answer in case.answers):
            # A cut connection can take the text in flight with it (the socket's end may
            # be read before the data that came with it), but never adds another answer.
            assert case.text.startswith(shown), (shown, case.text)
        else:
            assert shown == case.text
        assert [role for role, _ in stored] == ["user"]  # nothing stored as an answer
        return
    assert last["type"] == "message.completed", json.dumps(last)
    expected = AFTER_TOOLS_TEXT if case.tools else case.text
    assert answer_text(events) == last["payload"]["content"] == expected
    assert last["payload"]["finish_reason"] == ("stop" if case.tools else case.finish_reason)
    results = [e for e in events if e["type"] == "tool.result"]
    assert len(results) == len(case.tools) and all("output" in r["payload"] for r in results), results
    if case.tools:
        assert [role for role, _ in stored] == ["user", "assistant", *["tool"] * len(case.tools), "assistant"]
        asked = stored[1][1]["tool_calls"]
        assert [(c["function"]["name"], c["function"]["arguments"]) for c in asked] == case.tools
    else:
        assert [role for role, _ in stored] == ["user", "assistant"]
    assert stored[-1][1]["content"] == expected


async def test_a_provider_crashing_mid_answer_ends_the_turn_at_once_and_leaves_none_open(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    headers = auth(settings, "rec-crash")
    async with serving(Replay().app, REPLAY_PORT) as base_url:
        body = {
            "base_url": base_url,
            "model": "dropped-after-text-then-retried",
            "api_key": "sk-replay-0123456789",
        }
        assert (
            await client.put("/v1/settings/credentials/openai", json=body, headers=headers)
        ).status_code == 200
        conversation_id = await create_conversation(client, headers)
        started = time.monotonic()
        events = await send_and_collect(client, headers, conversation_id, "compute 6*7")
        took = time.monotonic() - started
    assert events[-1]["type"] == "error" and events[-1]["payload"]["code"] == "llm_interrupted"
    assert took < settings.worker.llm_first_content_s, took  # no retries, no waiting on a limit

    def nothing_open() -> bool:
        return value(scrape(settings), "a0_turns_inflight") == 0

    await eventually(nothing_open, 10, "the worker's turns in flight back to 0")
    redis = Redis.from_url(settings.redis_url)
    try:
        assert await open_turns.read(redis) == 0  # the gateway's budget of open turns
    finally:
        await redis.aclose()
