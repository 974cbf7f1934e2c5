"""Per-user rate limits and load shedding, both in Redis so every replica shares them.

- Rate: ``INCR a0:rate:{user}:{epoch_minute}`` (+ ``EXPIRE 120``); past the per-minute
  budget the request is refused with 429 ``rate_limited`` until the next minute.
- Shedding: ``a0:turns:open`` counts accepted turns not yet finished (the worker DECRs it
  when a turn ends). A turn is reserved by INCR before it is accepted — atomic, so two
  replicas cannot both take the last slot — and released again if it is not accepted.

Both counters move in one pipelined round trip per message (:func:`admit`); the open-turn
counter is set from the turns table every few seconds (:func:`reconcile_open_turns`), so
a lost reservation cannot hold a slot for good.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

import psycopg
import psycopg_pool
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common import metrics
from services.gateway.errors import Overloaded, RateLimited

log = logging.getLogger("a0.gateway")

OPEN_TURNS_KEY = "a0:turns:open"
RATE_KEY_TTL_S = 120
OVERLOADED_RETRY_AFTER_S = 5
SNAPSHOT_S = 0.1


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


@dataclass
class OpenTurns:
    """A recent reading of the open-turn counter, shared by a process's requests. Past
    capacity, a message is shed on this reading before any database, policy or rate
    work — shedding must cost less than serving, or a crowd retrying after 429s is the
    overload. At most one Redis read per ``SNAPSHOT_S``; :func:`admit` stays the exact
    check."""

    redis: Redis
    value: int = 0
    read_at: float = float("-inf")

    async def at_capacity(self, max_inflight: int) -> bool:
        now = time.monotonic()
        if now - self.read_at >= SNAPSHOT_S:
            self.read_at = now  # before the read: one request refreshes, the rest use it
            self.value = int(await self.redis.get(OPEN_TURNS_KEY) or 0)
        return self.value >= max_inflight


def overloaded() -> Overloaded:
    metrics.SHED.labels("overloaded").inc()
    return Overloaded(
        "the stack is at its limit of turns in flight; try again shortly",
        retry_after=OVERLOADED_RETRY_AFTER_S,
    )


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
        raise overloaded()


RECONCILE_S = 5.0
# Turns a client still waits for: queued or running, and moving. A turn left behind
# (a record dead-lettered before it began) stops counting after this long.
OPEN_TURNS_QUERY = """
SELECT count(*) FROM turns
WHERE status IN ('queued', 'running') AND updated_at > now() - interval '10 minutes'
"""


async def reconcile_open_turns(redis: Redis, pool: AsyncConnectionPool) -> None:
    """Keep the budget of open turns true: every ``RECONCILE_S`` set the counter to the
    turns table's count. A reservation lost on its way (a request cancelled between its
    INCR and its DECR, a process killed) would otherwise hold a slot forever, and enough
    of them shed every message. Runs until cancelled; errors wait for the next round."""
    while True:
        await asyncio.sleep(RECONCILE_S)
        try:
            async with pool.connection(timeout=5) as conn:
                row = await (await conn.execute(OPEN_TURNS_QUERY)).fetchone()
            counted = int(row[0]) if row else 0
            stale = int(await redis.get(OPEN_TURNS_KEY) or 0)
            if stale != counted:
                await redis.set(OPEN_TURNS_KEY, counted)
                if abs(stale - counted) > 2:  # small differences are reservations in flight
                    log.info("open turns reconciled: %d counted, %d were reserved", counted, stale)
        except (OSError, psycopg.Error, psycopg_pool.PoolTimeout, RedisError) as exc:
            log.warning("open turns not reconciled: %s", exc)


async def release_turn(redis: Redis) -> None:
    await redis.decr(OPEN_TURNS_KEY)
