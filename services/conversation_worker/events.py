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

    async def emit(self, source: Envelope, type_: EventType, payload: dict[str, Any], key: str) -> Envelope:
        conversation_id = source.conversation_id
        async with self._locks[conversation_id]:
            async with self.pool.connection() as conn, conn.transaction():
                row = await (
                    await conn.execute(
                        "SELECT envelope FROM events WHERE conversation_id = %s AND event_key = %s",
                        (conversation_id, key),
                    )
                ).fetchone()
                if row is not None:
                    event = Envelope.model_validate(row[0])
                else:
                    seq_row = await (
                        await conn.execute(
                            "UPDATE conversations SET last_seq = last_seq + 1, updated_at = now() "
                            "WHERE id = %s RETURNING last_seq",
                            (conversation_id,),
                        )
                    ).fetchone()
                    if seq_row is None:
                        raise PoisonRecord(f"unknown conversation {conversation_id}")
                    event = Envelope(
                        type=type_,
                        conversation_id=conversation_id,
                        turn_id=source.turn_id,
                        user_id=source.user_id,
                        seq=seq_row[0],
                        payload=payload,
                    )
                    await conn.execute(
                        "INSERT INTO events (conversation_id, seq, event_key, envelope) VALUES (%s, %s, %s, %s)",
                        (conversation_id, event.seq, key, Jsonb(event.model_dump(mode="json"))),
                    )
            delivery = await publish(self.producer, OUTBOUND, event)
        await delivery
        return event

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
