"""Per-user rate limits and load shedding, both in Redis so every replica shares them.

- Rate: ``INCR a0:rate:{user}:{epoch_minute}`` (+ ``EXPIRE 120``); past the per-minute
  budget the request is refused with 429 ``rate_limited`` until the next minute.
- Shedding: the budget of open turns (:mod:`services.common.open_turns`, shared with
  the worker, which releases a turn's slot when it ends). A turn is reserved before it
  is accepted and released again if it is not accepted. The budget is measured, not
  fixed: as many turns as the stack ends in ``A0_GATEWAY_SHED_TURN_S`` at the rate it
  ends them now (:class:`OpenTurns`), so shedding starts when turns queue, not at a count.

Both counters move in one pipelined round trip per message (:func:`admit`).

A shed request is told when to come back (``Retry-After``), paced by :class:`ShedPacer`:
the busier the refusals, the later, so a crowd retrying does not become the overload.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis

from services.common import metrics, open_turns
from services.common.errors import is_transient
from services.gateway.errors import Overloaded, RateLimited

RATE_KEY_TTL_S = 120
OVERLOADED_RETRY_AFTER_S = 5
PENDING_RETRY_AFTER_S = 2
SNAPSHOT_S = 0.1
# The rate turns end at is read over the latest readings of this much time (from the last
# one before it, when readings are sparse), and only from readings MIN_RATE_SPAN_S apart.
RATE_WINDOW_S = 3.0
MIN_RATE_SPAN_S = 0.5
# Refusals a second one gateway process answers before it tells the crowd to come back later.
SHED_PACE_PER_S = 100.0
MAX_RETRY_AFTER_S = 60


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
    """A recent reading of the open-turn counter, shared by a process's requests, and the
    budget it is held to. Past the budget, a message is shed on this reading before any
    database, policy or rate work — shedding must cost less than serving, or a crowd
    retrying after 429s is the overload. At most one Redis read per ``SNAPSHOT_S``;
    :func:`admit` stays the exact check.

    The budget is measured: the turns the stack ends in ``turn_s`` at the rate it has
    ended them over the last ``RATE_WINDOW_S`` (the counter of ended turns, read in the
    same command), and never fewer than the configured floor. By Little's law the open
    turns over that rate are the mean time a turn stays open, so a message is shed when
    turns take longer than ``turn_s`` on average — when they queue for a core, a
    connection or a consumer — and not while the stack keeps up, however many are open.
    Until turns end (a stack just started), the floor alone holds.

    A reading that fails (Redis restarting) keeps the last one: this check runs before the
    request reaches the handlers that answer a backing store's failure, and the exact
    check then answers it with 503."""

    redis: Redis
    turn_s: float = 1.0
    value: int = 0
    read_at: float = float("-inf")
    # (when, turns ended so far) of the readings within RATE_WINDOW_S, oldest first.
    ended: deque[tuple[float, int]] = field(default_factory=deque)

    def note_ended(self, at: float, ended: int) -> None:
        """Keep one reading of the ended-turns counter: those of the last ``RATE_WINDOW_S``
        and the one before them, so readings taken seconds apart (a quiet gateway) still
        give the rate since the last. A counter that went back (Redis restarted empty)
        starts again."""
        if self.ended and ended < self.ended[-1][1]:
            self.ended.clear()
        self.ended.append((at, ended))
        while len(self.ended) > 1 and at - self.ended[1][0] >= RATE_WINDOW_S:
            self.ended.popleft()

    def ending_per_s(self) -> float:
        """Turns ended a second over the window, 0 until it spans ``MIN_RATE_SPAN_S``."""
        if len(self.ended) < 2:
            return 0.0
        (first_at, first), (last_at, last) = self.ended[0], self.ended[-1]
        span = last_at - first_at
        return (last - first) / span if span >= MIN_RATE_SPAN_S else 0.0

    def budget(self, floor: int) -> int:
        """Turns that may be open: what the stack ends in ``turn_s``, at least ``floor``."""
        return max(floor, int(self.ending_per_s() * self.turn_s))

    async def at_capacity(self, floor: int) -> bool:
        now = time.monotonic()
        if now - self.read_at >= SNAPSHOT_S:
            self.read_at = now  # before the read: one request refreshes, the rest use it
            try:
                self.value, ended = await open_turns.read_with_ended(self.redis)
            except Exception as exc:
                if not is_transient(exc):
                    raise
            else:
                self.note_ended(now, ended)
                metrics.TURN_BUDGET.set(self.budget(floor))
        return self.value >= self.budget(floor)


class ShedPacer:
    """``Retry-After`` for shed requests: a base wait, stretched while this process sheds
    more than ``pace_per_s`` requests a second. Clients that wait as told come back
    spread over the longer wait, so the refusal rate settles near the pace instead of
    growing with the crowd. Adjusted once a second (by the square root of the ratio, so
    it neither overshoots nor swings), back to the base wait as refusals stop."""

    def __init__(
        self,
        pace_per_s: float = SHED_PACE_PER_S,
        max_s: int = MAX_RETRY_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pace_per_s = pace_per_s
        self.max_s = max_s
        self._clock = clock
        self.stretch = 1.0
        self._window_at = clock()
        self._shed = 0

    def retry_after(self, base_s: int) -> int:
        """Count one refusal and say how long its client should wait, in whole seconds."""
        now = self._clock()
        elapsed = now - self._window_at
        if elapsed >= 1.0:
            rate = self._shed / elapsed
            self.stretch = min(self.max_s, max(1.0, self.stretch * math.sqrt(rate / self.pace_per_s)))
            self._window_at, self._shed = now, 0
        self._shed += 1
        return min(self.max_s, max(base_s, math.ceil(base_s * self.stretch)))


PACER = ShedPacer()


def overloaded() -> Overloaded:
    metrics.SHED.labels("overloaded").inc()
    return Overloaded(
        "the stack is at its limit of turns in flight (turns are queueing); try again shortly",
        retry_after=PACER.retry_after(OVERLOADED_RETRY_AFTER_S),
    )


async def admit(
    redis: Redis, user_id: str, per_minute: int, max_inflight: int, now: float | None = None
) -> None:
    """Count the message against the user's rate and reserve a turn, in one round trip;
    undo the reservation and refuse with 429 when either is over its budget."""
    now = time.time() if now is None else now
    key = rate_key(user_id, now)
    # Not a MULTI/EXEC transaction (two more commands): each command is atomic on its own,
    # and nothing here needs them applied together.
    async with redis.pipeline(transaction=False) as pipe:
        pipe.incr(key)
        pipe.expire(key, RATE_KEY_TTL_S)
        open_turns.reserve(pipe)
        count, _, open_now = await pipe.execute()
    if over_budget(int(count), per_minute):
        await open_turns.release(redis)
        metrics.SHED.labels("rate_limited").inc()
        retry_after = seconds_to_next_minute(now)
        raise RateLimited(
            f"more than {per_minute} messages a minute; try again in {retry_after} s", retry_after=retry_after
        )
    if over_capacity(int(open_now), max_inflight):
        await open_turns.release(redis)
        raise overloaded()
