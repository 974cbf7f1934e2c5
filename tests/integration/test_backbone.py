"""The messaging backbone end to end: gateway → Kafka → worker ⇄ tool executor → client.

Everything is real: the gateway, worker and tool executor processes, Kafka, Redis,
PostgreSQL, OPA; the upstream LLM is llm_sim, speaking the OpenAI protocol.
"""

from __future__ import annotations

import asyncio
import json

import psycopg
import pytest
import websockets

from a0ctl.runtime.local import LocalRuntime
from services.common.auth import mint_token
from services.common.envelope import Envelope, EventType, new_id
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
)
from tests.support.kafka import send_raw
from tests.support.metrics import scrape, value
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
