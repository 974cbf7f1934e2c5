"""Outbound events to clients: one Kafka consumer per process feeds an in-memory hub, and
each client subscription merges the hub with the events table so it sees every event of
its conversation once, in order — across reconnects, replicas and broker restarts.

The consumer has no group: each replica reads every partition of
``conversation.outbound`` from the end (what came before is in PostgreSQL, where the
worker writes each event before publishing it). A subscription registers its queue
first, then replays ``events`` past its cursor, then follows the queue, skipping what it
already delivered and filling any gap from the table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError

from services.common import metrics
from services.common.envelope import CLIENT_EVENTS, Envelope, EnvelopeError
from services.common.kafka import OUTBOUND, client_options, dead_letter
from services.common.settings import Settings

log = logging.getLogger("a0.gateway.fanout")

QUEUE_SIZE = 1000
DEAD_LETTER_TOPIC = "dlq.gateway"
PAGE = 500


class SlowConsumer(Exception):
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

    def __contains__(self, conversation_id: str) -> bool:
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
        async with pool.connection(timeout=10) as conn:
            if before is None:
                result = await conn.execute(
                    "SELECT seq, envelope FROM events WHERE conversation_id = %s AND seq > %s "
                    "ORDER BY seq LIMIT %s",
                    (conversation_id, cursor, PAGE),
                )
            else:
                result = await conn.execute(
                    "SELECT seq, envelope FROM events WHERE conversation_id = %s AND seq > %s AND seq < %s "
                    "ORDER BY seq LIMIT %s",
                    (conversation_id, cursor, before, PAGE),
                )
            rows = await result.fetchall()
        for seq, data in rows:
            cursor = int(seq)
            try:
                yield envelope_from_row(data)
            except ValidationError as exc:
                log.error("skipping unreadable event %s#%s: %s", conversation_id, seq, exc)
        if len(rows) < PAGE:
            return


class Subscription:
    """One client following one conversation from a cursor. Use it as
    ``async with Subscription(...) as events`` and ``async for envelope in events``."""

    def __init__(self, hub: Hub, pool: AsyncConnectionPool, conversation_id: str, after: int) -> None:
        self.hub = hub
        self.pool = pool
        self.conversation_id = conversation_id
        self.cursor = Cursor(after)
        self._subscriber: Subscriber | None = None
        self._stream: AsyncGenerator[Envelope, None] | None = None

    async def __aenter__(self) -> AsyncIterator[Envelope]:
        # Register before reading the table, so nothing published in between is missed.
        self._subscriber = self.hub.subscribe(self.conversation_id)
        self._stream = self._events(self._subscriber)
        return self._stream

    async def __aexit__(self, *exc_info: object) -> None:
        if self._subscriber is not None:
            self.hub.unsubscribe(self._subscriber)
        if self._stream is not None:
            await self._stream.aclose()

    async def _stored(self, before: int | None = None) -> AsyncIterator[Envelope]:
        async for envelope in load_events(self.pool, self.conversation_id, self.cursor.last, before):
            if self.cursor.step(envelope.seq) is not Step.DUPLICATE:
                self.cursor.advance(envelope.seq)
                yield envelope

    async def _events(self, subscriber: Subscriber) -> AsyncGenerator[Envelope, None]:
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


class OutboundConsumer:
    """Reads every partition of ``conversation.outbound`` from the end, into the hub."""

    def __init__(self, settings: Settings, hub: Hub, producer: AIOKafkaProducer) -> None:
        self.settings = settings
        self.hub = hub
        self.producer = producer
        self.connected = False
        self.last_error: str | None = "not started"
        self._dead_letters: set[asyncio.Task[None]] = set()

    def _make_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            **client_options(self.settings),
            client_id=f"gateway-{self.settings.gateway.replica}-outbound",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            isolation_level="read_committed",
        )

    async def run(self) -> None:
        """Consume until cancelled, reconnecting with backoff when Kafka is unreachable."""
        delay = 0.5
        while True:
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: log, back off, start over from the end
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("outbound consumer stopped (%s); retrying in %.1fs", self.last_error, delay)
            await asyncio.sleep(delay)
            delay = min(10.0, delay * 2)

    async def _run_once(self) -> None:
        consumer = self._make_consumer()
        await consumer.start()
        try:
            # The producer's metadata (public API): raises if the topic does not exist.
            partitions = await self.producer.partitions_for(OUTBOUND)
            if not partitions:
                raise RuntimeError(f"topic {OUTBOUND} has no partitions; run `a0ctl topics apply`")
            assigned = [TopicPartition(OUTBOUND, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            await consumer.seek_to_end(*assigned)
            for tp in assigned:  # resolve the end offsets now, before subscribers re-read the table
                await consumer.position(tp)
            self.connected, self.last_error = True, None
            log.info("following %s: %d partitions from the end", OUTBOUND, len(assigned))
            self.hub.resync_all()
            while True:
                batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
                for records in batches.values():
                    for record in records:
                        self.dispatch(record)
        finally:
            self.connected = False
            await consumer.stop()

    def dispatch(self, record: ConsumerRecord[bytes, bytes]) -> None:
        # The key is the conversation id: skip decoding events nobody here follows.
        if record.key is not None and record.key.decode(errors="replace") not in self.hub:
            return
        try:
            envelope = Envelope.from_bytes(record.value)
        except EnvelopeError as exc:
            task = asyncio.create_task(
                dead_letter(
                    self.producer, DEAD_LETTER_TOPIC, record, str(exc), replica=self.settings.gateway.replica
                )
            )
            self._dead_letters.add(task)
            task.add_done_callback(self._dead_letters.discard)
            return
        if envelope.type not in CLIENT_EVENTS or envelope.conversation_id not in self.hub:
            return
        observe_latency(envelope)
        self.hub.publish(envelope)
