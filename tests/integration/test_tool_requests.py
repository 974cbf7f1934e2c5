"""The tool executor against the real stack: a call it may have answered before is
answered from its store, and its tool does not run again."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from a0ctl.runtime.local import LocalRuntime
from services.common.envelope import Envelope, EventType, tool_call_key
from services.common.kafka import REPLAY_COUNT_HEADER, client_options
from services.common.settings import Settings
from services.common.topics import TOOL_REQUESTS, TOOL_RESULTS
from tests.support.metrics import scrape, value

pytestmark = pytest.mark.integration


def tool_runs(settings: Settings) -> float:
    """Runs of the built-in ``current_time`` by the executor's own count: no other test of
    the tier calls it, so turns that earlier tests left running cannot move it."""
    return value(scrape(settings), "a0_tool_calls_total", tool="current_time")


async def test_a_call_asked_again_or_replayed_is_answered_from_the_store_without_running_again(
    settings: Settings, stack: LocalRuntime
) -> None:
    turn_id, call_id = f"turn-{uuid.uuid4().hex}", "call_0"
    key = tool_call_key(turn_id, call_id)
    payload = {"call_id": call_id, "name": "current_time", "arguments": '{"timezone": "UTC"}'}

    def request(**extra: object) -> bytes:
        return Envelope(
            id=f"req-{key}",
            type=EventType.TOOL_REQUEST,
            conversation_id=f"conv-{uuid.uuid4().hex}",
            turn_id=turn_id,
            user_id="tool-request-test",
            payload={**payload, **extra},
        ).to_bytes()

    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    producer = AIOKafkaProducer(**client_options(settings), acks="all", enable_idempotence=True)
    await consumer.start()
    await producer.start()
    try:
        partitions = [TopicPartition(TOOL_RESULTS, p) for p in await producer.partitions_for(TOOL_RESULTS)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolved now: every result published from here on is read
            await consumer.position(tp)

        async def answer(value: bytes, headers: list[tuple[str, bytes]] | None = None) -> Envelope:
            await producer.send_and_wait(TOOL_REQUESTS, value, key=turn_id.encode(), headers=headers)
            async with asyncio.timeout(30):
                while True:
                    for records in (await consumer.getmany(timeout_ms=1000)).values():
                        for record in records:
                            result = Envelope.from_bytes(record.value)
                            if result.id == f"result-{key}":
                                return result

        before = tool_runs(settings)
        first = await answer(request())
        assert first.type == EventType.TOOL_RESPONSE and first.payload["call_id"] == call_id
        assert tool_runs(settings) == before + 1
        async with await psycopg.AsyncConnection.connect(settings.postgres_dsn) as conn:
            stored = await (
                await conn.execute("SELECT envelope FROM tool_results WHERE call_key = %s", (key,))
            ).fetchone()
        assert stored is not None and Envelope.model_validate(stored[0]).payload == first.payload

        # A turn run again (a worker restart) asks for its call again: the stored answer.
        again = await answer(request(asked_before=True))
        assert again.payload == first.payload
        # A dead letter put back by `a0ctl dlq replay`: the same.
        replayed = await answer(request(), headers=[(REPLAY_COUNT_HEADER, b"1")])
        assert replayed.payload == first.payload
        assert tool_runs(settings) == before + 1
    finally:
        await producer.stop()
        await consumer.stop()
