"""The consumer loop every service uses, over :mod:`services.common.kafka`'s clients.

Manual commits, only past records whose handler finished (so a crash redelivers, and
idempotent handlers make that invisible); a bounded number of records in flight, with
partitions paused past it; poison records to the service's dead-letter topic with the
reason; transient errors retried with backoff.

An idle consumer sleeps: its fetches wait at the broker up to ``A0_KAFKA_FETCH_MAX_WAIT_MS``
(a record arriving answers them at once, so this costs no latency), its loop and
aiokafka's fetch routine wake once a second, and its commit and lag timers wait for the
next record instead of ticking.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import GroupAuthorizationFailedError, KafkaError, TopicAuthorizationFailedError

from services.common import metrics, telemetry
from services.common.db import recheck_if_lost
from services.common.envelope import Envelope, EnvelopeError
from services.common.errors import PoisonRecord, is_transient
from services.common.kafka import REPLAY_COUNT_HEADER, consumer_options, dead_letter
from services.common.retry import backoff
from services.common.settings import Settings
from services.common.ticks import sleep_to_tick

log = logging.getLogger(__name__)

# How often a consumer commits what it has handled. Each commit is a request and a record
# in the broker's offsets log; a longer interval only means more records handled again
# (idempotently) after a crash; a consumer that stops commits on its way out. At 0.2 s a loaded stack wrote 1.8 offset records a turn.
COMMIT_INTERVAL_S = 1.0
# How long the consumer loop waits for records: while it has some in flight or is paused,
# briefly, so that backpressure lifts promptly; idle, up to a second.
POLL_BUSY_MS = 200
POLL_IDLE_MS = 1000
# The lag gauges: every second while records are handled; idle, when one arrives (or this).
LAG_IDLE_S = 10.0


Handler = Callable[[Envelope, ConsumerRecord[bytes, bytes]], Awaitable[None]]


@dataclass
class _PartitionState:
    in_flight: set[int] = field(default_factory=set)
    highest_done: int = -1
    committed: int | None = None  # the offset this consumer last committed
    # The partition's end offset when this consumer was given it: records from there on
    # were appended after every earlier owner had let it go, so none of them handled them.
    new_from: int | None = None

    def committable(self) -> int | None:
        """The offset to commit: everything below it has been handled."""
        if self.in_flight:
            low = min(self.in_flight)
            return low if low > 0 else None
        return self.highest_done + 1 if self.highest_done >= 0 else None


class ConsumerLoop:
    """Consume topics as a group, run ``handler`` per record, commit only what is done."""

    def __init__(
        self,
        settings: Settings,
        *,
        topics: list[str],
        group_id: str,
        handler: Handler,
        dead_letter_topic: str,
        producer: AIOKafkaProducer,
        max_in_flight: int,
        retries: int = 30,  # with the 10 s cap: about five minutes of outage before giving up
        on_revoked: Callable[[set[TopicPartition]], None] | None = None,
    ) -> None:
        self.topics = topics
        # Told of partitions this consumer no longer owns: state kept for them is stale.
        self.on_revoked = on_revoked
        self.group_id = group_id
        self.handler = handler
        self.dead_letter_topic = dead_letter_topic
        self.producer = producer
        self.max_in_flight = max_in_flight
        self.retries = retries
        self.principal = settings.kafka.sasl_username
        self.consumer = AIOKafkaConsumer(
            **consumer_options(settings),
            group_id=group_id,
            client_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6_000,
            # A third of the session timeout, as Kafka advises: a heartbeat a second cost
            # every idle consumer (and the broker) a request a second for nothing.
            heartbeat_interval_ms=2_000,
            max_poll_interval_ms=300_000,
            isolation_level="read_committed",
        )
        self._partitions: dict[TopicPartition, _PartitionState] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._retrying: set[tuple[str, int, int]] = set()  # records handled again after an error
        self._paused = False
        self._stopping = asyncio.Event()
        # Set by each record dispatched: they wake the commit and lag timers of an idle loop.
        self._wake_commit, self._wake_lag = asyncio.Event(), asyncio.Event()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        self.consumer.subscribe(self.topics, listener=_Rebalance(self))
        try:
            await self.consumer.start()
        except (TopicAuthorizationFailedError, GroupAuthorizationFailedError) as exc:
            self._log_denied(exc)
            raise

    def _log_denied(self, exc: KafkaError) -> None:
        """The broker's authorizer refused this principal: say who, what, and the fix."""
        if isinstance(exc, GroupAuthorizationFailedError):
            what = f"consumer group {self.group_id} (to consume {', '.join(self.topics)})"
        else:
            what = f"topic {', '.join(self.topics)} (to consume it)"
        log.error(
            "Kafka denied principal %s access to %s: %s; grant it under principals in topics.yaml "
            "and run `a0ctl topics apply`",
            self.principal,
            what,
            type(exc).__name__,
        )

    async def stop(self) -> None:
        self._stopping.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.consumer.stop()

    async def run_until_signalled(self) -> None:
        """Start, consume until SIGTERM or SIGINT, then stop: a service's main loop.
        Records still in flight are left uncommitted, so they are redelivered."""
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        try:
            await self.start()
            log.info("%s consuming %s", self.group_id, ", ".join(self.topics))
            consuming = asyncio.create_task(self.run())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([consuming, stopping], return_when=asyncio.FIRST_COMPLETED)
            for task in (consuming, stopping):
                task.cancel()
        finally:
            await self.stop()

    async def run(self) -> None:
        """Fetch, dispatch and commit until stopped."""
        committer = asyncio.create_task(self._commit_periodically())
        lag = asyncio.create_task(self._measure_lag_periodically())
        try:
            while not self._stopping.is_set():
                self._apply_backpressure()
                idle = not self._tasks and not self._paused
                batches = await self.consumer.getmany(
                    timeout_ms=POLL_IDLE_MS if idle else POLL_BUSY_MS, max_records=200
                )
                for tp, records in batches.items():
                    for record in records:
                        self._dispatch(tp, record)
        except (TopicAuthorizationFailedError, GroupAuthorizationFailedError) as exc:
            self._log_denied(exc)
            raise
        finally:
            committer.cancel()
            lag.cancel()
            await self._commit()

    def _apply_backpressure(self) -> None:
        assigned = list(self.consumer.assignment())
        if not self._paused and self.in_flight >= self.max_in_flight:
            self.consumer.pause(*assigned)
            self._paused = True
        elif self._paused and self.in_flight < self.max_in_flight * 3 // 4:
            self.consumer.resume(*assigned)
            self._paused = False
        metrics.CONSUMER_INFLIGHT.labels(self.group_id).set(self.in_flight)

    def _dispatch(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        state = self._partitions.setdefault(tp, _PartitionState())
        state.in_flight.add(record.offset)
        task = asyncio.create_task(self._handle(tp, record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._wake_commit.set()
        self._wake_lag.set()

    async def _until_active(self, wake: asyncio.Event, timeout_s: float | None = None) -> None:
        """Wait, when nothing is in flight, for the next record (at most ``timeout_s``)."""
        if self._tasks:
            return
        wake.clear()
        try:
            await asyncio.wait_for(wake.wait(), timeout_s)
        except TimeoutError:
            pass

    async def _handle(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            await self._handle_with_retries(record)
        except asyncio.CancelledError:
            # Stopped or revoked mid-handler: leave the offset uncommitted so it is redelivered.
            raise
        else:
            state = self._partitions.get(tp)
            if state is not None:
                state.in_flight.discard(record.offset)
                state.highest_done = max(state.highest_done, record.offset)

    async def _handle_with_retries(self, record: ConsumerRecord[bytes, bytes]) -> None:
        lag_s = max(0.0, (telemetry.now_ms() - record.timestamp) / 1000)
        metrics.CONSUMER_LAG_SECONDS.labels(self.group_id, record.topic).observe(lag_s)
        metrics.MESSAGES_IN.labels(self.group_id, record.topic).inc()
        try:
            envelope = Envelope.from_bytes(record.value)
        except EnvelopeError as exc:
            await self._dead_letter(record, str(exc))
            return
        try:
            await self._attempts(envelope, record)
        finally:
            self._retrying.discard((record.topic, record.partition, record.offset))

    async def _attempts(self, envelope: Envelope, record: ConsumerRecord[bytes, bytes]) -> None:
        for attempt in range(self.retries + 1):
            if attempt:
                self._retrying.add((record.topic, record.partition, record.offset))
            try:
                with telemetry.consume_span(f"{self.group_id} {envelope.type}", record, envelope) as span:
                    try:
                        await self.handler(envelope, record)
                    except PoisonRecord:
                        telemetry.set_outcome(span, "dead_letter", error=True)
                        raise
                    except Exception as exc:
                        telemetry.set_outcome(
                            span, "retry" if is_transient(exc) else "dead_letter", error=True
                        )
                        raise
                return
            except PoisonRecord as exc:
                await self._dead_letter(record, str(exc))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_transient(exc):  # a handler bug must not stop the partition forever
                    log.exception("handler failed on %s", envelope.id)
                    await self._dead_letter(record, f"handler error: {type(exc).__name__}: {exc}")
                    return
                recheck_if_lost(exc)
                if attempt == self.retries:
                    await self._dead_letter(record, f"gave up after {attempt + 1} attempts: {exc}")
                    return
                delay = backoff(attempt, base=0.2, cap=10.0)
                log.warning(
                    "transient error handling %s (attempt %d), retrying in %.1fs: %s",
                    envelope.id,
                    attempt + 1,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        await dead_letter(self.producer, self.dead_letter_topic, record, reason, group=self.group_id)

    async def _commit(self) -> None:
        """Commit the partitions whose committable offset moved since the last commit (each
        commit is a record in the broker's offsets log: an idle consumer writes none)."""
        states = {}
        for tp, state in self._partitions.items():
            offset = state.committable()
            if offset is not None and offset != state.committed:
                states[tp] = (state, offset)
        if not states:
            return
        try:
            await self.consumer.commit({tp: offset for tp, (_, offset) in states.items()})
        except KafkaError as exc:
            # A rebalance in progress: the next commit (or the new owner) covers it.
            log.info("commit skipped: %s", exc)
            return
        for state, offset in states.values():
            state.committed = offset

    async def _measure_lag_periodically(self) -> None:
        """Per assigned partition: records past what this group has handled."""
        while True:
            await sleep_to_tick(1.0)
            await self._until_active(self._wake_lag, LAG_IDLE_S)
            for tp in list(self.consumer.assignment()):
                highwater = self.consumer.highwater(tp)
                if highwater is None:
                    continue
                state = self._partitions.get(tp)
                done = state.committable() if state is not None else None
                if done is None:
                    try:
                        done = await self.consumer.position(tp)
                    except KafkaError:
                        continue
                lag = max(0, highwater - done)
                metrics.CONSUMER_LAG.labels(self.group_id, tp.topic, str(tp.partition)).set(lag)

    async def _commit_periodically(self) -> None:
        while True:
            await sleep_to_tick(COMMIT_INTERVAL_S)
            await self._commit()
            if not self._tasks and not self._uncommitted():
                await self._until_active(self._wake_commit)

    def _uncommitted(self) -> bool:
        return any(
            (offset := state.committable()) is not None and offset != state.committed
            for state in self._partitions.values()
        )

    def may_have_been_handled(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        """Whether a handler of this group may have handled ``record`` before: it was in
        its partition before this consumer got the partition (an earlier owner may have
        handled it and not committed), it is being retried here, or it is a dead letter
        put back (``a0ctl dlq replay``). False only for a record that is certainly new."""
        if any(key == REPLAY_COUNT_HEADER for key, _ in record.headers or ()):
            return True
        if (record.topic, record.partition, record.offset) in self._retrying:
            return True
        state = self._partitions.get(TopicPartition(record.topic, record.partition))
        return state is None or state.new_from is None or record.offset < state.new_from

    def _revoke(self, revoked: set[TopicPartition]) -> None:
        for tp in revoked:
            self._partitions.pop(tp, None)
        if revoked and self.on_revoked is not None:
            self.on_revoked(revoked)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: ConsumerLoop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.loop._commit()
        self.loop._revoke(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            self.loop._partitions.setdefault(tp, _PartitionState())
        if not assigned:
            return
        try:
            ends = await self.loop.consumer.end_offsets(list(assigned))
        except KafkaError as exc:  # every record of these partitions counts as maybe seen
            log.info("end offsets of new partitions not read: %s", exc)
            return
        for tp, end in ends.items():
            if (state := self.loop._partitions.get(tp)) is not None:
                state.new_from = end
