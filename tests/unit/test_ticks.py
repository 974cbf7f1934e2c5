"""Periodic tasks of one process wake together (services/common/ticks.py)."""

from __future__ import annotations

import asyncio

from services.common.ticks import sleep_to_tick, until_tick, until_tick_ms


async def test_tasks_started_apart_wake_on_the_same_tick() -> None:
    loop = asyncio.get_running_loop()
    woke: list[list[float]] = [[], []]

    async def periodic(index: int) -> None:
        while True:
            await sleep_to_tick(0.05)
            woke[index].append(loop.time())

    first = asyncio.create_task(periodic(0))
    await asyncio.sleep(0.017)  # the second starts at another phase
    second = asyncio.create_task(periodic(1))
    await asyncio.sleep(0.2)
    first.cancel()
    second.cancel()
    shared = min(len(woke[0]), len(woke[1]))
    assert shared >= 2
    # The same instants: one wake-up of the loop runs both.
    for a, b in zip(woke[0][-shared:], woke[1][-shared:], strict=True):
        assert abs(a - b) < 0.003


async def test_until_tick_is_at_most_one_interval() -> None:
    for interval in (0.05, 1.0, 5.0):
        assert 0 < until_tick(interval) <= interval
        assert 0 < until_tick_ms(interval) <= interval * 1000 + 1
