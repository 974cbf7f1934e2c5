"""Every statement the gateway runs on PostgreSQL, by name: its own ``conversations``,
its two writes of other services' tables (a message's turn, queued; a deleted
conversation's tool results) and its reads of the worker's tables (history, open
turns). The handlers call these; none of them holds SQL.

The queued turn is the gateway's because a policy other than ``enqueue`` must see it
at once, under the conversation's lock, on every replica: the worker only learns of a
turn when its message arrives. The row is written in the transaction that publishes
the message (see ``handlers.submit_message``), so it exists only if the message does.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from services.common.turns import OPEN_SQL, TurnStatus
from services.gateway.models import TurnPolicy


async def ping(pool: AsyncConnectionPool, timeout: float) -> None:
    """A connection from the pool answers (``/ready``)."""
    async with pool.connection(timeout=timeout) as conn:
        await conn.execute("SELECT 1")


# --- conversations (owned) --------------------------------------------------------------

# last_seq from the events themselves too, whichever of the two the worker advanced.
_SUMMARY = """
SELECT c.id, c.owner_id, c.title, c.policy, c.created_at, c.updated_at,
       GREATEST(c.last_seq, COALESCE((SELECT max(e.seq) FROM events e WHERE e.conversation_id = c.id), 0))
           AS last_seq
FROM conversations c
"""


async def conversation(conn: AsyncConnection, conversation_id: str) -> dict[str, Any] | None:
    """The conversation's summary row (``_SUMMARY``'s columns), None if there is none."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_SUMMARY + " WHERE c.id = %s", (conversation_id,))
        return await cur.fetchone()


async def conversations_of(
    conn: AsyncConnection, owner_id: str, title_like: str | None = None
) -> list[dict[str, Any]]:
    """The owner's conversations, newest activity first; ``title_like`` an ILIKE pattern."""
    where, params = " WHERE c.owner_id = %s", [owner_id]
    if title_like is not None:
        where += " AND c.title ILIKE %s"
        params.append(title_like)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_SUMMARY + where + " ORDER BY c.updated_at DESC, c.created_at DESC", params)
        return await cur.fetchall()


async def create_conversation(
    pool: AsyncConnectionPool, conversation_id: str, owner_id: str, title: str, policy: TurnPolicy
) -> dict[str, Any]:
    async with pool.connection(timeout=10) as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "INSERT INTO conversations (id, owner_id, title, policy) VALUES (%s, %s, %s, %s) "
            "RETURNING id, title, policy, created_at, last_seq",
            (conversation_id, owner_id, title, policy.value),
        )
        row = await cur.fetchone()
    assert row is not None
    return row


async def update_conversation(
    pool: AsyncConnectionPool, conversation_id: str, title: str | None, policy: TurnPolicy | None
) -> dict[str, Any] | None:
    """Set what is not None; the summary row after, None if there is no such conversation."""
    async with pool.connection(timeout=10) as conn:
        await conn.execute(
            "UPDATE conversations SET title = COALESCE(%s, title), policy = COALESCE(%s, policy), "
            "updated_at = now() WHERE id = %s",
            (title, policy.value if policy else None, conversation_id),
        )
        return await conversation(conn, conversation_id)


async def delete_conversation(pool: AsyncConnectionPool, conversation_id: str) -> bool:
    """Delete the conversation and its whole history; False if there was none (deleted
    meanwhile). Events, transcript and turns go by the schema's cascades; the tool
    results of its turns are deleted here, the gateway's one write of the executor's
    table: keyed ``<turn_id>:<call_id>``, they have no foreign key to ``turns``, since the
    executor answers any ``tool.request`` on its topic, of a stored turn or not."""
    async with pool.connection(timeout=10) as conn, conn.transaction():
        await conn.execute(
            "DELETE FROM tool_results WHERE split_part(call_key, ':', 1) IN "
            "(SELECT turn_id FROM turns WHERE conversation_id = %s)",
            (conversation_id,),
        )
        deleted = await conn.execute("DELETE FROM conversations WHERE id = %s", (conversation_id,))
    return deleted.rowcount > 0


# --- the worker's tables, read ----------------------------------------------------------


async def transcript(conn: AsyncConnection, conversation_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The conversation's ``messages`` in order: ``(turn_id, role, body)``."""
    rows = await conn.execute(
        "SELECT turn_id, role, body FROM messages WHERE conversation_id = %s ORDER BY position",
        (conversation_id,),
    )
    return await rows.fetchall()


async def stored_events(conn: AsyncConnection, conversation_id: str) -> list[Any]:
    """Every stored event envelope of the conversation, in seq order."""
    rows = await conn.execute(
        "SELECT envelope FROM events WHERE conversation_id = %s ORDER BY seq", (conversation_id,)
    )
    return [data for (data,) in await rows.fetchall()]


_PAGE = "SELECT seq, envelope FROM events WHERE conversation_id = %s AND seq > %s ORDER BY seq LIMIT %s"
_PAGE_BEFORE = (
    "SELECT seq, envelope FROM events WHERE conversation_id = %s AND seq > %s AND seq < %s "
    "ORDER BY seq LIMIT %s"
)
# The conversation's owner with the first page: no row, no conversation; a row without
# a seq, no event past the cursor.
_OPENING = (
    f"SELECT c.owner_id, e.seq, e.envelope FROM conversations c LEFT JOIN LATERAL ({_PAGE}) e ON true "
    "WHERE c.id = %s ORDER BY e.seq"
)


async def event_page(
    pool: AsyncConnectionPool, conversation_id: str, after: int, before: int | None, limit: int
) -> list[Any]:
    """Up to ``limit`` stored events with ``after < seq < before``: ``(seq, envelope)`` rows."""
    async with pool.connection(timeout=10) as conn:
        if before is None:
            rows = await conn.execute(_PAGE, (conversation_id, after, limit))
        else:
            rows = await conn.execute(_PAGE_BEFORE, (conversation_id, after, before, limit))
        return await rows.fetchall()


async def opening(pool: AsyncConnectionPool, conversation_id: str, after: int, limit: int) -> list[Any]:
    """``(owner_id, seq, envelope)`` rows: the owner with the first page past ``after`` (a
    row with a NULL seq when there is none); no row when there is no such conversation."""
    async with pool.connection(timeout=10) as conn:
        rows = await conn.execute(_OPENING, (conversation_id, after, limit, conversation_id))
        return await rows.fetchall()


async def has_open_turn(pool: AsyncConnectionPool, conversation_id: str) -> bool:
    async with pool.connection(timeout=10) as conn:
        found = await conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM turns WHERE conversation_id = %s AND status IN {OPEN_SQL})",
            (conversation_id,),
        )
        row = await found.fetchone()
    return bool(row and row[0])


async def turn_exists(pool: AsyncConnectionPool, conversation_id: str, turn_id: str) -> bool:
    async with pool.connection(timeout=10) as conn:
        found = await conn.execute(
            "SELECT 1 FROM turns WHERE turn_id = %s AND conversation_id = %s", (turn_id, conversation_id)
        )
        return await found.fetchone() is not None


# --- a message's turn: the gateway's one write of ``turns`` ------------------------------

# A message's conversation is active again, and one created without a title is named
# after its first message.
_TITLED = """UPDATE conversations SET updated_at = now(), title = CASE WHEN title = '' THEN %(title)s ELSE title END
    WHERE id = %(c)s"""
# Queue the turn of an ``enqueue`` conversation (the default), behind whatever runs:
# nothing to check, one statement, which reads the conversation's policy itself. No row:
# the conversation is gone; another policy: nothing was written.
_QUEUE_TURN = f"""
WITH conversation AS (
    SELECT policy FROM conversations WHERE id = %(c)s
), queued AS (
    INSERT INTO turns (turn_id, conversation_id, status)
    SELECT %(t)s, %(c)s, '{TurnStatus.QUEUED.value}' FROM conversation WHERE policy = '{TurnPolicy.enqueue.value}'
    RETURNING 1
), titled AS (
    {_TITLED} AND EXISTS (SELECT 1 FROM queued)
)
SELECT policy FROM conversation
"""
# Lock the conversation's row, which serialises its messages across replicas, and say
# whether a turn is in flight.
_LOCK = f"""
SELECT policy, EXISTS (SELECT 1 FROM turns WHERE conversation_id = %(c)s AND status IN {OPEN_SQL})
FROM conversations WHERE id = %(c)s FOR UPDATE
"""
# The same as _QUEUE_TURN for a turn already checked against the policy, under the lock.
_QUEUE_CHECKED_TURN = f"""
WITH queued AS (
    INSERT INTO turns (turn_id, conversation_id, status) VALUES (%(t)s, %(c)s, '{TurnStatus.QUEUED.value}')
)
{_TITLED}
"""


async def queue_turn(
    conn: AsyncConnection, conversation_id: str, turn_id: str, title: str
) -> TurnPolicy | None:
    """Queue the turn if the conversation's policy is ``enqueue`` (and title the
    conversation); its policy either way, None if there is no such conversation. A
    conversation deleted meanwhile raises ``ForeignKeyViolation``."""
    queued = await conn.execute(_QUEUE_TURN, {"t": turn_id, "c": conversation_id, "title": title})
    row = await queued.fetchone()
    return TurnPolicy(row[0]) if row else None


async def lock_for_turn(conn: AsyncConnection, conversation_id: str) -> tuple[TurnPolicy, bool] | None:
    """In a transaction: lock the conversation's row until it ends; its policy and whether
    a turn is queued or running, None if there is no such conversation."""
    found = await (await conn.execute(_LOCK, {"c": conversation_id})).fetchone()
    return (TurnPolicy(found[0]), bool(found[1])) if found else None


async def queue_checked_turn(conn: AsyncConnection, conversation_id: str, turn_id: str, title: str) -> None:
    """Queue the turn, checked under :func:`lock_for_turn`, and title the conversation."""
    await conn.execute(_QUEUE_CHECKED_TURN, {"t": turn_id, "c": conversation_id, "title": title})
