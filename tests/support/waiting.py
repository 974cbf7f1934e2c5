"""Waiting on a condition, never on the clock: poll until it holds (or a deadline passes
with an error that says what was awaited), or check that it keeps holding."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

POLL_S = 0.1


def wait_until(condition: Callable[[], object], timeout: float, what: str, poll_s: float = POLL_S) -> float:
    """Call ``condition`` until it returns something true; fail with ``what`` after
    ``timeout`` seconds. Returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(poll_s)
    return time.monotonic() - started


async def eventually(
    condition: Callable[[], object | Awaitable[object]], timeout: float, what: str, poll_s: float = POLL_S
) -> float:
    """:func:`wait_until` inside the event loop; ``condition`` may be a coroutine function."""
    started = time.monotonic()
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(poll_s)


def holds_for(condition: Callable[[], object], seconds: float, what: str, poll_s: float = 0.5) -> None:
    """Check ``condition`` again and again for ``seconds``: it must hold every time (for
    what must *not* happen, e.g. a given-up service must stay down across watchdog ticks)."""
    started = time.monotonic()
    while True:
        assert condition(), f"{what}: stopped holding"
        if time.monotonic() - started > seconds:
            return
        time.sleep(poll_s)
