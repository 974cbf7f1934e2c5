"""Outbound events to clients: one Kafka consumer per process feeds an in-memory hub, and
each client subscription merges the hub with the events table so it sees every event of
its conversation once, in order — across reconnects, replicas and broker restarts.

The consumer has no group: each replica follows every partition of
``conversation.outbound`` from the end (:class:`~services.common.tail.PartitionTail`;
what came before is in PostgreSQL, where the worker writes each event before
publishing it). A subscription registers its queue
first, then replays ``events`` past its cursor, then follows the queue, skipping what it
already delivered and filling any gap from the table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError

from services.common import metrics
from services.common.envelope import CLIENT_EVENTS, Envelope, EventType
from services.common.errors import A0Error
from services.common.settings import Settings
from services.common.tail import PartitionTail
from services.common.topics import OUTBOUND, dead_letter_topic
from services.gateway import store

log = logging.getLogger("a0.gateway.fanout")

QUEUE_SIZE = 1000
PAGE = 500


class SlowConsumer(A0Error):
    """The client fell more than a queue behind; close its stream, it resumes on reconnect."""


class Step(Enum):
    DUPLICATE = "duplicate"  # already delivered: skip
    NEXT = "next"  # exactly the following seq: deliver
    GAP = "gap"  # later than the next seq: fill the gap from the table first


@dataclass
class Cursor:
    """The last seq delivered to one client."""

    last: int = 0

    def step(self, seq: int) -> Step:
        if seq <= self.last:
            return Step.DUPLICATE
        return Step.NEXT if seq == self.last + 1 else Step.GAP

    def advance(self, seq: int) -> None:
        self.last = max(self.last, seq)


class _Resync:
    """Queued to every subscriber after the consumer (re)connects: re-read the table."""


RESYNC = _Resync()


@dataclass(eq=False)
class Subscriber:
    conversation_id: str
    queue: asyncio.Queue[Envelope | _Resync] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    overflowed: bool = False


class Hub:
    """conversation_id → the queues of the clients following it, in this process."""

    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self._subscribers: dict[str, set[Subscriber]] = {}

    def __contains__(self, conversation_id: object) -> bool:
        return conversation_id in self._subscribers

    def __len__(self) -> int:
        return sum(len(subs) for subs in self._subscribers.values())

    def subscribe(self, conversation_id: str) -> Subscriber:
        subscriber = Subscriber(conversation_id, asyncio.Queue(self.queue_size))
        self._subscribers.setdefault(conversation_id, set()).add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        subs = self._subscribers.get(subscriber.conversation_id)
        if subs is None:
            return
        subs.discard(subscriber)
        if not subs:
            del self._subscribers[subscriber.conversation_id]

    def _offer(self, subscriber: Subscriber, item: Envelope | _Resync) -> bool:
        try:
            subscriber.queue.put_nowait(item)
            return True
        except asyncio.QueueFull:
            # Never block the consumer for one slow client: drop it, it resumes from the table.
            subscriber.overflowed = True
            self.unsubscribe(subscriber)
            return False

    def publish(self, envelope: Envelope) -> int:
        """Queue an event for every subscriber of its conversation; returns how many took it."""
        return sum(
            self._offer(s, envelope) for s in list(self._subscribers.get(envelope.conversation_id, ()))
        )

    def resync_all(self) -> None:
        for subs in list(self._subscribers.values()):
            for subscriber in list(subs):
                self._offer(subscriber, RESYNC)


def envelope_from_row(data: Any) -> Envelope:
    """An ``events.envelope`` JSONB value back into the envelope the worker published."""
    return (
        Envelope.model_validate_json(data) if isinstance(data, str | bytes) else Envelope.model_validate(data)
    )


async def load_events(
    pool: AsyncConnectionPool, conversation_id: str, after: int, before: int | None = None
) -> AsyncIterator[Envelope]:
    """Stored events with ``after < seq < before``, in order, a page at a time."""
    cursor = after
    while True:
        rows = await _read_through(store.event_page(pool, conversation_id, cursor, before, PAGE))
        for envelope in _decoded(conversation_id, rows):
            yield envelope
        if len(rows) < PAGE:
            return
        cursor = int(rows[-1][0])


def _decoded(conversation_id: str, rows: list[Any]) -> Iterator[Envelope]:
    """``(seq, envelope)`` rows as envelopes; one this version cannot read is skipped."""
    for seq, data in rows:
        try:
            yield envelope_from_row(data)
        except ValidationError as exc:
            log.error("skipping unreadable event %s#%s: %s", conversation_id, seq, exc)


@dataclass
class Opening:
    """What a stream needs before it starts: who owns the conversation (to authorize
    the reader) and the first page of its stored events past the cursor."""

    owner_id: str
    events: list[Envelope]
    complete: bool  # the page holds every stored event past the cursor


async def read_opening(pool: AsyncConnectionPool, conversation_id: str, after: int) -> Opening | None:
    """The conversation's :class:`Opening`, in one statement; None if there is no such
    conversation."""
    rows = await _read_through(store.opening(pool, conversation_id, after, PAGE))
    if not rows:
        return None
    page = [(seq, data) for _, seq, data in rows if seq is not None]
    return Opening(rows[0][0], list(_decoded(conversation_id, page)), complete=len(page) < PAGE)


async def _read_through(read: Coroutine[Any, Any, list[Any]]) -> list[Any]:
    # A client gone while the rows are read (a closed tab, a reconnect) cancels the read:
    # it finishes anyway and hands its connection back, which psycopg would otherwise
    # close (a query interrupted by cancellation) and the pool open again.
    return await asyncio.shield(_finishing(read))


# Page reads in progress, held until they end: one may outlive its subscription.
_reads: set[asyncio.Task[Any]] = set()


def _finishing(read: Coroutine[Any, Any, list[Any]]) -> asyncio.Task[list[Any]]:
    """A task for ``read`` that runs to its end even if nobody awaits it any more. Its
    subscription, if still there, gets the error itself; one that was cancelled meanwhile
    has nobody to tell, so the error is only noted at debug level."""
    task = asyncio.ensure_future(read)
    _reads.add(task)
    task.add_done_callback(_ended)
    return task


def _ended(task: asyncio.Task[Any]) -> None:
    _reads.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.debug("a page read ended with %r", exc)


class EventLoader(Protocol):
    """Stored events of a conversation with ``after < seq < before``, in order."""

    def __call__(
        self, conversation_id: str, after: int, before: int | None = None
    ) -> AsyncIterator[Envelope]: ...


def table_loader(pool: AsyncConnectionPool) -> EventLoader:
    """The events table as an :class:`EventLoader`."""

    def load(conversation_id: str, after: int, before: int | None = None) -> AsyncIterator[Envelope]:
        return load_events(pool, conversation_id, after, before)

    return load


class Subscription:
    """One client following one conversation from a cursor. Use it as
    ``async with Subscription(...) as events`` and ``async for envelope in events``;
    ``load`` reads the stored events (:func:`table_loader`).

    A stream that read its first events itself (:func:`read_opening`) calls
    :meth:`register` before the read and :meth:`prime` after it."""

    def __init__(self, hub: Hub, load: EventLoader, conversation_id: str, after: int) -> None:
        self.hub = hub
        self.load = load
        self.conversation_id = conversation_id
        self.cursor = Cursor(after)
        self._subscriber: Subscriber | None = None
        self._stream: AsyncGenerator[Envelope, None] | None = None
        self._first: Opening | None = None

    def register(self) -> None:
        """Queue live events from now on: before the table is read, so that nothing
        published in between is missed."""
        if self._subscriber is None:
            self._subscriber = self.hub.subscribe(self.conversation_id)

    def prime(self, opening: Opening) -> None:
        """Start with ``opening``'s events, read after :meth:`register`."""
        self._first = opening

    def close(self) -> None:
        """Stop queueing live events; safe to call more than once."""
        if self._subscriber is not None:
            self.hub.unsubscribe(self._subscriber)

    async def __aenter__(self) -> AsyncIterator[Envelope]:
        self.register()
        assert self._subscriber is not None
        self._stream = self._events(self._subscriber)
        return self._stream

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        if self._stream is not None:
            await self._stream.aclose()

    def _new(self, envelope: Envelope) -> bool:
        if self.cursor.step(envelope.seq) is Step.DUPLICATE:
            return False
        self.cursor.advance(envelope.seq)
        return True

    async def _stored(self, before: int | None = None) -> AsyncIterator[Envelope]:
        async for envelope in self.load(self.conversation_id, self.cursor.last, before):
            if self._new(envelope):
                yield envelope

    async def _events(self, subscriber: Subscriber) -> AsyncGenerator[Envelope, None]:
        first, self._first = self._first, None
        for envelope in first.events if first is not None else ():
            if self._new(envelope):
                yield envelope
        if first is None or not first.complete:
            async for envelope in self._stored():
                yield envelope
        while True:
            if subscriber.overflowed:
                raise SlowConsumer(f"client fell {self.hub.queue_size} events behind")
            item = await subscriber.queue.get()
            if isinstance(item, _Resync):
                async for envelope in self._stored():
                    yield envelope
                continue
            step = self.cursor.step(item.seq)
            if step is Step.DUPLICATE:
                continue
            if step is Step.GAP:
                async for envelope in self._stored(before=item.seq):
                    yield envelope
            self.cursor.advance(item.seq)
            yield item


def observe_latency(envelope: Envelope, now: datetime | None = None) -> float:
    now = now or datetime.now(UTC)
    created = envelope.ts if envelope.ts.tzinfo else envelope.ts.replace(tzinfo=UTC)
    seconds = max(0.0, (now - created).total_seconds())
    metrics.EVENT_LATENCY.labels(str(envelope.type)).observe(seconds)
    return seconds


def outbound_tail(settings: Settings, hub: Hub, producer: AIOKafkaProducer) -> PartitionTail:
    """This process's follower of every partition of ``conversation.outbound``, into the
    hub; after each (re)connection every subscriber re-reads the table."""

    def handle(envelope: Envelope) -> None:
        if envelope.type in CLIENT_EVENTS and envelope.conversation_id in hub:
            observe_latency(envelope)
            hub.publish(envelope)

    replica = settings.gateway.replica
    return PartitionTail(
        settings,
        topic=OUTBOUND,
        client_id=f"gateway-{replica}-outbound",
        producer=producer,
        dead_letter_topic=dead_letter_topic("gateway"),
        handle=handle,
        keys=hub,  # skip decoding events of conversations nobody here follows
        on_connected=hub.resync_all,
        dead_letter_headers={"replica": replica},
        span_name=_delivery_span,
    )


def _delivery_span(envelope: Envelope) -> str | None:
    """The last hop of a turn's trace; streamed text is delivered without spans."""
    if envelope.type == EventType.DELTA or envelope.type not in CLIENT_EVENTS:
        return None
    return f"gateway deliver {envelope.type}"
