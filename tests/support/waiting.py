"""Waiting on a condition, never on the clock: poll until it holds (or a deadline passes
with an error that says what was awaited), or check that it keeps holding. The waits are
:mod:`services.common.retry`'s, failing as a test fails (AssertionError)."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable

from services.common import retry

POLL_S = 0.1


def wait_until(condition: Callable[[], object], timeout: float, what: str, poll_s: float = POLL_S) -> float:
    """Call ``condition`` until it returns something true; fail with ``what`` after
    ``timeout`` seconds. Returns the seconds it took."""
    started = time.monotonic()
    try:
        retry.wait_until(condition, timeout=timeout, interval=poll_s, describe=what)
    except retry.WaitTimeout:
        raise AssertionError(f"{what}: not within {timeout:g} s") from None
    return time.monotonic() - started


async def eventually(
    condition: Callable[[], object | Awaitable[object]], timeout: float, what: str, poll_s: float = POLL_S
) -> float:
    """:func:`wait_until` inside the event loop; ``condition`` may be a coroutine function."""

    async def holds() -> object:
        result = condition()
        return await result if inspect.isawaitable(result) else result

    started = time.monotonic()
    try:
        await retry.wait_until_async(holds, timeout=timeout, interval=poll_s, describe=what)
    except retry.WaitTimeout:
        raise AssertionError(f"{what}: not within {timeout:g} s") from None
    return time.monotonic() - started


def holds_for(condition: Callable[[], object], seconds: float, what: str, poll_s: float = 0.5) -> None:
    """Check ``condition`` again and again for ``seconds``: it must hold every time (for
    what must *not* happen, e.g. a given-up service must stay down across watchdog ticks)."""
    started = time.monotonic()
    while True:
        assert condition(), f"{what}: stopped holding"
        if time.monotonic() - started > seconds:
            return
        time.sleep(poll_s)
