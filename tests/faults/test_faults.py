"""Faults under load, one at a time (the harness: :mod:`tests.support.faults`)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx
import psycopg
import pytest

from a0ctl.runtime.local import LocalRuntime
from services.common.settings import Settings
from services.gateway.main import POOL_CONNECTIONS
from tests.support.cli import a0ctl
from tests.support.faults import restart, restarted, service_back, sigkill, under_load
from tests.support.gateway import auth, create_conversation, read_until, send_and_collect, sse_events
from tests.support.processes import running_sim
from tests.support.waiting import eventually

pytestmark = pytest.mark.faults

# Longer than redis-py's own reconnection attempts (ten, each after at most 1 s).
REDIS_OUTAGE_S = 20


async def test_worker_sigkilled_under_load(settings: Settings, stack: LocalRuntime) -> None:
    await under_load(
        settings, stack, "SIGKILL worker", "conversation-worker", sigkill(stack, "conversation-worker")
    )


async def test_tool_executor_sigkilled_under_load(settings: Settings, stack: LocalRuntime) -> None:
    await under_load(
        settings, stack, "SIGKILL tool executor", "tool-executor", sigkill(stack, "tool-executor")
    )


async def test_broker_sigkilled_under_load(settings: Settings, stack: LocalRuntime) -> None:
    await under_load(settings, stack, "SIGKILL broker", "kafka", sigkill(stack, "kafka"))


async def test_gateway_sigkilled_under_load_leaves_every_session_alive(
    settings: Settings, stack: LocalRuntime
) -> None:
    """Every session's stream and requests were cut: each reconnected with backoff, as a
    browser would, and went on; nothing was lost or shown twice."""
    report = await under_load(settings, stack, "SIGKILL gateway", "gateway", sigkill(stack, "gateway"))
    assert report.failed_sessions == 0, report.causes
    # At least every session's stream reconnected once.
    assert report.reconnects >= report.sessions, report.reconnects


async def test_redis_restarted_under_load(settings: Settings, stack: LocalRuntime) -> None:
    await under_load(settings, stack, "restart Redis", "redis", restart(stack, "redis"))


async def test_postgres_restarted_under_load(settings: Settings, stack: LocalRuntime) -> None:
    await under_load(settings, stack, "restart PostgreSQL", "postgres", restart(stack, "postgres"))


@pytest.mark.milestone("M5")
async def test_workers_scaled_up_and_down_under_load(settings: Settings, stack: LocalRuntime) -> None:
    async def scale_up_and_down() -> None:
        scaled = await asyncio.to_thread(a0ctl, "scale", "conversation-worker=3")
        assert scaled.returncode == 0, scaled.stderr
        assert stack.pid("conversation-worker-3") is not None
        scaled = await asyncio.to_thread(a0ctl, "scale", "conversation-worker=1")
        assert scaled.returncode == 0, scaled.stderr
        assert stack.pid("conversation-worker-2") is None

    await under_load(settings, stack, "scale workers 1 -> 3 -> 1", None, scale_up_and_down)


async def test_gateway_renews_its_connections_after_postgres_restarts(
    settings: Settings, stack: LocalRuntime
) -> None:
    """A restart of PostgreSQL loses every connection the gateway keeps open. The first
    request to meet a lost one is answered 503 and has the pool check the others, so
    the requests after it find fresh connections: at most one 503 per gateway process,
    not one per pooled connection."""
    headers = auth(settings, "postgres-restart")
    async with httpx.AsyncClient(base_url=settings.gateway_url, timeout=30) as client:
        await create_conversation(client, headers)
        await restarted(stack, "postgres")
        statuses = []
        for _ in range(2 * POOL_CONNECTIONS):
            response = await client.post("/v1/conversations", json={"title": "after"}, headers=headers)
            statuses.append(response.status_code)
    refused = statuses.count(503)
    assert refused <= settings.gateway.workers, statuses
    assert statuses.count(201) == len(statuses) - refused, statuses


async def test_changed_key_is_picked_up_after_redis_was_down(
    settings: Settings, stack: LocalRuntime, tmp_path: Path
) -> None:
    """The worker caches a user's key and drops it on a change notice from Redis. Redis
    down for longer than its client's own reconnection attempts must not leave the
    worker deaf to notices: a key changed after Redis is back is used at once."""
    headers = auth(settings, "redis-outage")
    worker_pid = stack.pid("conversation-worker")
    async with httpx.AsyncClient(base_url=settings.gateway_url, timeout=30) as client:

        async def turn(content: str) -> dict:
            events = await send_and_collect(
                client, headers, await create_conversation(client, headers), content
            )
            return events[-1]

        with running_sim(tmp_path) as first:
            body = {"base_url": first.base_url, "model": "a0-sim-1", "api_key": first.api_key}
            assert (
                await client.put("/v1/settings/credentials/openai", json=body, headers=headers)
            ).status_code == 200
            assert (await turn("one"))["type"] == "message.completed"
        await asyncio.to_thread(stack.stop_service, "redis")
        await asyncio.sleep(REDIS_OUTAGE_S)
        await restarted(stack, "redis", timeout=60)
        # The first provider is gone; the worker must use the second at once.
        with running_sim(tmp_path) as second:
            body = {"base_url": second.base_url, "model": "a0-sim-1", "api_key": second.api_key}

            async def saved() -> bool:  # the gateway's own Redis connections may still be coming back
                put = await client.put("/v1/settings/credentials/openai", json=body, headers=headers)
                return put.status_code == 200

            await eventually(saved, 30, "the new key saved")
            last = await turn("two")
            assert last["type"] == "message.completed", last
    assert stack.pid("conversation-worker") == worker_pid  # same process: no restart


async def test_a_message_sent_while_redis_is_down_is_refused_with_503(
    settings: Settings, stack: LocalRuntime
) -> None:
    """Redis down: a new message is refused with 503 ``unavailable`` in the one error
    shape (nothing accepted, try again) by the gateway's handlers. An error that escaped
    them would still be answered, but uvicorn then drops the connection, which a client
    may see as a reset before the answer. Once Redis is back, the next message is
    accepted."""
    headers = auth(settings, "redis-down")
    log = stack.log_path("gateway")
    async with httpx.AsyncClient(base_url=settings.gateway_url, timeout=30) as client:
        url = f"/v1/conversations/{await create_conversation(client, headers)}/messages"
        since = log.stat().st_size
        await asyncio.to_thread(stack.stop_service, "redis")
        try:
            await asyncio.sleep(0.5)  # past the gateway's last reading of the open turns
            refused = await client.post(url, json={"content": "compute 6*7"}, headers=headers)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "unavailable", refused.text
        finally:
            await asyncio.to_thread(stack.restart, "redis")
        logged = log.read_bytes()[since:].decode(errors="replace")
        assert "Exception in ASGI application" not in logged, logged[-2000:]

        async def accepted() -> bool:
            return (
                await client.post(url, json={"content": "compute 6*7"}, headers=headers)
            ).status_code == 202

        await eventually(accepted, 30, "a message accepted once Redis is back")


async def _gateway_wrote_the_turn(settings: Settings, conversation_id: str) -> bool:
    """The message's turn is written, committed or not: a turn row of the conversation,
    or a gateway transaction open (waiting for the broker's ack)."""
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn) as conn:
        row = await (
            await conn.execute(
                "SELECT EXISTS (SELECT 1 FROM turns WHERE conversation_id = %s) OR EXISTS (SELECT 1 "
                "FROM pg_stat_activity WHERE application_name LIKE 'a0-gateway%%' "
                "AND state = 'idle in transaction')",
                (conversation_id,),
            )
        ).fetchone()
    return bool(row and row[0])


async def _turns_of(settings: Settings, conversation_id: str) -> list[str]:
    """The statuses of the conversation's stored turns."""
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn) as conn:
        rows = await (
            await conn.execute("SELECT status FROM turns WHERE conversation_id = %s", (conversation_id,))
        ).fetchall()
    return [status for (status,) in rows]


async def test_gateway_leaves_no_turn_open_for_a_message_the_broker_never_acked(
    settings: Settings, stack: LocalRuntime
) -> None:
    """The broker is down. A message refused with 503 leaves no turn; nor does one whose
    gateway is SIGKILLed while it waits for the broker's ack, its turn written. Neither
    message reached Kafka, so the ``reject`` conversation takes the next message once
    the broker and the gateway are back, and answers it."""
    headers = auth(settings, "broker-never-acked")
    async with httpx.AsyncClient(base_url=settings.gateway_url, timeout=30) as client:
        conversation_id = await create_conversation(client, headers, title="reject", policy="reject")
        url = f"/v1/conversations/{conversation_id}/messages"
        gateway_pid = stack.pid("gateway")
        await asyncio.to_thread(stack.stop_service, "kafka")
        try:
            refused = await client.post(url, json={"content": "compute 6*7"}, headers=headers)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "unavailable", refused.text
            assert await _turns_of(settings, conversation_id) == []

            sending = asyncio.create_task(client.post(url, json={"content": "compute 6*7"}, headers=headers))

            async def waiting_for_the_ack() -> bool:
                assert not sending.done(), sending.result().text  # the publish must wait
                return await _gateway_wrote_the_turn(settings, conversation_id)

            await eventually(waiting_for_the_ack, 8, "the gateway waiting for the broker, the turn written")
            assert await asyncio.to_thread(stack.kill_service, "gateway") is not None
            with contextlib.suppress(httpx.HTTPError):
                await sending
        finally:
            await restarted(stack, "kafka")

        async def gateway_back() -> bool:
            return await service_back(stack, "gateway", gateway_pid)

        await eventually(gateway_back, 90, "the gateway running and healthy again")
        assert await _turns_of(settings, conversation_id) == []

        async def accepted() -> bool:
            return (
                await client.post(url, json={"content": "compute 6*7"}, headers=headers)
            ).status_code == 202

        await eventually(accepted, 60, "the next message accepted once the broker is back")
        events = sse_events(client, headers, conversation_id)
        try:
            last = (await asyncio.wait_for(read_until(events, "message.completed"), 60))[-1]
        finally:
            await events.aclose()
        assert "42" in last["payload"]["content"], last
