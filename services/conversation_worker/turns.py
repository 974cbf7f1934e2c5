"""A turn's durable state in PostgreSQL: its status, and the conversation's transcript
(what the model sees) as it grows.

:meth:`TurnStore.begin` claims a turn and reads the transcript in one statement (or
:meth:`EventLog.start`, with the turn's first events), so a turn keeps it in memory
(:class:`Transcript`) and adds to it as it goes; the rows it adds and its final status
are stored together with the events they go with (see :meth:`EventLog.emit_batch`).

The worker that owns a conversation's partition keeps what it read of its transcript
(:class:`TranscriptCache`), so a turn reads only the rows stored since the last one it
started — what a turn costs does not grow with the conversation. Only that worker writes
a conversation's messages, one turn at a time; the cache is emptied when partitions are
revoked (another worker may write them meanwhile), bounded in size, and lets go of a
conversation nobody has spoken in for a while; a missing transcript is read whole.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from services.common import metrics
from services.common.envelope import Envelope
from services.common.ticks import sleep_to_tick
from services.common.turns import TERMINAL_SQL, TurnStatus

# The worker's two writes of ``turns``, each a part of a larger statement: CLAIM marks a
# turn running (and writes its row if the gateway's is missing: a gateway killed after
# Kafka acked the message, before its commit), END sets its final status. The gateway's
# one write is the ``queued`` row of a message (``services/gateway/store.py``).
#
# Claim the turn (unless it already ended) and store the user's message with it, with
# the status before: alone in :data:`_BEGIN`, and with the turn's first event in
# ``events._START_STEP``.
CLAIM = f"""
prior AS (
    SELECT status FROM turns WHERE turn_id = %(t)s
), started AS (
    INSERT INTO turns (turn_id, conversation_id, status) VALUES (%(t)s, %(c)s, '{TurnStatus.RUNNING.value}')
    ON CONFLICT (turn_id) DO UPDATE SET status = '{TurnStatus.RUNNING.value}', updated_at = now()
    WHERE turns.status NOT IN {TERMINAL_SQL}
    RETURNING 1
), stored AS (
    INSERT INTO messages (conversation_id, message_key, turn_id, role, body)
    SELECT %(c)s, %(k)s, %(t)s, 'user', %(b)s::jsonb WHERE EXISTS (SELECT 1 FROM started)
    ON CONFLICT DO NOTHING
    RETURNING position, message_key, body
)"""
# End the turn with ``%(status)s`` (a step without it changes nothing), unless it ended
# before; ``ended`` has a row only the first time.
END = f"""ended AS (
    UPDATE turns SET status = %(status)s, updated_at = now()
    WHERE %(status)s::text IS NOT NULL AND turn_id = %(t)s
      AND status NOT IN {TERMINAL_SQL}
    RETURNING 1
)"""
# After CLAIM: the status before (part 0), then the transcript (part 1): the rows stored
# before, plus the one CLAIM stores (a statement does not see its own writes).
START_ROWS = """
SELECT 0 AS part, 0::bigint AS position, (SELECT status FROM prior)::text AS key, NULL::text AS body,
       NULL::bigint AS seq
UNION ALL SELECT 1, position, message_key, body::text, NULL FROM messages
    WHERE conversation_id = %(c)s AND position > %(after)s
UNION ALL SELECT 1, position, message_key, body::text, NULL FROM stored
"""
_BEGIN = f"WITH {CLAIM}{START_ROWS}ORDER BY part, position"
# What text of each answer round of this turn clients were already sent (a redelivery).
_SENT_TEXT = """
SELECT split_part(event_key, ':', 3)::int AS round,
       string_agg(envelope->'payload'->>'text', '' ORDER BY split_part(event_key, ':', 4)::bigint)
FROM events WHERE conversation_id = %s AND event_key LIKE %s GROUP BY 1
"""


@dataclass
class Transcript:
    """The conversation's messages in order, by key (``user:<id>``,
    ``assistant:<turn>:<round>``, ``tool:<turn>:<call>``)."""

    messages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.messages.get(key)

    def add(self, key: str, body: dict[str, Any]) -> None:
        self.messages.setdefault(key, body)

    def for_model(self) -> list[dict[str, Any]]:
        return list(self.messages.values())


@dataclass
class TurnStart:
    """What :meth:`TurnStore.begin` found: the status before (None for a turn whose row
    the gateway had not committed), the transcript, and the answer text per round
    clients were sent."""

    prior: TurnStatus | None
    transcript: Transcript
    sent_text: dict[int, str]


class TranscriptCache:
    """The transcripts this worker has read, by conversation, with the position of the last
    row of each; least recently used first out past ``max_bytes`` (the rows' JSON), and out
    once unused for ``idle_s``."""

    def __init__(
        self, max_bytes: int, idle_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_bytes = max_bytes
        self.idle_s = idle_s
        self.clock = clock
        # conversation -> (its last row's position, messages, their JSON's bytes, last used)
        self._entries: OrderedDict[str, tuple[int, dict[str, dict[str, Any]], int, float]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def after(self, conversation_id: str) -> int:
        """The position the next read of this conversation starts after (0: read it whole).

        A turn asks before its read and merges what it read after it: the transcript is
        marked used now, so that neither the idle expiry nor the size bound takes it in
        between (the rows read would then lack everything before that position)."""
        entry = self._entries.get(conversation_id)
        if entry is None:
            return 0
        self._entries[conversation_id] = (entry[0], entry[1], entry[2], self.clock())
        self._entries.move_to_end(conversation_id)
        return entry[0]

    def merge(self, conversation_id: str, rows: list[tuple[Any, ...]]) -> Transcript:
        """The transcript: what was kept, plus ``rows`` (``position, key, body`` as read
        after :meth:`after`), which are kept in turn."""
        metrics.TRANSCRIPT_ROWS_READ.inc(len(rows))
        position, kept, size, _ = self._entries.pop(conversation_id, (0, {}, 0, 0.0))
        self._bytes -= size
        messages = dict(kept)
        for row_position, key, body in rows:
            if key not in messages:
                messages[key] = orjson.loads(body)
                size += len(body)
            position = max(position, row_position)
        if size <= self.max_bytes:
            self._entries[conversation_id] = (position, messages, size, self.clock())
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._drop_oldest()
        metrics.TRANSCRIPTS_CACHED.set(len(self._entries))
        return Transcript(dict(messages))

    def expire(self) -> int:
        """Let go of the transcripts unused for ``idle_s`` (the least recently used come
        first, so the walk stops at the first one still in use); how many went."""
        deadline = self.clock() - self.idle_s
        expired = 0
        while self._entries and next(iter(self._entries.values()))[3] <= deadline:
            self._drop_oldest()
            expired += 1
        if expired:
            metrics.TRANSCRIPTS_CACHED.set(len(self._entries))
        return expired

    async def expire_idle(self) -> None:
        """Run :meth:`expire` for good, a few times per ``idle_s``: a quiet worker lets go
        of conversations nobody speaks in, which nothing else would touch again."""
        while True:
            await sleep_to_tick(max(1.0, self.idle_s / 4))
            self.expire()

    def _drop_oldest(self) -> None:
        _, (_, _, dropped, _) = self._entries.popitem(last=False)
        self._bytes -= dropped

    def clear(self) -> None:
        """Forget every transcript (partitions were revoked: another worker may write them)."""
        self._entries.clear()
        self._bytes = 0
        metrics.TRANSCRIPTS_CACHED.set(0)


class TurnStore:
    def __init__(self, pool: AsyncConnectionPool, cache: TranscriptCache) -> None:
        self.pool = pool
        self.cache = cache

    async def status(self, turn_id: str) -> TurnStatus | None:
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute("SELECT status FROM turns WHERE turn_id = %s", (turn_id,))
            ).fetchone()
        return TurnStatus(row[0]) if row else None

    async def begin(self, envelope: Envelope, message_key: str, content: str) -> TurnStart:
        """Mark the turn running and store the user's message — unless it already ended —
        and read the transcript."""
        params = claim_params(envelope, message_key, content, self.cache)
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(_BEGIN, params)).fetchall()
            return await turn_start(conn, envelope, rows, self.cache)


def claim_params(
    envelope: Envelope, message_key: str, content: str, cache: TranscriptCache
) -> dict[str, Any]:
    """The parameters of :data:`CLAIM` and :data:`START_ROWS`."""
    return {
        "t": envelope.turn_id,
        "c": envelope.conversation_id,
        "k": message_key,
        "b": orjson.dumps({"role": "user", "content": content}).decode(),
        "after": cache.after(envelope.conversation_id),
    }


async def turn_start(
    conn: AsyncConnection, envelope: Envelope, rows: list[tuple[Any, ...]], cache: TranscriptCache
) -> TurnStart:
    """The :class:`TurnStart` of :data:`START_ROWS`' rows (part 0, then part 1); on a turn
    that ran before a restart, also the text of it that was sent."""
    prior = TurnStatus(rows[0][2]) if rows[0][2] else None
    transcript = cache.merge(
        envelope.conversation_id, [(position, key, body) for _, position, key, body, _ in rows[1:]]
    )
    sent: dict[int, str] = {}
    if prior == TurnStatus.RUNNING:  # it ran before a restart: some text may be out
        found = await conn.execute(_SENT_TEXT, (envelope.conversation_id, f"delta:{envelope.turn_id}:%"))
        sent = {int(round_): text for round_, text in await found.fetchall()}
    return TurnStart(prior, transcript, sent)
