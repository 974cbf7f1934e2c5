"""A record of the previous envelope version, as recorded from a real stack, sent to the
current worker: it is answered, and the current gateway streams the answer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from services.common.envelope import MIN_READ_VERSION, new_id
from services.common.kafka import make_producer, publish_encoded
from services.common.settings import Settings
from services.common.topics import INBOUND
from tests.support.gateway import answer_text, auth, collect_turn, create_conversation, sse_events

pytestmark = pytest.mark.integration

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "envelopes" / f"v{MIN_READ_VERSION}"


async def test_worker_and_gateway_answer_a_recorded_message_of_the_previous_version(
    settings: Settings,
) -> None:
    recorded = json.loads((RECORDED / "message.user.json").read_text())
    assert recorded["v"] == MIN_READ_VERSION
    headers = auth(settings, recorded["user_id"])
    async with httpx.AsyncClient(base_url=settings.gateway_url, timeout=30) as client:
        conversation_id = await create_conversation(client, headers)
        # The record as it was, in a conversation of this stack (ids are per conversation).
        record = {**recorded, "id": new_id(), "conversation_id": conversation_id, "turn_id": new_id()}
        producer = make_producer(settings, "test-recorded")
        await producer.start()
        try:
            await (await publish_encoded(producer, INBOUND, conversation_id, json.dumps(record).encode()))
        finally:
            await producer.stop()
        events = sse_events(client, headers, conversation_id, last_event_id=0)
        try:
            turn = await asyncio.wait_for(collect_turn(events, record["turn_id"]), 60)
        finally:
            await events.aclose()
    types = [event["type"] for event in turn]
    assert types[-1] == "message.completed", types
    assert "tool.result" in types and "42" in turn[-1]["payload"]["content"] + answer_text(turn)
