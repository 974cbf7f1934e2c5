"""What a turn of the backbone survives: unreadable records go to the dead-letter topics
and the consumers carry on; a worker, the broker or PostgreSQL killed or restarted
mid-turn, and the turn still arrives once, whole."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest

from a0ctl.runtime.local import LocalRuntime
from services.common.envelope import Envelope, EventType
from services.common.settings import Settings
from tests.support.gateway import (
    answer_text,
    auth,
    collect_turn,
    create_conversation,
    post_message,
    read_until,
    send_and_collect,
    sse_events,
    streaming_clients,
)
from tests.support.kafka import dead_letters, send_raw
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


_NO_SUCH_CONVERSATION = Envelope(
    type=EventType.USER_MESSAGE,
    conversation_id="no-such-conversation",
    turn_id="t-nowhere",
    user_id="alice",
    payload={"message_id": "m-nowhere", "content": "hello?"},
).to_bytes()


@pytest.mark.parametrize(
    ("value", "reason"),
    [(b"{not json", b"not JSON"), (_NO_SUCH_CONVERSATION, b"unknown conversation no-such-conversation")],
    ids=["not-json", "unknown-conversation"],
)
async def test_malformed_record_goes_to_dead_letter_and_consumer_carries_on(
    settings: Settings, client, value: bytes, reason: bytes
) -> None:
    async with dead_letters(settings, "dlq.conversation-worker") as dlq:
        await send_raw(settings, "conversation.inbound", value, key=b"poison")
        record = await dlq.next()
        assert record.offset >= dlq.start and record.value == value
        headers = dict(record.headers)
        assert (
            reason in headers["a0-dlq-reason"] and headers["a0-dlq-source-topic"] == b"conversation.inbound"
        )
    alice = auth(settings, "alice")
    events = await send_and_collect(client, alice, await create_conversation(client, alice), "hello again")
    assert events[-1]["type"] == "message.completed"


async def test_worker_killed_mid_turn_the_turn_completes_once(
    settings: Settings, client, stack: LocalRuntime
) -> None:
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    events = sse_events(client, headers, conversation_id)
    accepted = await post_message(client, headers, conversation_id, "long answer please")
    seen = await read_until(events, "message.delta")
    stack.kill_service("conversation-worker")
    await asyncio.to_thread(stack.up, services=("conversation-worker",))
    seen += await asyncio.wait_for(collect_turn(events, accepted["turn_id"]), 90)
    await events.aclose()
    seqs = [e["seq"] for e in seen]
    assert len(seqs) == len(set(seqs)) and seqs == sorted(seqs), seqs
    assert [e["type"] for e in seen].count("message.completed") == 1
    answer = answer_text(seen)
    assert answer == seen[-1]["payload"]["content"]  # no text lost, none repeated
    assert "word1 " in answer and "word150" in answer


async def survives_mid_turn(
    settings: Settings, client: httpx.AsyncClient, fault: Callable[[], Awaitable[None]]
) -> tuple[dict[str, str], str, list[dict]]:
    """Start a long answer, leave the stream after its first delta, run ``fault``, then
    resume from the last event seen, as a reconnecting client does. The whole turn must
    arrive once: contiguous seqs, one completion, the answer equal to its deltas."""
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    accepted = await post_message(client, headers, conversation_id, "long answer please")
    events = sse_events(client, headers, conversation_id)
    seen = await read_until(events, "message.delta")
    await events.aclose()
    await fault()

    # A 503 "try again" while the gateway replaces dead connections is what a client
    # retries through before resuming.
    async def answers() -> bool:
        response = await client.get(f"/v1/conversations/{conversation_id}", headers=headers)
        return response.status_code == 200

    await eventually(answers, 60, "the gateway answering again", poll_s=0.2)
    resumed = sse_events(client, headers, conversation_id, last_event_id=seen[-1]["seq"])
    seen += await asyncio.wait_for(collect_turn(resumed, accepted["turn_id"]), 120)
    await resumed.aclose()
    seqs = [e["seq"] for e in seen]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    assert [e["type"] for e in seen].count("message.completed") == 1
    assert answer_text(seen) == seen[-1]["payload"]["content"]
    return headers, conversation_id, seen


async def test_broker_killed_mid_turn_the_turn_completes_once(
    settings: Settings, client, stack: LocalRuntime
) -> None:
    async def kill_and_restart_kafka() -> None:
        stack.kill_service("kafka")  # returns once the broker is gone
        await asyncio.to_thread(stack.up, services=("kafka",))

    headers, conversation_id, seen = await survives_mid_turn(settings, client, kill_and_restart_kafka)
    # And the stack serves new turns after the broker's recovery.
    after = await send_and_collect(client, headers, conversation_id, "compute 6*7", after=seen[-1]["seq"])
    assert after[-1]["type"] == "message.completed" and "42" in after[-1]["payload"]["content"]


async def test_gateway_dead_letters_an_unreadable_outbound_record(settings: Settings, client) -> None:
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    events = sse_events(client, headers, conversation_id)
    before = await streaming_clients(client)
    following = asyncio.ensure_future(anext(events))  # someone follows the conversation here

    async def subscribed() -> bool:
        return await streaming_clients(client) > before

    await eventually(subscribed, 30, "the client subscribed")
    try:
        async with dead_letters(settings, "dlq.gateway") as dlq:
            await send_raw(settings, "conversation.outbound", b'{"type": 1}', key=conversation_id.encode())
            record = await dlq.next()
            assert (
                record.key == conversation_id.encode() and dict(record.headers)["a0-dlq-replica"] == b"gw-1"
            )
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await events.aclose()
    # The stream still works for that conversation.
    turn = await send_and_collect(client, headers, conversation_id, "hello")
    assert turn[-1]["type"] == "message.completed"


async def test_worker_dead_letters_an_unreadable_tool_result_and_tools_still_answer(
    settings: Settings, client
) -> None:
    async with dead_letters(settings, "dlq.conversation-worker") as dlq:
        await send_raw(settings, "tool.results", b"{not a result", key=b"poison")
        record = await dlq.next()
        headers = dict(record.headers)
        assert record.value == b"{not a result"
        assert b"not JSON" in headers["a0-dlq-reason"] and headers["a0-dlq-source-topic"] == b"tool.results"
    alice = auth(settings, "alice")
    events = await send_and_collect(client, alice, await create_conversation(client, alice), "compute 6*7")
    result = next(e for e in events if e["type"] == "tool.result")
    assert result["payload"]["output"] == "42" and events[-1]["type"] == "message.completed"


async def test_postgres_restarted_mid_turn_the_turn_completes_once(
    settings: Settings, client, stack: LocalRuntime
) -> None:
    async def restart_postgres() -> None:
        await asyncio.to_thread(stack.stop_service, "postgres")  # returns once it has stopped
        await asyncio.to_thread(stack.up, services=("postgres",))

    await survives_mid_turn(settings, client, restart_postgres)
