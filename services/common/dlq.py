"""Dead letters: what the services could not handle, listed, explained, replayed once or
discarded. One implementation for ``a0ctl dlq`` and the gateway's ops page.

An entry is named ``<dead-letter topic>:<partition>:<offset>`` (``dlq.conversation-worker:0:7``):
the place of the copy, which never moves. Its state comes from the audit topic
(``dlq.audit``): pending until someone replays or discards it.

A replay puts the original record back on its source topic, with its key and headers,
once; a discard is recorded, so the entry is no longer pending (Kafka keeps the copy until
retention). Every action is written to the audit topic after it is done, with who asked.
A replay interrupted between the two is replayed again at worst: the consumers are
idempotent by envelope id, so it is still answered once.

Who may: a0ctl's own principal (a super user), or the ``ops`` principal of topics.yaml,
which the gateway uses for an admin of the ops page.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from pydantic import BaseModel, ValidationError

from services.common.envelope import Envelope, EnvelopeError
from services.common.errors import DeadLetterError, DeadLetterNotFound, KafkaUnavailable
from services.common.kafka import (
    DEAD_LETTER_HEADER_PREFIX,
    REPLAY_COUNT_HEADER,
    MissingTopics,
    client_options,
    make_producer,
    topic_partitions,
)
from services.common.logging import redact
from services.common.retry import WaitTimeout, wait_until_async
from services.common.settings import Settings
from services.common.topics import CONSUMING_SERVICES, dead_letter_topic

# Every replay and discard, one record each, keyed by the entry it is about; kept forever.
AUDIT_TOPIC = "dlq.audit"
DEAD_LETTER_TOPICS = tuple(dead_letter_topic(service) for service in CONSUMING_SERVICES)
# A record that came back to a dead-letter topic after this many replays is not replayed
# again by a replay of every entry, nor by its id unless forced: no replay loop.
MAX_REPLAYS = 1

Action = Literal["replay", "discard"]
State = Literal["pending", "replayed", "discarded"]


class AuditRecord(BaseModel):
    """One replay or discard: of which entry, by whom, when, and where a replay went."""

    entry: str
    action: Action
    by: str
    at: datetime
    forced: bool = False
    replayed_to: str | None = None  # <source topic>:<partition>:<offset> of the replayed record


class DeadLetter(BaseModel):
    """One record on a dead-letter topic, with why it is there and what became of it."""

    id: str
    topic: str
    partition: int
    offset: int
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    reason: str
    group: str | None
    replica: str | None
    time: datetime
    key: str | None
    replay_count: int  # how many replays this record had before it failed again
    state: State = "pending"
    history: list[AuditRecord] = []
    envelope: dict[str, Any] | None = None  # the record as an envelope, secrets masked
    raw: str | None = None  # the record as text (masked), when it is no envelope

    @property
    def looped(self) -> bool:
        """It failed again after its replays: replaying it once more would loop."""
        return self.replay_count >= MAX_REPLAYS


class DeadLetters(BaseModel):
    """A list of entries (``a0ctl dlq list --json``, the ops page's API)."""

    entries: list[DeadLetter]


class ActionResult(BaseModel):
    """What a replay or discard did, and what it left alone and why."""

    done: list[AuditRecord]
    skipped: dict[str, str] = {}


def entry_id(topic: str, partition: int, offset: int) -> str:
    return f"{topic}:{partition}:{offset}"


def parse_entry_id(text: str) -> tuple[str, int, int]:
    topic, _, rest = text.partition(":")
    partition, _, offset = rest.partition(":")
    if topic not in DEAD_LETTER_TOPICS or not partition.isdigit() or not offset.isdigit():
        raise DeadLetterNotFound(
            f"not a dead letter's id: {text!r}",
            hint=f"ids look like {entry_id(DEAD_LETTER_TOPICS[0], 0, 7)}; the list of dead letters shows them",
        )
    return topic, int(partition), int(offset)


def topic_filter(topic: str | None) -> tuple[str, ...]:
    """The dead-letter topics a filter names: one (``dlq.gateway`` or ``gateway``), or all."""
    if topic is None:
        return DEAD_LETTER_TOPICS
    name = topic if topic.startswith("dlq.") else f"dlq.{topic}"
    if name not in DEAD_LETTER_TOPICS:
        raise DeadLetterNotFound(
            f"no dead-letter topic {topic!r}", hint=f"one of: {', '.join(DEAD_LETTER_TOPICS)}"
        )
    return (name,)


READ_TIMEOUT_S = 20.0
RAW_SHOWN = 4000  # characters of a record that is no envelope
REPLAYED_FROM_HEADER = "a0-replayed-from"

Record: TypeAlias = ConsumerRecord[bytes, bytes]


async def _read_all(settings: Settings, topics: Iterable[str]) -> dict[str, list[Record]]:
    """Every record now on ``topics``, from the beginning to the end offsets read first."""
    wanted = list(topics)
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=10_000)
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    try:
        await admin.start()
        tps = await topic_partitions(admin, wanted)
        await consumer.start()
    except MissingTopics as exc:
        await asyncio.gather(admin.close(), consumer.stop())
        raise DeadLetterError(str(exc), hint="run `a0ctl topics apply`") from None
    except KafkaError as exc:
        await asyncio.gather(admin.close(), consumer.stop(), return_exceptions=True)
        raise KafkaUnavailable(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    await admin.close()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp, offset in (await consumer.beginning_offsets(tps)).items():
            consumer.seek(tp, offset)
        records: dict[str, list[Record]] = {topic: [] for topic in wanted}
        remaining = [tp for tp in tps if await consumer.position(tp) < ends[tp]]

        async def read_to_the_ends() -> bool:
            nonlocal remaining
            if not remaining:
                return True
            batches = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, batch in batches.items():
                records[tp.topic] += [r for r in batch if r.offset < ends[tp]]
            remaining = [tp for tp in remaining if await consumer.position(tp) < ends[tp]]
            return not remaining

        try:
            await wait_until_async(read_to_the_ends, timeout=READ_TIMEOUT_S, interval=0, describe="the ends")
        except WaitTimeout:
            raise DeadLetterError(
                f"reading {', '.join(sorted({tp.topic for tp in remaining}))} took over {READ_TIMEOUT_S:g} s",
                hint="is the broker healthy?",
            ) from None
        return records
    finally:
        await consumer.stop()


def _header(record: Record, name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            return value.decode(errors="replace")
    return None


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def _masked_body(value: bytes | None) -> tuple[dict[str, object] | None, str | None]:
    """The record as an envelope with its secrets masked, or as masked text."""
    try:
        envelope = Envelope.from_bytes(value)
    except EnvelopeError:
        text = (value or b"").decode(errors="replace")
        return None, redact(text[:RAW_SHOWN]) + ("…" if len(text) > RAW_SHOWN else "")
    masked = redact(envelope.model_dump_json())
    try:
        return json.loads(masked), None
    except json.JSONDecodeError:  # a masked secret took JSON quoting with it
        return None, masked


def _entry(record: Record, history: list[AuditRecord]) -> DeadLetter:
    envelope, raw = _masked_body(record.value)
    state: State = "pending"
    if history:
        state = "replayed" if history[-1].action == "replay" else "discarded"
    return DeadLetter(
        id=entry_id(record.topic, record.partition, record.offset),
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        source_topic=_header(record, f"{DEAD_LETTER_HEADER_PREFIX}source-topic"),
        source_partition=_int(_header(record, f"{DEAD_LETTER_HEADER_PREFIX}source-partition")),
        source_offset=_int(_header(record, f"{DEAD_LETTER_HEADER_PREFIX}source-offset")),
        reason=redact(_header(record, f"{DEAD_LETTER_HEADER_PREFIX}reason") or "(no reason recorded)"),
        group=_header(record, f"{DEAD_LETTER_HEADER_PREFIX}group"),
        replica=_header(record, f"{DEAD_LETTER_HEADER_PREFIX}replica"),
        time=datetime.fromtimestamp(record.timestamp / 1000, UTC),
        key=record.key.decode(errors="replace") if record.key is not None else None,
        replay_count=_int(_header(record, REPLAY_COUNT_HEADER)) or 0,
        state=state,
        history=history,
        envelope=envelope,
        raw=raw,
    )


def _audit(records: list[Record]) -> dict[str, list[AuditRecord]]:
    by_entry: dict[str, list[AuditRecord]] = {}
    for record in records:
        try:
            audit = AuditRecord.model_validate_json(record.value or b"")
        except ValidationError:
            continue  # audit records are written here only; anything else is not ours to read
        by_entry.setdefault(audit.entry, []).append(audit)
    return by_entry


async def _snapshot(settings: Settings, topics: tuple[str, ...]) -> tuple[list[Record], list[DeadLetter]]:
    read = await _read_all(settings, (*topics, AUDIT_TOPIC))
    audit = _audit(read.pop(AUDIT_TOPIC))
    records = [r for topic in topics for r in read[topic]]
    entries = [_entry(r, audit.get(entry_id(r.topic, r.partition, r.offset), [])) for r in records]
    return records, entries


async def list_dead_letters(
    settings: Settings, topic: str | None = None, *, handled: bool = False
) -> list[DeadLetter]:
    """The entries of one dead-letter topic or all, oldest first: pending ones, or every
    one with ``handled``."""
    _, entries = await _snapshot(settings, topic_filter(topic))
    entries.sort(key=lambda e: (e.time, e.id))
    return entries if handled else [e for e in entries if e.state == "pending"]


async def show_dead_letter(settings: Settings, entry: str) -> DeadLetter:
    topic, _, _ = parse_entry_id(entry)
    _, entries = await _snapshot(settings, (topic,))
    for found in entries:
        if found.id == entry:
            return found
    raise DeadLetterNotFound(f"no dead letter {entry}", hint="the list of every entry shows what is there")


def _why_not_replayed(entry: DeadLetter, force: bool) -> str | None:
    if entry.source_topic is None:
        return "its headers name no source topic, so there is nowhere to replay it"
    if force:
        return None
    if entry.state != "pending":
        last = entry.history[-1]
        return f"already {entry.state} by {last.by} at {last.at.isoformat(timespec='seconds')}"
    if entry.looped:
        return (
            f"it failed again after {entry.replay_count} replay(s); replaying it again would loop: "
            "fix the cause, then replay it forced"
        )
    return None


async def _chosen(
    settings: Settings, entry: str | None, topic: str | None
) -> list[tuple[DeadLetter, Record]]:
    """The one entry named (DeadLetterNotFound if it is not there), else every pending
    entry of the topics ``topic`` selects, with its record."""
    if entry is not None:
        topics: tuple[str, ...] = (parse_entry_id(entry)[0],)
    else:
        topics = topic_filter(topic)
    records, entries = await _snapshot(settings, topics)
    by_id = {e.id: (e, r) for e, r in zip(entries, records, strict=True)}
    if entry is not None:
        if entry not in by_id:
            raise DeadLetterNotFound(
                f"no dead letter {entry}", hint="the list of every entry shows what is there"
            )
        return [by_id[entry]]
    return [pair for pair in by_id.values() if pair[0].state == "pending"]


async def _put_back(producer: AIOKafkaProducer, found: DeadLetter, record: Record) -> str:
    """Replay a dead letter on its source topic, unchanged but for its headers (the
    dead-letter ones dropped, its replay count and origin added); the entry it became."""
    assert found.source_topic is not None
    headers = [
        (key, value)
        for key, value in record.headers or ()
        if not key.startswith(DEAD_LETTER_HEADER_PREFIX)
        and key not in (REPLAY_COUNT_HEADER, REPLAYED_FROM_HEADER)
    ]
    headers += [
        (REPLAY_COUNT_HEADER, str(found.replay_count + 1).encode()),
        (REPLAYED_FROM_HEADER, found.id.encode()),
    ]
    sent = await (await producer.send(found.source_topic, record.value, key=record.key, headers=headers))
    return entry_id(sent.topic, sent.partition, sent.offset)


async def _act(
    settings: Settings,
    entry: str | None,
    topic: str | None,
    *,
    action: str,
    force: bool,
    by: str,
    client_id: str,
) -> ActionResult:
    chosen = await _chosen(settings, entry, topic)
    result = ActionResult(done=[])
    producer = make_producer(settings, client_id)
    await producer.start()
    try:
        for found, record in chosen:
            if action == "replay":
                why = _why_not_replayed(found, force)
            else:
                why = None if found.state == "pending" or force else f"already {found.state}"
            if why is not None:
                result.skipped[found.id] = why
                continue
            audit = AuditRecord(
                entry=found.id,
                action="replay" if action == "replay" else "discard",
                by=by,
                at=datetime.now(UTC),
                forced=force,
            )
            if action == "replay":
                audit.replayed_to = await _put_back(producer, found, record)
            await (await producer.send(AUDIT_TOPIC, audit.model_dump_json().encode(), key=found.id.encode()))
            result.done.append(audit)
    finally:
        await producer.stop()
    return result


async def replay(
    settings: Settings,
    entry: str | None,
    topic: str | None = None,
    *,
    by: str,
    client_id: str,
    force: bool = False,
) -> ActionResult:
    """Put ``entry`` (or every pending entry, of ``topic`` or all) back on its source
    topic; ``by`` is who asked, as the audit records it."""
    return await _act(settings, entry, topic, action="replay", force=force, by=by, client_id=client_id)


async def discard(
    settings: Settings, entry: str | None, topic: str | None = None, *, by: str, client_id: str
) -> ActionResult:
    """Mark ``entry`` (or every pending entry, of ``topic`` or all) as handled, without replay."""
    return await _act(settings, entry, topic, action="discard", force=False, by=by, client_id=client_id)
