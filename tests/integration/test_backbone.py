"""The messaging backbone end to end: gateway → Kafka → worker ⇄ tool executor → client.

Everything is real: the gateway, worker and tool executor processes, Kafka, Redis,
PostgreSQL, OPA; the upstream LLM is llm_sim, speaking the OpenAI protocol.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import psycopg
import pytest
import redis.asyncio
import websockets

from a0ctl.runtime.local import LocalRuntime
from services.common.auth import mint_token
from services.common.envelope import Envelope, EventType, new_id
from services.common.open_turns import OPEN_TURNS_KEY, OPEN_TURNS_QUERY
from services.common.settings import Settings
from services.common.topics import INBOUND
from tests.support.gateway import (
    answer_text,
    auth,
    collect_turn,
    comparable,
    create_conversation,
    post_message,
    read_until,
    send_and_collect,
    sse_events,
    streaming_clients,
)
from tests.support.kafka import dead_letters, send_raw
from tests.support.metrics import scrape, value
from tests.support.processes import running_gateway
from tests.support.sandbox import sandboxed_processes, wait_until_no_sandboxed_processes
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.mark.milestone("M2")
async def test_rest_message_streams_answer_with_tool_call_over_sse(settings: Settings, client) -> None:
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    events = await send_and_collect(client, headers, conversation_id, "compute 6*7")
    types = [e["type"] for e in events]
    assert types[0] == "message.accepted" and types[-1] == "message.completed"
    assert "tool.call" in types and "tool.result" in types
    call = next(e for e in events if e["type"] == "tool.call")
    result = next(e for e in events if e["type"] == "tool.result")
    assert (
        call["payload"]["name"] == "calculator" and call["payload"]["call_id"] == result["payload"]["call_id"]
    )
    assert result["payload"]["output"] == "42"
    assert "42" in events[-1]["payload"]["content"]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs)) and all(str(e["seq"]) == e["_sse_id"] for e in events)
    assert all(e["_sse_event"] == e["type"] for e in events)


async def test_websocket_carries_the_same_events_as_sse(settings: Settings, client) -> None:
    headers = auth(settings, "alice")
    via_sse = await send_and_collect(
        client, headers, await create_conversation(client, headers), "compute 6*7"
    )
    conversation_id = await create_conversation(client, headers)
    token = mint_token(settings, "alice")
    # As a browser does, which cannot set headers: the token in the first message.
    async with websockets.connect(settings.gateway_url.replace("http", "ws") + "/v1/ws") as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        await ws.send(json.dumps({"type": "subscribe", "conversation_id": conversation_id, "after": 0}))
        await ws.send(
            json.dumps(
                {
                    "type": "message",
                    "conversation_id": conversation_id,
                    "content": "compute 6*7",
                    "request_id": "r1",
                }
            )
        )
        via_ws: list[dict] = []
        turn_id = None
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if message["type"] == "ack":
                turn_id = message["turn_id"]
                continue
            assert "seq" in message, message
            via_ws.append(message)
            if message["type"] == "message.completed":
                break
    assert turn_id and all(e["turn_id"] == turn_id for e in via_ws)

    # Same prompt, same deterministic upstream: the same events, payloads included, except
    # ids that are per message (message_id) or per conversation (tool call ids).
    def normalised(events: list[dict]) -> list[tuple[str, str]]:
        out = []
        for kind, payload in comparable(events):
            data = json.loads(payload)
            data.pop("message_id", None)
            data.pop("call_id", None)
            data.pop("seconds", None)
            out.append((kind, json.dumps(data, sort_keys=True)))
        return out

    assert normalised(via_ws) == normalised(via_sse)


async def test_multi_turn_second_answer_depends_on_the_first(settings: Settings, client) -> None:
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    first = await send_and_collect(client, headers, conversation_id, "remember banana")
    second = await send_and_collect(
        client, headers, conversation_id, "what did I ask you to remember?", after=first[-1]["seq"]
    )
    assert "banana" in second[-1]["payload"]["content"]
    history = (await client.get(f"/v1/conversations/{conversation_id}", headers=headers)).json()
    assert [m["role"] for m in history["messages"]] == ["user", "assistant", "user", "assistant"]


async def test_cancel_mid_stream_stops_the_answer(settings: Settings, client) -> None:
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    events = sse_events(client, headers, conversation_id)
    accepted = await post_message(client, headers, conversation_id, "long answer please")
    seen = await read_until(events, "message.delta")
    response = await client.post(
        f"/v1/conversations/{conversation_id}/cancel", json={"turn_id": accepted["turn_id"]}, headers=headers
    )
    assert response.status_code == 202
    seen += await asyncio.wait_for(collect_turn(events, accepted["turn_id"]), 30)
    await events.aclose()
    types = [e["type"] for e in seen]
    assert types[-1] == "cancelled" and "message.completed" not in types
    assert len(answer_text(seen).split()) < 150  # stopped well before the ~200 words
    # The conversation's next turn is handled after the cancel (one conversation is
    # strictly ordered): once it is answered, the cancelled turn has had every chance
    # to leak more text.
    cancelled_at = seen[-1]["seq"]
    following = await send_and_collect(client, headers, conversation_id, "compute 6*7", after=cancelled_at)
    assert following[-1]["type"] == "message.completed"
    history = (await client.get(f"/v1/conversations/{conversation_id}", headers=headers)).json()
    leaked = [e for e in history["events"] if e["seq"] > cancelled_at and e["turn_id"] == accepted["turn_id"]]
    assert leaked == []  # nothing of the cancelled turn was streamed after "cancelled"


async def test_a_cancel_that_arrives_while_the_turn_starts_still_stops_it(settings: Settings, client) -> None:
    """``cancel`` without a turn id, handled while the worker is starting the turn (its
    first statement, which stores its ``message.accepted`` too, is held up here by an
    uncommitted row of the same turn): once the turn has started, it ends as cancelled."""
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    events = sse_events(client, headers, conversation_id)
    turn_id = new_id()
    message = Envelope(
        type=EventType.USER_MESSAGE,
        conversation_id=conversation_id,
        turn_id=turn_id,
        user_id="alice",
        payload={"message_id": new_id(), "content": "long answer please"},
    )
    consumed = {"group": "a0-conversation-worker", "topic": INBOUND}
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn) as holder:
        await holder.execute(
            "INSERT INTO turns (turn_id, conversation_id, status) VALUES (%s, %s, 'queued')",
            (turn_id, conversation_id),
        )
        await send_raw(settings, INBOUND, message.to_bytes(), conversation_id.encode())

        async def starting() -> bool:
            waiting = await holder.execute(
                "SELECT count(*) FROM pg_locks w JOIN pg_locks mine ON w.transactionid = mine.transactionid "
                "WHERE mine.pid = pg_backend_pid() AND mine.granted AND NOT w.granted"
            )
            row = await waiting.fetchone()
            return bool(row and row[0])

        await eventually(starting, 30, "the worker waiting to start the turn")
        before = value(scrape(settings), "a0_messages_consumed_total", **consumed)
        cancel = await client.post(f"/v1/conversations/{conversation_id}/cancel", json={}, headers=headers)
        assert cancel.status_code == 202, cancel.text
        await eventually(
            lambda: value(scrape(settings), "a0_messages_consumed_total", **consumed) > before,
            30,
            "the worker took the cancel",
        )
        await holder.commit()
    seen = await asyncio.wait_for(collect_turn(events, turn_id), 60)
    await events.aclose()
    types = [e["type"] for e in seen]
    assert types[0] == "message.accepted" and types[-1] == "cancelled", types
    assert "message.completed" not in types and "message.delta" not in types
    following = await send_and_collect(client, headers, conversation_id, "compute 6*7", after=seen[-1]["seq"])
    assert following[-1]["type"] == "message.completed"


@pytest.mark.parametrize(
    ("prompt", "code"),
    [("compute 1/0", "tool_failed"), ("please use the shell", "denied")],
    ids=["tool-raises", "tool-denied-by-opa"],
)
async def test_failing_or_denied_tool_reaches_client_and_turn_completes(
    settings: Settings, client, prompt: str, code: str
) -> None:
    headers = auth(settings, "alice")
    events = await send_and_collect(client, headers, await create_conversation(client, headers), prompt)
    result = next(e for e in events if e["type"] == "tool.result")
    assert result["payload"]["error"]["code"] == code, result
    assert events[-1]["type"] == "message.completed"
    assert "failed" in events[-1]["payload"]["content"]


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


async def test_sse_reconnect_with_last_event_id_has_no_gap_and_no_duplicate(
    settings: Settings, client
) -> None:
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    events = sse_events(client, headers, conversation_id)
    accepted = await post_message(client, headers, conversation_id, "long answer please")
    first_part = await read_until(events, "message.delta", count=3)
    await events.aclose()  # disconnect mid-answer

    async def answered_on_meanwhile() -> bool:
        history = (await client.get(f"/v1/conversations/{conversation_id}", headers=headers)).json()
        return any(e["seq"] > first_part[-1]["seq"] for e in history["events"])

    await eventually(answered_on_meanwhile, 30, "more of the answer while the client is away")
    resumed = sse_events(client, headers, conversation_id, last_event_id=first_part[-1]["seq"])
    second_part = await asyncio.wait_for(collect_turn(resumed, accepted["turn_id"]), 60)
    await resumed.aclose()
    seqs = [e["seq"] for e in first_part + second_part]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # contiguous: no gap, no duplicate
    assert answer_text(first_part + second_part) == second_part[-1]["payload"]["content"]


async def test_message_posted_on_one_gateway_streams_to_a_client_on_another(
    settings: Settings, client, tmp_path: Path
) -> None:
    with running_gateway(tmp_path, A0_GATEWAY_REPLICA="gw-2") as other_url:
        async with httpx.AsyncClient(base_url=other_url, timeout=30) as other:
            assert (await other.get("/health")).json()["replica"] == "gw-2"
            headers = auth(settings, "alice")
            conversation_id = await create_conversation(client, headers)
            # Subscribed before the message exists: what arrives is the live fan-out.
            events = sse_events(other, headers, conversation_id)
            first = asyncio.ensure_future(anext(events))
            await eventually(lambda: streaming_clients(other), 30, "the client subscribed on gw-2")
            accepted = await post_message(client, headers, conversation_id, "compute 2+3")

            async def rest():
                yield await first
                async for event in events:
                    yield event

            turn = await asyncio.wait_for(collect_turn(rest(), accepted["turn_id"]), 60)
            await events.aclose()
    assert turn[-1]["type"] == "message.completed" and "5" in turn[-1]["payload"]["content"]


async def test_a_gateway_that_knows_a_conversation_still_sees_its_policy_change_and_its_deletion(
    settings: Settings, client, tmp_path: Path
) -> None:
    """A gateway that already took messages for a conversation authorizes the next ones
    without reading its row; a change made through another replica still holds."""
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    url = f"/v1/conversations/{conversation_id}/messages"
    events = sse_events(client, headers, conversation_id)
    first = await post_message(client, headers, conversation_id, "compute 1+1")
    await asyncio.wait_for(collect_turn(events, first["turn_id"]), 60)
    await events.aclose()
    with running_gateway(tmp_path, A0_GATEWAY_REPLICA="gw-2") as other_url:
        async with httpx.AsyncClient(base_url=other_url, timeout=30) as other:
            changed = await other.patch(
                f"/v1/conversations/{conversation_id}", json={"policy": "reject"}, headers=headers
            )
            assert changed.status_code == 200, changed.text
            await post_message(client, headers, conversation_id, "long answer please")
            refused = await client.post(url, json={"content": "and now?"}, headers=headers)
            assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict", refused.text

            bob = await client.post(url, json={"content": "hi"}, headers=auth(settings, "bob"))
            assert bob.status_code == 404, bob.text

            deleted = await other.delete(f"/v1/conversations/{conversation_id}", headers=headers)
            assert deleted.status_code == 204, deleted.text
    gone = await client.post(url, json={"content": "still there?"}, headers=headers)
    assert gone.status_code == 404, gone.text
    assert gone.json()["error"]["message"] == f"no conversation {conversation_id}"


async def test_gateway_sheds_load_with_429_and_retry_after(settings: Settings, tmp_path: Path) -> None:
    with running_gateway(tmp_path, A0_GATEWAY_RATE_PER_USER_PER_MIN="2") as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as limited:
            headers = auth(settings, "ratelimited-user")
            conversation_id = await create_conversation(limited, headers)
            for _ in range(2):
                await post_message(limited, headers, conversation_id, "hello")
            refused = await limited.post(
                f"/v1/conversations/{conversation_id}/messages",
                json={"content": "one too many"},
                headers=headers,
            )
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert 0 < int(refused.headers["retry-after"]) <= 60


async def test_past_its_turns_in_flight_the_gateway_sheds_with_429_until_a_turn_ends(
    settings: Settings, tmp_path: Path
) -> None:
    # The budget is shared by every replica (a Redis counter, reconciled with the turns
    # table every few seconds): room for exactly one more turn than are open now.
    # Wait until earlier tests' turns have ended and the counter agrees with the table.
    seen: list[int] = []
    async with (
        await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True) as db,
        redis.asyncio.from_url(settings.redis_url) as store,
    ):

        async def settled() -> bool:
            row = await (await db.execute(OPEN_TURNS_QUERY)).fetchone()
            seen.append(int(row[0]) if row else 0)
            counter = int(await store.get(OPEN_TURNS_KEY) or 0)
            return len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3] == counter

        await eventually(settled, 30, "open turns steady and the counter agreeing", poll_s=0.5)
    open_now = seen[-1]
    with running_gateway(tmp_path, A0_GATEWAY_MAX_INFLIGHT_TURNS=str(open_now + 1)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as gateway:
            headers = auth(settings, "shed-user")
            busy = await create_conversation(gateway, headers)
            other = await create_conversation(gateway, headers)
            events = sse_events(gateway, headers, busy)
            accepted = await post_message(gateway, headers, busy, "long answer please")
            refused = await gateway.post(
                f"/v1/conversations/{other}/messages", json={"content": "hello"}, headers=headers
            )
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "overloaded"
            assert int(refused.headers["retry-after"]) >= 1
            turn = await asyncio.wait_for(collect_turn(events, accepted["turn_id"]), 60)
            await events.aclose()
            assert turn[-1]["type"] == "message.completed"

            # The answered turn gave its slot back: the next message is accepted.
            async def accepted_again() -> bool:
                again = await gateway.post(
                    f"/v1/conversations/{other}/messages", json={"content": "hello"}, headers=headers
                )
                assert again.status_code in (202, 429), again.text
                return again.status_code == 202

            await eventually(accepted_again, 5, "a message accepted once the turn ended")


async def test_cancel_kills_a_running_tool_process(settings: Settings, client) -> None:
    # The sandbox shares no file with the host: its processes are watched from outside.
    code = "import time\nwhile True:\n    time.sleep(0.05)"
    before = sandboxed_processes(settings.tools.run_as)  # other stacks' on this machine
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)
    events = sse_events(client, headers, conversation_id)
    accepted = await post_message(client, headers, conversation_id, f"run python: {code}")
    await read_until(events, "tool.call")
    await eventually(
        lambda: sandboxed_processes(settings.tools.run_as, before), 10, "the tool's process started"
    )
    await client.post(
        f"/v1/conversations/{conversation_id}/cancel", json={"turn_id": accepted["turn_id"]}, headers=headers
    )
    rest = await asyncio.wait_for(collect_turn(events, accepted["turn_id"]), 10)
    await events.aclose()
    assert rest[-1]["type"] == "cancelled"
    await wait_until_no_sandboxed_processes(settings.tools.run_as, timeout=5, besides=before)


async def test_another_user_cannot_read_or_write_a_conversation(settings: Settings, client) -> None:
    alice, bob = auth(settings, "alice"), auth(settings, "bob")
    conversation_id = await create_conversation(client, alice)
    for method, path, body in [
        ("GET", f"/v1/conversations/{conversation_id}", None),
        ("GET", f"/v1/conversations/{conversation_id}/events", None),
        ("POST", f"/v1/conversations/{conversation_id}/messages", {"content": "hi"}),
        ("POST", f"/v1/conversations/{conversation_id}/cancel", {}),
    ]:
        response = await client.request(method, path, json=body, headers=bob)
        # Not 403: that would confirm the id exists. Same answer as for no conversation.
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"] == {
            "code": "not_found",
            "message": f"no conversation {conversation_id}",
            "request_id": response.headers["x-request-id"],
        }
    listed = (await client.get("/v1/conversations", headers=bob)).json()["conversations"]
    assert conversation_id not in [c["id"] for c in listed]
    url = settings.gateway_url.replace("http", "ws") + "/v1/ws"
    async with websockets.connect(url, additional_headers=auth(settings, "bob")) as ws:
        for target in (conversation_id, "nope"):
            await ws.send(json.dumps({"type": "subscribe", "conversation_id": target, "request_id": target}))
            answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert answer["type"] == "error" and answer["conversation_id"] == target, answer
            assert answer["error"]["code"] == "not_found" and answer["error"]["request_id"] == target


async def test_bad_requests_get_the_error_shape_and_status(settings: Settings, client) -> None:
    alice = auth(settings, "alice")
    conversation_id = await create_conversation(client, alice)
    url = f"/v1/conversations/{conversation_id}/messages"
    cases = [
        (await client.post(url, json={"content": "hi"}), 401, "unauthorized"),
        (
            await client.post(url, json={"content": "hi"}, headers={"Authorization": "Bearer nope"}),
            401,
            "unauthorized",
        ),
        (
            await client.post(
                url, content=b"{not json", headers={**alice, "Content-Type": "application/json"}
            ),
            400,
            "malformed_json",
        ),
        (await client.post(url, json={"content": ""}, headers=alice), 422, "invalid_request"),
        (await client.post(url, json={"content": "x" * 200_000}, headers=alice), 413, "payload_too_large"),
        (
            await client.post("/v1/conversations/nope/messages", json={"content": "hi"}, headers=alice),
            404,
            "not_found",
        ),
        (await client.get("/v1/conversations/nope/events", headers=alice), 404, "not_found"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code and error["message"] and error["request_id"]
        assert response.headers["x-request-id"] == error["request_id"]


def test_smoke_passes_with_the_end_to_end_roundtrip(stack: LocalRuntime) -> None:
    from tests.support.cli import a0ctl

    result = a0ctl("smoke", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["ok"] is True, report
    checks = {c["name"]: c for c in report["checks"]}
    assert {"gateway", "consumer lag", "end-to-end roundtrip"} <= set(checks)
    assert "42" in checks["end-to-end roundtrip"]["detail"]


async def test_second_message_follows_the_conversation_policy(settings: Settings, client) -> None:
    headers = auth(settings, "alice")
    rejecting = await create_conversation(client, headers, title="reject", policy="reject")
    await post_message(client, headers, rejecting, "long answer please")
    refused = await client.post(
        f"/v1/conversations/{rejecting}/messages", json={"content": "and now?"}, headers=headers
    )
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"

    interrupting = await create_conversation(client, headers, title="interrupt", policy="interrupt")
    events = sse_events(client, headers, interrupting)
    first = await post_message(client, headers, interrupting, "long answer please")
    await read_until(events, "message.delta")
    second = await post_message(client, headers, interrupting, "hello after interrupt")
    outcomes: dict[str, str] = {}
    async for event in events:
        if event["type"] in ("message.completed", "cancelled", "error"):
            outcomes[event["turn_id"]] = event["type"]
            if len(outcomes) == 2:
                break
    await events.aclose()
    assert outcomes == {first["turn_id"]: "cancelled", second["turn_id"]: "message.completed"}


async def test_enqueued_messages_run_one_after_another(settings: Settings, client) -> None:
    headers = auth(settings, "alice")
    conversation_id = await create_conversation(client, headers)  # default policy: enqueue
    events = sse_events(client, headers, conversation_id)
    first = await post_message(client, headers, conversation_id, "remember kiwi")
    second = await post_message(client, headers, conversation_id, "what did I ask you to remember?")
    finished = []
    async for event in events:
        if event["type"] == "message.completed":
            finished.append(event)
            if len(finished) == 2:
                break
    await events.aclose()
    assert [e["turn_id"] for e in finished] == [first["turn_id"], second["turn_id"]]
    assert "kiwi" in finished[1]["payload"]["content"]


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
