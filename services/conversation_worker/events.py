"""Durable, ordered, idempotent emission of client events.

An event is written to PostgreSQL with the conversation's next sequence number, then
published to ``conversation.outbound`` — so every event is in the history before any
client can see it. Each event has a key (``delta:<turn>:<round>:<offset>``,
``toolcall:<call id>`` ...): emitting a key twice (a redelivered turn) republishes the
stored event with its original sequence number, which clients drop as already seen.

Several events, and what belongs with them (the transcript rows of the same step, the
turn's status when it ends), go to the database in one statement — one round trip,
one transaction — so a step of a turn is stored whole or not at all.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from aiokafka import AIOKafkaProducer
from psycopg_pool import AsyncConnectionPool

from services.common.envelope import Envelope, EventType, wire_event
from services.common.errors import PoisonRecord
from services.common.kafka import publish, publish_encoded
from services.common.topics import OUTBOUND
from services.conversation_worker.turns import (
    CLAIM,
    END,
    START_ROWS,
    TranscriptCache,
    TurnStart,
    claim_params,
    turn_start,
)

# The events of a step: those not stored yet under their keys get the conversation's
# next seqs; those stored before (a redelivered turn) are found as stored.
# The arrays go in PostgreSQL's binary form (%(...)b): in the text form psycopg quotes and
# escapes every element in Python, a regular expression substitution per '"' of the JSON
# (84 us for a step's five envelopes, 1.2 us in binary; 5 % of the worker's CPU).
_EVENTS = """
drafts AS (
    SELECT key, envelope, ord FROM unnest(%(keys)b::text[], %(envelopes)b::jsonb[]) WITH ORDINALITY
        AS d(key, envelope, ord)
), existing AS (
    SELECT e.event_key, e.envelope FROM events e
    WHERE e.conversation_id = %(c)s AND e.event_key IN (SELECT key FROM drafts)
), fresh AS (
    SELECT key, envelope, row_number() OVER (ORDER BY ord) AS n FROM drafts
    WHERE key NOT IN (SELECT event_key FROM existing)
), next AS (
    UPDATE conversations SET last_seq = last_seq + (SELECT count(*) FROM fresh)
    WHERE id = %(c)s AND EXISTS (SELECT 1 FROM fresh)
    RETURNING last_seq - (SELECT count(*) FROM fresh) AS base
), numbered AS (
    SELECT fresh.key, fresh.envelope, next.base + fresh.n AS seq FROM fresh CROSS JOIN next
), inserted AS (
    INSERT INTO events (conversation_id, seq, event_key, envelope)
    SELECT %(c)s, seq, key, jsonb_set(envelope, '{seq}', to_jsonb(seq)) FROM numbered
)"""
# Each draft, in order: its key, the envelope stored before (if it was) and its new seq.
_DRAFT_ROWS = """
FROM drafts d LEFT JOIN existing x ON x.event_key = d.key LEFT JOIN numbered n ON n.key = d.key
"""
# One statement for a whole step of a turn, so it is stored whole or not at all, in one
# round trip: its events, the transcript rows and the turn's new status (when it ends)
# are written together. A turn's status comes back only the first time it ends.
_STORE_STEP = f"""
WITH {_EVENTS}, transcript AS (
    INSERT INTO messages (conversation_id, message_key, turn_id, role, body)
    SELECT %(c)s, m.key, %(t)s, m.body->>'role', m.body
    FROM unnest(%(message_keys)b::text[], %(messages)b::jsonb[]) WITH ORDINALITY AS m(key, body, ord)
    ORDER BY m.ord
    ON CONFLICT DO NOTHING
), {END}
SELECT d.key, x.envelope::text, n.seq, (SELECT count(*) FROM ended){_DRAFT_ROWS}ORDER BY d.ord
"""
# The start of a turn with its first events, in one statement: the turn claimed, the
# user's message stored and the transcript read (:data:`turns.CLAIM`), then the events
# (part 2).
_START_STEP = f"""
WITH {_EVENTS}, {CLAIM}{START_ROWS}UNION ALL SELECT 2, d.ord, d.key, x.envelope::text, n.seq{_DRAFT_ROWS}
ORDER BY part, position
"""

# A turn's events, in order: from its first (``accepted:<turn>``, found by its key) on.
_TURN_EVENTS = """
SELECT envelope FROM events
WHERE conversation_id = %(c)s AND envelope->>'turn_id' = %(t)s
  AND seq >= (SELECT seq FROM events WHERE conversation_id = %(c)s AND event_key = 'accepted:' || %(t)s)
ORDER BY seq
"""


@dataclass(frozen=True)
class Draft:
    """An event to emit: its type, payload and idempotency key."""

    type: EventType
    payload: dict[str, Any]
    key: str


@dataclass(frozen=True)
class Step:
    """What a batch stored: the events as published (wire form), and whether this batch
    ended the turn (the first time it ended)."""

    events: list[dict[str, Any]]
    ended: bool


class EventLog:
    def __init__(self, pool: AsyncConnectionPool, producer: AIOKafkaProducer, cache: TranscriptCache) -> None:
        self.pool = pool
        self.producer = producer
        self.cache = cache
        # Kafka order must equal sequence order: one writer per conversation at a time.
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._unacked: defaultdict[str, list[asyncio.Future[Any]]] = defaultdict(list)

    async def emit_batch(
        self,
        source: Envelope,
        drafts: Sequence[Draft],
        *,
        messages: Sequence[tuple[str, dict[str, Any]]] = (),
        end: str | None = None,
    ) -> Step:
        """Store the events under the conversation's next seqs (or find them stored under
        their keys), with the transcript ``messages`` (key, body) and the turn's ``end``
        status, in one statement; then publish the events in seq order. Only the step
        that ends the turn waits for the broker's acks (of all its events so far): the
        record that started the turn is committed after that, so a publish that failed
        is redone from the table by the redelivered turn. Until then, order is the
        idempotent producer's, and a gateway fills any gap from the table."""
        fresh, params = _step_params(source, drafts)
        params.update(
            message_keys=[key for key, _ in messages],
            messages=[orjson.dumps(body).decode() for _, body in messages],
            status=end,
        )
        conversation_id = source.conversation_id
        async with self._locks[conversation_id]:
            async with self.pool.connection() as conn:
                rows = await (await conn.execute(_STORE_STEP, params)).fetchall()
            events = _as_published(conversation_id, fresh, [row[:3] for row in rows])
            pending = await self._publish(conversation_id, events)
        if end is not None:
            await self._confirm(pending)
        return Step(events, bool(rows and rows[0][3]))

    async def start(
        self, source: Envelope, drafts: Sequence[Draft], message_key: str, content: str
    ) -> TurnStart:
        """:meth:`TurnStore.begin` and :meth:`emit_batch` of ``drafts`` in one statement:
        for a turn nothing of its conversation waits ahead of, so its first events (its
        ``message.accepted``) need not go out before it starts."""
        fresh, params = _step_params(source, drafts)
        params.update(claim_params(source, message_key, content, self.cache))
        conversation_id = source.conversation_id
        async with self._locks[conversation_id]:
            async with self.pool.connection() as conn:
                try:
                    rows = await (await conn.execute(_START_STEP, params)).fetchall()
                except psycopg.errors.ForeignKeyViolation:  # the turn's row needs its conversation
                    raise PoisonRecord(f"unknown conversation {conversation_id}") from None
                start = await turn_start(conn, source, [row for row in rows if row[0] < 2], self.cache)
            drafted = [(key, stored, seq) for part, _, key, stored, seq in rows if part == 2]
            await self._publish(conversation_id, _as_published(conversation_id, fresh, drafted))
        return start

    async def _publish(self, conversation_id: str, events: list[dict[str, Any]]) -> list[asyncio.Future[Any]]:
        """Publish ``events`` in order (under the conversation's lock); the acks pending."""
        pending = self._unacked[conversation_id]
        for event in events:
            pending.append(
                await publish_encoded(self.producer, OUTBOUND, conversation_id, orjson.dumps(event))
            )
        return pending

    @staticmethod
    async def _confirm(pending: list[asyncio.Future[Any]]) -> None:
        """Wait for the broker's acks of everything published so far; a failed publish
        fails this step (the turn is retried, and republishes from the table)."""
        results = await asyncio.gather(*pending, return_exceptions=True)
        pending.clear()
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def forget(self, conversation_id: str) -> None:
        """Drop per-conversation state once nothing of it is in flight."""
        lock = self._locks.get(conversation_id)
        if lock is not None and not lock.locked() and not self._unacked.get(conversation_id):
            del self._locks[conversation_id]
            self._unacked.pop(conversation_id, None)

    async def republish_turn(self, conversation_id: str, turn_id: str) -> int:
        """Publish a finished turn's events again (a crash may have come between the
        database and the broker); clients drop what they already have by seq."""
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(_TURN_EVENTS, {"c": conversation_id, "t": turn_id})).fetchall()
        futures = []
        async with self._locks[conversation_id]:
            for (envelope,) in rows:
                futures.append(await publish(self.producer, OUTBOUND, Envelope.model_validate(envelope)))
        await asyncio.gather(*futures)
        return len(rows)


def _step_params(source: Envelope, drafts: Sequence[Draft]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The events of ``drafts`` in wire form (no seq yet), and the parameters of
    :data:`_EVENTS` for them."""
    fresh = [
        wire_event(
            draft.type,
            conversation_id=source.conversation_id,
            turn_id=source.turn_id,
            user_id=source.user_id,
            payload=draft.payload,
        )
        for draft in drafts
    ]
    params = {
        "c": source.conversation_id,
        "t": source.turn_id,
        "keys": [draft.key for draft in drafts],
        "envelopes": [orjson.dumps(event).decode() for event in fresh],
    }
    return fresh, params


def _as_published(
    conversation_id: str, fresh: list[dict[str, Any]], rows: Sequence[tuple[Any, ...]]
) -> list[dict[str, Any]]:
    """Each event as it goes out: the one stored before under its key (a redelivered
    turn), or the fresh one with its new seq."""
    events: list[dict[str, Any]] = []
    for event, (_, stored, seq) in zip(fresh, rows, strict=True):
        if stored is not None:
            events.append(orjson.loads(stored))
        elif seq is None:
            raise PoisonRecord(f"unknown conversation {conversation_id}")
        else:
            event["seq"] = seq
            events.append(event)
    return events
