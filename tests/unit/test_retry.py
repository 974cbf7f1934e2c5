"""The one way to retry and wait: the backoff schedule and the waits' deadlines."""

from __future__ import annotations

import time

import aiohttp
import pytest

from services.common.errors import http_call_failures
from services.common.retry import WaitTimeout, backoff, wait_until, wait_until_async

pytestmark = pytest.mark.unit


def test_backoff_grows_is_capped_and_jittered() -> None:
    for attempt in range(12):
        ceiling = min(10.0, 0.2 * 2**attempt)
        delays = [backoff(attempt, base=0.2, cap=10.0) for _ in range(200)]
        assert all(0 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 1  # full jitter: clients that failed together spread out
    assert max(backoff(10_000, base=0.2, cap=10.0) for _ in range(50)) <= 10.0  # no overflow


def test_wait_until_returns_the_first_true_value() -> None:
    answers = iter([None, 0, "ready"])
    assert wait_until(lambda: next(answers), timeout=5, interval=0.01, describe="x") == "ready"


def test_wait_until_names_what_it_waited_for() -> None:
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"gave up after 0.2 s waiting for port 1 to be free"):
        wait_until(lambda: False, timeout=0.2, interval=0.05, describe="port 1 to be free")
    assert 0.2 <= time.monotonic() - started < 1.0


def test_a_predicate_that_raises_ends_the_wait() -> None:
    def fatal() -> bool:
        raise RuntimeError("gave up")

    with pytest.raises(RuntimeError, match="gave up"):
        wait_until(fatal, timeout=5, describe="x")


def test_a_spent_deadline_still_asks_once() -> None:
    calls = []
    with pytest.raises(WaitTimeout):
        wait_until(lambda: calls.append(1), timeout=-1, describe="x")
    assert calls == [1]


async def test_wait_until_async() -> None:
    count = 0

    async def third_time() -> bool:
        nonlocal count
        count += 1
        return count == 3

    assert await wait_until_async(third_time, timeout=5, interval=0.01, describe="x") is True
    with pytest.raises(WaitTimeout, match="waiting for the broker"):
        await wait_until_async(_never, timeout=0.05, interval=0.01, describe="the broker")


async def _never() -> bool:
    return False


@pytest.mark.parametrize(
    "error",
    [TimeoutError(), ConnectionResetError(), aiohttp.ClientConnectionError(), aiohttp.ClientPayloadError()],
)
def test_http_call_failures(error: Exception) -> None:
    assert isinstance(error, http_call_failures())
    assert not isinstance(ValueError(), http_call_failures())
