"""Following every partition of a topic, without a consumer group: each process sees
every record published after it started (the gateways' fan-out of
``conversation.outbound``, the workers' reader of ``tool.results``).

:class:`PartitionTail` assigns itself every partition and starts at their ends (what
came before is in PostgreSQL, where producers store it first). When the broker goes
away it reconnects with backoff, from where it was (``resume``) or from the new ends,
and tells its owner (``on_connected``) so it can re-read what it may have missed. A
record that is not an envelope goes to the service's dead-letter topic. Decoding and
dispatch are synchronous: nothing here waits per record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Container

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from services.common import metrics, telemetry
from services.common.envelope import Envelope, EnvelopeError
from services.common.errors import PoisonRecord, TransientError
from services.common.kafka import consumer_options, dead_letter
from services.common.retry import backoff
from services.common.settings import Settings
from services.common.ticks import until_tick_ms

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0


class PartitionTail:
    """Follow ``topic`` from its end until stopped, passing each envelope to ``handle``.

    With ``keys``, a record whose key (a conversation id) is not in it is skipped
    before it is decoded; ``handle`` raises :class:`PoisonRecord` for an envelope it cannot
    use, which is dead-lettered like one that does not decode; ``on_connected`` runs each time the tail has its positions, the
    first time included; ``dead_letter_headers`` go with every dead-lettered record;
    ``span_name`` names the span of an envelope worth tracing (None: not traced)."""

    def __init__(
        self,
        settings: Settings,
        *,
        topic: str,
        client_id: str,
        producer: AIOKafkaProducer,
        dead_letter_topic: str,
        handle: Callable[[Envelope], None],
        keys: Container[str] | None = None,
        on_connected: Callable[[], None] | None = None,
        resume: bool = False,
        dead_letter_headers: dict[str, str] | None = None,
        span_name: Callable[[Envelope], str | None] | None = None,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.client_id = client_id
        self.producer = producer
        self.dead_letter_topic = dead_letter_topic
        self.handle = handle
        self.keys = keys
        self.on_connected = on_connected
        self.resume = resume
        self.dead_letter_headers = dead_letter_headers or {}
        self.span_name = span_name
        self._consumed = metrics.MESSAGES_IN.labels(client_id, topic)
        self.connected = False
        self.connected_once = False
        self.last_error: str | None = "not started"
        self._positions: dict[TopicPartition, int] = {}  # next offset, per partition (resume)
        self._first_connection = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._dead_letters: set[asyncio.Task[None]] = set()

    async def start(self, timeout_s: float | None = None) -> None:
        """Run in the background; with ``timeout_s``, wait until the end offsets are
        resolved (so whatever is published after this returns is seen), and raise
        :class:`TransientError` if that takes longer."""
        self._task = asyncio.create_task(self.run(), name=f"tail {self.topic}")
        if timeout_s is None:
            return
        try:
            await asyncio.wait_for(self._first_connection.wait(), timeout_s)
        except TimeoutError:
            await self.stop()
            raise TransientError(
                f"could not follow {self.topic} within {timeout_s:.0f}s: {self.last_error}"
            ) from None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await asyncio.gather(*self._dead_letters, return_exceptions=True)

    async def run(self) -> None:
        """Consume until cancelled, reconnecting with backoff when Kafka is unreachable."""
        attempt = 0
        while True:
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: log, back off, start over
                self.last_error = f"{type(exc).__name__}: {exc}"
            if self.connected_once:  # it was following: back off from the start again
                attempt, self.connected_once = 0, False
            delay = backoff(attempt, base=0.5, cap=MAX_BACKOFF_S)
            attempt += 1
            log.warning(
                "%s stopped following %s (%s); retrying in %.1fs",
                self.client_id,
                self.topic,
                self.last_error,
                delay,
            )
            await asyncio.sleep(delay)

    async def _run_once(self) -> None:
        consumer = AIOKafkaConsumer(
            **consumer_options(self.settings),
            client_id=self.client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            # The producer's metadata (public API): raises if the topic does not exist.
            partitions = await self.producer.partitions_for(self.topic)
            if not partitions:
                raise TransientError(f"topic {self.topic} has no partitions; run `a0ctl topics apply`")
            assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            fresh = [tp for tp in assigned if tp not in self._positions]
            for tp in assigned:
                if tp in self._positions:
                    consumer.seek(tp, self._positions[tp])
            if fresh:
                await consumer.seek_to_end(*fresh)
            for tp in assigned:  # resolve the end offsets now, before anything is published
                await consumer.position(tp)
            self.connected, self.connected_once, self.last_error = True, True, None
            log.info("%s following %s: %d partitions", self.client_id, self.topic, len(assigned))
            self._first_connection.set()
            if self.on_connected is not None:
                self.on_connected()
            while True:
                batches = await consumer.getmany(timeout_ms=until_tick_ms(1.0), max_records=1000)
                for tp, records in batches.items():
                    for record in records:
                        self.dispatch(record)
                    if self.resume:
                        self._positions[tp] = records[-1].offset + 1
        finally:
            self.connected = False
            await consumer.stop()

    def dispatch(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self._consumed.inc()
        if (
            self.keys is not None
            and record.key is not None
            and record.key.decode(errors="replace") not in self.keys
        ):
            return
        try:
            envelope = Envelope.from_bytes(record.value)
            name = self.span_name(envelope) if self.span_name is not None and telemetry.enabled() else None
            if name is None:
                self.handle(envelope)
            else:  # a hop of a turn's trace, the child of the span that sent the record
                with telemetry.consume_span(name, record, envelope):
                    self.handle(envelope)
        except (EnvelopeError, PoisonRecord) as exc:
            self._dead_letter(record, str(exc))

    def _dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        # In the background: the tail never waits for the broker per record.
        task = asyncio.create_task(
            dead_letter(
                self.producer,
                self.dead_letter_topic,
                record,
                reason,
                group=self.client_id,
                **self.dead_letter_headers,
            )
        )
        self._dead_letters.add(task)
        task.add_done_callback(self._dead_letters.discard)
