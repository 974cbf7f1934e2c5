"""Read the dead-letter topics and the audit topic, and act on entries: replay (the
original record back on its source topic, with its key and headers, once) and discard
(recorded, so the entry is no longer pending; Kafka keeps the copy until retention).

Every action is written to the audit topic after it is done, by a0ctl's own principal,
the only writer of that topic. A replay interrupted between the two is replayed again
at worst: the consumers are idempotent by envelope id, so it is still answered once.
"""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from a0ctl.dlq.model import (
    AUDIT_TOPIC,
    ActionResult,
    AuditRecord,
    DeadLetter,
    State,
    entry_id,
    parse_entry_id,
    topic_filter,
)
from a0ctl.errors import DeadLetterError
from a0ctl.topics.admin import admin_client, started
from services.common.envelope import Envelope, EnvelopeError
from services.common.kafka import (
    DEAD_LETTER_HEADER_PREFIX,
    REPLAY_COUNT_HEADER,
    client_options,
    make_producer,
)
from services.common.logging import redact
from services.common.retry import WaitTimeout, wait_until_async
from services.common.settings import Settings

READ_TIMEOUT_S = 20.0
RAW_SHOWN = 4000  # characters of a record that is no envelope
REPLAYED_FROM_HEADER = "a0-replayed-from"

Record: TypeAlias = ConsumerRecord[bytes, bytes]


def operator() -> str:
    """Who acts: the login and host a0ctl runs as."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


async def _read_all(settings: Settings, topics: Iterable[str]) -> dict[str, list[Record]]:
    """Every record now on ``topics``, from the beginning to the end offsets read first."""
    wanted = list(topics)
    async with admin_client(settings) as admin:
        missing = sorted(set(wanted) - set(await admin.list_topics()))
        if missing:
            raise DeadLetterError(
                f"topic {', '.join(missing)} does not exist on the cluster", hint="run `a0ctl topics apply`"
            )
        described = await admin.describe_topics(wanted)
    tps = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    async with started(consumer, settings):
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
                hint="is the broker healthy? see `a0ctl status`",
            ) from None
        return records


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
            continue  # a0ctl is the topic's only writer; anything else is not ours to read
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
    raise DeadLetterError(
        f"no dead letter {entry}", hint=f"`a0ctl dlq list --topic {topic} --all` shows what is there"
    )


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
            "fix the cause, then replay it with --force"
        )
    return None


async def _act(
    settings: Settings, entry: str | None, topic: str | None, *, action: str, force: bool
) -> ActionResult:
    if entry is not None:
        topics: tuple[str, ...] = (parse_entry_id(entry)[0],)
    else:
        topics = topic_filter(topic)
    records, entries = await _snapshot(settings, topics)
    by_id = {e.id: (e, r) for e, r in zip(entries, records, strict=True)}
    if entry is not None:
        if entry not in by_id:
            raise DeadLetterError(
                f"no dead letter {entry}", hint="`a0ctl dlq list --all` shows what is there"
            )
        chosen = [by_id[entry]]
    else:
        chosen = [pair for pair in by_id.values() if pair[0].state == "pending"]
    result = ActionResult(done=[])
    producer = make_producer(settings, "a0ctl-dlq")
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
                by=operator(),
                at=datetime.now(UTC),
                forced=force,
            )
            if action == "replay":
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
                sent = await (
                    await producer.send(found.source_topic, record.value, key=record.key, headers=headers)
                )
                audit.replayed_to = entry_id(sent.topic, sent.partition, sent.offset)
            await (await producer.send(AUDIT_TOPIC, audit.model_dump_json().encode(), key=found.id.encode()))
            result.done.append(audit)
    finally:
        await producer.stop()
    return result


async def replay(
    settings: Settings, entry: str | None, topic: str | None = None, *, force: bool = False
) -> ActionResult:
    """Put ``entry`` (or every pending entry, of ``topic`` or all) back on its source topic."""
    return await _act(settings, entry, topic, action="replay", force=force)


async def discard(settings: Settings, entry: str | None, topic: str | None = None) -> ActionResult:
    """Mark ``entry`` (or every pending entry, of ``topic`` or all) as handled, without replay."""
    return await _act(settings, entry, topic, action="discard", force=False)
