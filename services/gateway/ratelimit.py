"""Per-user rate limits and load shedding, both in Redis so every replica shares them.

- Rate: ``INCR a0:rate:{user}:{epoch_minute}`` (+ ``EXPIRE 120``); past the per-minute
  budget the request is refused with 429 ``rate_limited`` until the next minute.
- Shedding: ``a0:turns:open`` counts accepted turns not yet finished (the worker DECRs it
  when a turn ends). A turn is reserved by INCR before it is accepted — atomic, so two
  replicas cannot both take the last slot — and released again if it is not accepted.

Both counters move in one pipelined round trip per message (:func:`admit`).
"""

from __future__ import annotations

import math
import time

from redis.asyncio import Redis

from services.common import metrics
from services.gateway.errors import Overloaded, RateLimited

OPEN_TURNS_KEY = "a0:turns:open"
RATE_KEY_TTL_S = 120
OVERLOADED_RETRY_AFTER_S = 2


def rate_key(user_id: str, now: float) -> str:
    return f"a0:rate:{user_id}:{int(now // 60)}"


def seconds_to_next_minute(now: float) -> int:
    """Whole seconds until the current rate window closes, at least 1."""
    return max(1, math.ceil((int(now // 60) + 1) * 60 - now))


def over_budget(count: int, per_minute: int) -> bool:
    return count > per_minute


def over_capacity(open_turns_after_reserve: int, max_inflight: int) -> bool:
    """True when the turns open *before* this reservation were already at the maximum."""
    return open_turns_after_reserve - 1 >= max_inflight


async def admit(
    redis: Redis, user_id: str, per_minute: int, max_inflight: int, now: float | None = None
) -> None:
    """Count the message against the user's rate and reserve a turn, in one round trip;
    undo the reservation and refuse with 429 when either is over its budget."""
    now = time.time() if now is None else now
    key = rate_key(user_id, now)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, RATE_KEY_TTL_S)
        pipe.incr(OPEN_TURNS_KEY)
        count, _, open_turns = await pipe.execute()
    if over_budget(int(count), per_minute):
        await release_turn(redis)
        metrics.SHED.labels("rate_limited").inc()
        retry_after = seconds_to_next_minute(now)
        raise RateLimited(
            f"more than {per_minute} messages a minute; try again in {retry_after} s", retry_after=retry_after
        )
    if over_capacity(int(open_turns), max_inflight):
        await release_turn(redis)
        metrics.SHED.labels("overloaded").inc()
        raise Overloaded(
            "the stack is at its limit of turns in flight; try again shortly",
            retry_after=OVERLOADED_RETRY_AFTER_S,
        )


async def release_turn(redis: Redis) -> None:
    await redis.decr(OPEN_TURNS_KEY)
