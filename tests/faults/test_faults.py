"""Faults under load, one at a time (the harness: :mod:`tests.support.faults`)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from a0ctl.runtime.local import LocalRuntime
from services.common.settings import Settings
from services.gateway.main import POOL_CONNECTIONS
from tests.support.cli import a0ctl
from tests.support.faults import restart, service_back, sigkill, under_load
from tests.support.gateway import auth, create_conversation
from tests.support.waiting import eventually

pytestmark = pytest.mark.faults


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


async def test_redis_restarted_under_load(settings: Settings, stack: LocalRuntime) -> None:
    await under_load(settings, stack, "restart Redis", "redis", restart(stack, "redis"))


async def test_postgres_restarted_under_load(settings: Settings, stack: LocalRuntime) -> None:
    await under_load(settings, stack, "restart PostgreSQL", "postgres", restart(stack, "postgres"))


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
        old_pid = stack.pid("postgres")
        await asyncio.to_thread(stack.restart, "postgres")

        async def back() -> bool:
            return await service_back(stack, "postgres", old_pid)

        await eventually(back, 90, "postgres running and healthy again")
        statuses = []
        for _ in range(2 * POOL_CONNECTIONS):
            response = await client.post("/v1/conversations", json={"title": "after"}, headers=headers)
            statuses.append(response.status_code)
    refused = statuses.count(503)
    assert refused <= settings.gateway.workers, statuses
    assert statuses.count(201) == len(statuses) - refused, statuses
