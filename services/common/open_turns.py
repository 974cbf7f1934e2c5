"""The budget of open turns, shared by every gateway replica and worker through Redis.

``a0:turns:open`` counts accepted turns not yet ended: a gateway reserves a slot before
it accepts a message (:func:`reserve`, atomic, so two replicas cannot both take the
last one) and gives it back when the message is not accepted (:func:`release`); the
worker releases it when the turn ends (:func:`end`), and counts the turn in
``a0:turns:ended`` in the same round trip. Gateways shed new messages past the budget,
sized from how fast turns end (``services.gateway.ratelimit.OpenTurns``), and set the
counter from the turns table every few seconds (:func:`reconcile`), so a lost
reservation cannot hold a slot for good.
"""

from __future__ import annotations

import logging

from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from services.common.errors import is_transient
from services.common.ticks import sleep_to_tick
from services.common.turns import OPEN_SQL

log = logging.getLogger(__name__)

OPEN_TURNS_KEY = "a0:turns:open"
# Turns ended since Redis started: its rate is how many turns the stack ends a second.
ENDED_TURNS_KEY = "a0:turns:ended"
RECONCILE_S = 5.0
# Turns a client still waits for: queued or running, and moving. A turn left behind
# (a record dead-lettered before it began) stops counting after this long.
OPEN_TURNS_QUERY = f"""
SELECT count(*) FROM turns
WHERE status IN {OPEN_SQL} AND updated_at > now() - interval '10 minutes'
"""


def reserve(pipe: Pipeline) -> None:
    """Queue the reservation of a slot on ``pipe``; its result is the count after it."""
    pipe.incr(OPEN_TURNS_KEY)


async def read(redis: Redis) -> int:
    return int(await redis.get(OPEN_TURNS_KEY) or 0)


async def read_with_ended(redis: Redis) -> tuple[int, int]:
    """The open turns and the turns ended so far, in one command."""
    open_now, ended = await redis.mget(OPEN_TURNS_KEY, ENDED_TURNS_KEY)
    return int(open_now or 0), int(ended or 0)


async def release(redis: Redis) -> None:
    """Give a slot back. Never below zero: a turn reconciled away may still end."""
    if await redis.decr(OPEN_TURNS_KEY) < 0:
        await redis.set(OPEN_TURNS_KEY, 0)


async def end(redis: Redis) -> None:
    """A turn ended: give its slot back and count it, in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.decr(OPEN_TURNS_KEY)
        pipe.incr(ENDED_TURNS_KEY)
        open_now, _ = await pipe.execute()
    if int(open_now) < 0:
        await redis.set(OPEN_TURNS_KEY, 0)


async def reconcile(redis: Redis, pool: AsyncConnectionPool) -> None:
    """Keep the budget true: every ``RECONCILE_S`` set the counter to the turns table's
    count. A reservation lost on its way (a request cancelled between its INCR and its
    DECR, a process killed) would otherwise hold a slot forever, and enough of them shed
    every message. While the table counted none and the counter still reads zero, no slot
    can be held, so an idle stack's round is one Redis read (a turn opened since took a
    reservation: the counter is above zero). Runs until cancelled; errors wait for the
    next round."""
    counted = -1  # not counted yet
    while True:
        await sleep_to_tick(RECONCILE_S)
        try:
            stale = await read(redis)
            if stale == 0 and counted == 0:
                continue
            async with pool.connection(timeout=5) as conn:
                row = await (await conn.execute(OPEN_TURNS_QUERY)).fetchone()
            counted = int(row[0]) if row else 0
            stale = await read(redis)
            if stale != counted:
                await redis.set(OPEN_TURNS_KEY, counted)
                if abs(stale - counted) > 2:  # small differences are reservations in flight
                    log.info("open turns reconciled: %d counted, %d were reserved", counted, stale)
        except Exception as exc:  # the next round tries again; a bug is logged in full
            if is_transient(exc):
                log.warning("open turns not reconciled: %s", exc)
            else:
                log.exception("open turns not reconciled")
