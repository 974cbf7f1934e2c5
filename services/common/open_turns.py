"""The budget of open turns, shared by every gateway replica and worker through Redis.

``a0:turns:open`` counts accepted turns not yet ended: a gateway reserves a slot before
it accepts a message (:func:`reserve`, atomic, so two replicas cannot both take the
last one) and gives it back when the message is not accepted (:func:`release`); the
worker releases it when the turn ends (:func:`end`), and counts the turn in
``a0:turns:ended`` in the same round trip. Gateways shed new messages past the budget,
sized from how fast turns end (``services.gateway.ratelimit.OpenTurns``), and correct
the counter by the turns table every few seconds (:func:`reconcile`), so a lost
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


class Reconciler:
    """Keeps the counter true to the turns table, one :meth:`round` at a time.

    A reservation lost on its way (a request cancelled between its INCR and its DECR, a
    process killed) would otherwise hold a slot forever, and enough of them shed every
    message. But the counter also runs ahead of the table for a moment on every turn: a
    gateway reserves before its row commits, and the worker ends a turn's row before it
    gives the slot back. Setting the counter to the table's count would erase those, and
    let one more turn in than the budget allows. So an excess is taken back only as far
    as it also stood at the last round (a lost reservation stays lost; one in flight is
    gone within milliseconds), and a shortfall (Redis restarted empty) is made up at once;
    both by DECRBY, so that reservations made meanwhile stay."""

    def __init__(self, redis: Redis, pool: AsyncConnectionPool, key: str = OPEN_TURNS_KEY) -> None:
        self.redis, self.pool, self.key = redis, pool, key
        self.counted = -1  # not counted yet
        self.excess = 0  # how far the counter stood above the count at the last round

    async def round(self) -> None:
        """Count the table and correct the counter by what is lost for sure. While the
        table counted none and the counter still reads zero, no slot can be held, so an
        idle stack's round is one Redis read (a turn opened since took a reservation:
        the counter is above zero)."""
        if self.counted == 0 and int(await self.redis.get(self.key) or 0) == 0:
            self.excess = 0
            return
        async with self.pool.connection(timeout=5) as conn:
            row = await (await conn.execute(OPEN_TURNS_QUERY)).fetchone()
        self.counted = int(row[0]) if row else 0
        excess = int(await self.redis.get(self.key) or 0) - self.counted
        correction = min(excess, self.excess) if excess > 0 else excess
        self.excess = excess - correction
        if correction:
            if await self.redis.decrby(self.key, correction) < 0:
                await self.redis.set(self.key, 0)
            if abs(correction) > 2:
                log.info("open turns reconciled: %d counted, %+d corrected", self.counted, -correction)


async def reconcile(redis: Redis, pool: AsyncConnectionPool) -> None:
    """A :class:`Reconciler` round every ``RECONCILE_S``, until cancelled; errors wait for
    the next round."""
    reconciler = Reconciler(redis, pool)
    while True:
        await sleep_to_tick(RECONCILE_S)
        try:
            await reconciler.round()
        except Exception as exc:  # the next round tries again; a bug is logged in full
            if is_transient(exc):
                log.warning("open turns not reconciled: %s", exc)
            else:
                log.exception("open turns not reconciled")
