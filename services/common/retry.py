"""The one way a0 retries and waits: a backoff schedule, and a wait for a condition.

:func:`backoff` is capped exponential backoff with full jitter (a random delay up to
``base * 2**attempt``, at most ``cap``), so clients that failed together do not retry
together; :class:`Backoff` keeps the attempt count for a loop. :func:`wait_until` and :func:`wait_until_async` ask a predicate until it
holds or the time is up, then raise :class:`WaitTimeout` naming what was waited for.
Whether a failure is worth retrying is :func:`services.common.errors.is_transient`'s
call, not this module's.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """A wait ran out of time; the message names what it waited for."""

    def __init__(self, describe: str, timeout: float) -> None:
        super().__init__(f"gave up after {timeout:g} s waiting for {describe}")
        self.describe = describe
        self.timeout = timeout


def backoff(attempt: int, *, base: float, cap: float) -> float:
    """The delay before retry ``attempt`` (0 for the first retry): uniform in
    ``[0, min(cap, base * 2**attempt)]``."""
    ceiling = cap if attempt >= 64 else min(cap, base * 2**attempt)
    return random.uniform(0, ceiling)


class Backoff:
    """:func:`backoff` for a loop that counts its own failures: each :meth:`next` is the
    next attempt's delay; :meth:`reset` after a success starts the schedule over."""

    def __init__(self, *, base: float, cap: float) -> None:
        self.base, self.cap = base, cap
        self.attempt = 0

    def next(self) -> float:
        delay = backoff(self.attempt, base=self.base, cap=self.cap)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


def wait_until(predicate: Callable[[], T], *, timeout: float, interval: float = 0.1, describe: str) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something true, and
    return that; :class:`WaitTimeout` after ``timeout`` seconds. An exception the
    predicate raises ends the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(describe, timeout)
        time.sleep(min(interval, remaining))


async def wait_until_async(
    predicate: Callable[[], Awaitable[T]],
    *,
    timeout: float,
    interval: float = 0.1,
    describe: str,
) -> T:
    """:func:`wait_until` for a coroutine predicate, sleeping without blocking the loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(describe, timeout)
        await asyncio.sleep(min(interval, remaining))
