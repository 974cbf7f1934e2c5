"""PostgreSQL: the schema of a0 (applied idempotently by ``a0ctl up`` and at service
start) and the async connection pool factory (psycopg 3)."""

from __future__ import annotations

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool

from services.common.settings import Settings

# JSON and JSONB columns are read and written with orjson, in every service.
set_json_loads(orjson.loads)
set_json_dumps(lambda value: orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode())

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id          TEXT PRIMARY KEY,
    owner_id    TEXT NOT NULL,
    title       TEXT NOT NULL DEFAULT '',
    policy      TEXT NOT NULL DEFAULT 'enqueue',
    last_seq    BIGINT NOT NULL DEFAULT 0,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS conversations_owner ON conversations (owner_id, updated_at DESC);

-- Every event a client sees, in per-conversation order: the resume log and the history.
CREATE TABLE IF NOT EXISTS events (
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    seq             BIGINT NOT NULL,
    event_key       TEXT NOT NULL,
    envelope        JSONB NOT NULL,
    PRIMARY KEY (conversation_id, seq),
    UNIQUE (conversation_id, event_key)
);

-- The chat transcript the model sees (OpenAI message format), one row per message.
CREATE TABLE IF NOT EXISTS messages (
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    message_key     TEXT NOT NULL,
    position        BIGSERIAL,
    turn_id         TEXT NOT NULL,
    role            TEXT NOT NULL,
    body            JSONB NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, message_key)
);
CREATE INDEX IF NOT EXISTS messages_order ON messages (conversation_id, position);

CREATE TABLE IF NOT EXISTS turns (
    turn_id         TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    status          TEXT NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS turns_open ON turns (conversation_id) WHERE status IN ('queued', 'running');

-- Tool results by turn and call id (tool_call_key): a redelivered request is answered
-- from here, never run twice.
CREATE TABLE IF NOT EXISTS tool_results (
    call_key    TEXT PRIMARY KEY,
    envelope    JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS credentials (
    owner_id    TEXT NOT NULL,
    provider    TEXT NOT NULL,
    base_url    TEXT NOT NULL,
    model       TEXT NOT NULL,
    key_masked  TEXT NOT NULL,
    nonce       BYTEA NOT NULL,
    ciphertext  BYTEA NOT NULL,
    kek_id      TEXT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_id, provider)
);

CREATE TABLE IF NOT EXISTS credential_audit (
    id          BIGSERIAL PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor       TEXT NOT NULL,
    owner_id    TEXT NOT NULL,
    provider    TEXT NOT NULL,
    action      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT ''
);
"""


async def ensure_database(settings: Settings) -> None:
    """Create the application database if the server does not have it yet."""
    async with await psycopg.AsyncConnection.connect(
        settings.postgres_dsn, dbname="postgres", autocommit=True
    ) as conn:
        name = settings.postgres.database
        found = await (await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))).fetchone()
        if not found:
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


async def migrate(settings: Settings) -> None:
    await ensure_database(settings)
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True) as conn:
        # One migrator at a time, even when several services start together.
        await conn.execute("SELECT pg_advisory_lock(7411)")
        try:
            await conn.execute(SCHEMA)  # type: ignore[arg-type]
        finally:
            await conn.execute("SELECT pg_advisory_unlock(7411)")


async def open_pool(settings: Settings, *, min_size: int = 2, max_size: int = 20) -> AsyncConnectionPool:
    pool = AsyncConnectionPool(
        settings.postgres_dsn,
        min_size=min_size,
        max_size=max_size,
        open=False,
        kwargs={"autocommit": True},
    )
    await pool.open(wait=True, timeout=30)
    return pool
