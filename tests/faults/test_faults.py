"""Faults under load, one at a time (the harness: :mod:`tests.support.faults`)."""

from __future__ import annotations

import asyncio

import pytest

from a0ctl.runtime.local import LocalRuntime
from services.common.settings import Settings
from tests.support.cli import a0ctl
from tests.support.faults import restart, sigkill, under_load

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
