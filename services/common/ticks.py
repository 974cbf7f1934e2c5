"""Periodic work of one process, woken together.

Each periodic task of a service (the event-loop lag probe, the HTTP server's tick, the
consumers' commit and lag rounds, the partition followers' polls, the open-turns
reconciliation, the quiet collection, the worker's catalog refresh and transcript sweep,
the executor's catalog refresh and MCP pings) used to sleep its interval from whenever it
last woke, so each had a phase of its own and an idle process woke for each of them
separately. Waiting until the next multiple of the interval on the event loop's clock
instead puts every task of the same interval (and the 1 s ones under the 5 s ones) on
the same instant: the loop runs them in one wake-up.
"""

from __future__ import annotations

import asyncio
import math


def until_tick(interval_s: float) -> float:
    """Seconds from now to the next multiple of ``interval_s`` on the running loop's
    clock (a whole interval when now is one)."""
    now = asyncio.get_running_loop().time()
    return (math.floor(now / interval_s) + 1) * interval_s - now


def until_tick_ms(interval_s: float) -> int:
    """:func:`until_tick` in whole milliseconds, rounded up, for clients that take ms."""
    return math.ceil(until_tick(interval_s) * 1000)


async def sleep_to_tick(interval_s: float) -> None:
    """Sleep until the next multiple of ``interval_s`` on the loop's clock."""
    await asyncio.sleep(until_tick(interval_s))
