"""Durable, ordered, idempotent emission of client events.

An event is written to PostgreSQL with the conversation's next sequence number, then
published to ``conversation.outbound`` — so every event is in the history before any
client can see it. Each event has a key (``delta:<turn>:<round>:<offset>``,
``toolcall:<call id>`` ...): emitting a key twice (a redelivered turn) republishes the
stored event with its original sequence number, which clients drop as already seen.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from aiokafka import AIOKafkaProducer
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from services.common.envelope import Envelope, EventType
from services.common.kafka import OUTBOUND, PoisonRecord, publish


class EventLog:
    def __init__(self, pool: AsyncConnectionPool, producer: AIOKafkaProducer) -> None:
        self.pool = pool
        self.producer = producer
        # Kafka order must equal sequence order: one writer per conversation at a time.
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._unacked: defaultdict[str, list[asyncio.Future[Any]]] = defaultdict(list)

    async def emit(self, source: Envelope, type_: EventType, payload: dict[str, Any], key: str) -> Envelope:
        """Store the event under the conversation's next seq (or find it stored under
        ``key``), then publish it. Deltas do not wait for the broker's ack (ordering is the
        producer's, and a lost publish is filled from the table by the gateways); every
        other event waits for its own ack and all earlier ones."""
        conversation_id = source.conversation_id
        draft = Envelope(
            type=type_,
            conversation_id=conversation_id,
            turn_id=source.turn_id,
            user_id=source.user_id,
            payload=payload,
        )
        async with self._locks[conversation_id]:
            async with self.pool.connection() as conn:
                # One statement, one round trip: reuse the event stored under this key, or
                # take the next seq and store the event with it.
                row = await (
                    await conn.execute(
                        """
                        WITH existing AS (
                            SELECT envelope FROM events WHERE conversation_id = %(c)s AND event_key = %(k)s
                        ), next AS (
                            UPDATE conversations SET last_seq = last_seq + 1, updated_at = now()
                            WHERE id = %(c)s AND NOT EXISTS (SELECT 1 FROM existing)
                            RETURNING last_seq
                        ), inserted AS (
                            INSERT INTO events (conversation_id, seq, event_key, envelope)
                            SELECT %(c)s, last_seq, %(k)s, jsonb_set(%(e)s::jsonb, '{seq}', to_jsonb(last_seq))
                            FROM next
                            RETURNING envelope
                        )
                        SELECT envelope FROM existing UNION ALL SELECT envelope FROM inserted
                        """,
                        {"c": conversation_id, "k": key, "e": Jsonb(draft.model_dump(mode="json"))},
                    )
                ).fetchone()
            if row is None:
                raise PoisonRecord(f"unknown conversation {conversation_id}")
            event = Envelope.model_validate(row[0])
            delivery = await publish(self.producer, OUTBOUND, event)
            pending = self._unacked[conversation_id]
            pending.append(delivery)
        if type_ != EventType.DELTA:
            await asyncio.gather(*pending)
            pending.clear()
        return event

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
            rows = await (
                await conn.execute(
                    "SELECT envelope FROM events WHERE conversation_id = %s AND envelope->>'turn_id' = %s "
                    "ORDER BY seq",
                    (conversation_id, turn_id),
                )
            ).fetchall()
        futures = []
        async with self._locks[conversation_id]:
            for (envelope,) in rows:
                futures.append(await publish(self.producer, OUTBOUND, Envelope.model_validate(envelope)))
        await asyncio.gather(*futures)
        return len(rows)

    async def emitted_text_length(self, conversation_id: str, turn_id: str, round_: int) -> int:
        """How much answer text of this round clients have already been sent."""
        prefix = f"delta:{turn_id}:{round_}:"
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT coalesce(max(substr(event_key, %s)::bigint "
                    "+ char_length(envelope->'payload'->>'text')), 0) "
                    "FROM events WHERE conversation_id = %s AND event_key LIKE %s",
                    (len(prefix) + 1, conversation_id, prefix + "%"),
                )
            ).fetchone()
        return int(row[0]) if row else 0
