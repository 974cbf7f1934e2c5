"""Dead letters through ``a0ctl dlq`` on the real stack: a message to a conversation the
worker does not know is dead-lettered, listed and shown (secrets masked), replayed once
after its cause is fixed, not replayed in a loop when it fails again, and discarded;
every replay and discard is on the audit topic, with who and when."""

from __future__ import annotations

import getpass
import json
import socket
from typing import Any

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from a0ctl.runtime.local import LocalRuntime
from services.common.envelope import Envelope, EventType, new_id
from services.common.kafka import client_options
from services.common.settings import Settings
from services.common.topics import INBOUND
from tests.support.cli import a0ctl, a0ctl_json
from tests.support.gateway import auth, collect_turn, post_message, sse_events
from tests.support.kafka import dead_letters, send_raw

pytestmark = pytest.mark.integration

DLQ = "dlq.conversation-worker"
SECRET = "sk-dlqsecret0123456789"


def message_to(conversation_id: str, content: str) -> Envelope:
    return Envelope(
        type=EventType.USER_MESSAGE,
        conversation_id=conversation_id,
        turn_id=new_id(),
        user_id="alice",
        payload={"message_id": new_id(), "content": content},
    )


async def dead_lettered(settings: Settings, envelope: Envelope) -> str:
    """Send ``envelope`` to conversation.inbound as a producer would; the id of the dead
    letter the worker makes of it."""
    async with dead_letters(settings, DLQ) as dlq:
        await send_raw(settings, INBOUND, envelope.to_bytes(), key=envelope.conversation_id.encode())
        while (record := await dlq.next()).key != envelope.conversation_id.encode():
            pass
    return f"{record.topic}:{record.partition}:{record.offset}"


def entries(*args: str) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in a0ctl_json("dlq", "list", *args)["entries"]}


async def audit_records(settings: Settings, entry: str) -> list[dict[str, Any]]:
    """The audit topic's records about ``entry``, read as any Kafka client would."""
    consumer = AIOKafkaConsumer(
        **client_options(settings), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tp = TopicPartition("dlq.audit", 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, (await consumer.beginning_offsets([tp]))[tp])
        found = []
        while await consumer.position(tp) < end:
            for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                if record.key == entry.encode():
                    found.append(json.loads(record.value or b""))
        return found
    finally:
        await consumer.stop()


async def test_a_dead_letter_is_listed_and_shown_with_where_and_why_and_no_secret(
    settings: Settings, stack: LocalRuntime
) -> None:
    conversation_id = new_id()
    envelope = message_to(conversation_id, f"my key is {SECRET}, keep it")
    entry = await dead_lettered(settings, envelope)

    listed = entries("--topic", DLQ)[entry]
    assert listed["source_topic"] == INBOUND and listed["source_offset"] >= 0
    assert listed["reason"] == f"unknown conversation {conversation_id}"
    assert listed["replica"] and listed["state"] == "pending" and listed["replay_count"] == 0
    assert listed["key"] == conversation_id and listed["envelope"]["id"] == envelope.id

    shown = a0ctl("dlq", "show", entry)
    assert shown.returncode == 0, shown.stderr
    assert f"unknown conversation {conversation_id}" in shown.stdout and INBOUND in shown.stdout
    assert "my key is ***" in shown.stdout
    table = a0ctl("dlq", "list")
    assert entry in table.stdout and f"unknown conversation {conversation_id}" in table.stdout
    for output in (shown.stdout, table.stdout, json.dumps(listed)):
        assert SECRET not in output

    missing = a0ctl("dlq", "show", f"{DLQ}:0:999999999")
    assert missing.returncode == 1 and f"no dead letter {DLQ}:0:999999999" in missing.stderr


async def test_a_replay_after_the_cause_is_fixed_is_answered_once(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    conversation_id = new_id()
    envelope = message_to(conversation_id, "hello from before the conversation existed")
    entry = await dead_lettered(settings, envelope)
    # The cause: the conversation's row was missing (e.g. restored from a backup since).
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True) as db:
        await db.execute(
            "INSERT INTO conversations (id, owner_id, title) VALUES (%s, 'alice', 'restored')",
            (conversation_id,),
        )

    replayed = a0ctl("dlq", "replay", entry)
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed {entry} → {INBOUND}:" in replayed.stdout
    alice = auth(settings, "alice")
    events = sse_events(client, alice, conversation_id, last_event_id=0)
    try:
        turn = await collect_turn(events, envelope.turn_id)
    finally:
        await events.aclose()
    assert turn[0]["type"] == "message.accepted" and turn[-1]["type"] == "message.completed"

    again = a0ctl("dlq", "replay", entry)
    assert again.returncode == 1 and "already replayed by" in again.stderr
    forced = a0ctl("dlq", "replay", entry, "--force")
    assert forced.returncode == 0, forced.stderr
    # The conversation is ordered: once a later message is answered, the forced replay was handled.
    later = await post_message(client, alice, conversation_id, "and now?")
    events = sse_events(client, alice, conversation_id, last_event_id=0)
    try:
        seen = []
        async for event in events:
            seen.append(event)
            if event["turn_id"] == later["turn_id"] and event["type"] == "message.completed":
                break
    finally:
        await events.aclose()
    completed = [e for e in seen if e["type"] == "message.completed" and e["turn_id"] == envelope.turn_id]
    assert len(completed) == 1

    shown = a0ctl_json("dlq", "show", entry)
    assert shown["state"] == "replayed"
    assert [(h["action"], h["forced"]) for h in shown["history"]] == [("replay", False), ("replay", True)]
    assert all(h["replayed_to"].startswith(f"{INBOUND}:") for h in shown["history"])
    assert entry not in entries()


async def test_a_replay_that_fails_again_comes_back_once_and_is_not_replayed_in_a_loop(
    settings: Settings,
) -> None:
    conversation_id = new_id()
    entry = await dead_lettered(settings, message_to(conversation_id, "nobody will create this one"))

    async with dead_letters(settings, DLQ) as dlq:
        assert a0ctl("dlq", "replay", entry).returncode == 0
        while (record := await dlq.next()).key != conversation_id.encode():
            pass
    back = f"{record.topic}:{record.partition}:{record.offset}"
    returned = entries("--topic", DLQ)[back]
    assert returned["replay_count"] == 1 and returned["source_topic"] == INBOUND
    assert returned["reason"] == f"unknown conversation {conversation_id}"

    every = json.loads(a0ctl("dlq", "replay", "--all", "--topic", DLQ, "--json").stdout)
    assert back not in [d["entry"] for d in every["done"]]
    assert "replaying it again would loop" in every["skipped"][back]
    one = a0ctl("dlq", "replay", back)
    assert one.returncode == 1 and "failed again after 1 replay(s)" in one.stderr

    cleared = json.loads(a0ctl("dlq", "discard", "--all", "--topic", DLQ, "--json").stdout)
    assert back in [d["entry"] for d in cleared["done"]]
    assert (
        back not in entries("--topic", DLQ) and entries("--topic", DLQ, "--all")[back]["state"] == "discarded"
    )


async def test_a_discard_is_recorded_with_who_and_when_and_the_entry_is_no_longer_pending(
    settings: Settings,
) -> None:
    entry = await dead_lettered(settings, message_to(new_id(), "discard me"))

    discarded = a0ctl("dlq", "discard", entry)
    assert discarded.returncode == 0, discarded.stderr
    assert f"discarded {entry}" in discarded.stdout
    assert entry not in entries()
    handled = entries("--all")[entry]
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    assert handled["state"] == "discarded" and handled["history"][0]["by"] == who
    [audit] = await audit_records(settings, entry)
    assert audit["action"] == "discard" and audit["by"] == who and audit["at"]

    twice = a0ctl("dlq", "discard", entry)
    assert twice.returncode == 1 and "already discarded" in twice.stderr
    replay = a0ctl("dlq", "replay", entry)
    assert replay.returncode == 1 and "already discarded by" in replay.stderr
