"""baseline: the schema as ``CREATE TABLE IF NOT EXISTS`` made it before migrations

Idempotent on purpose: a database made before versioned migrations already holds these
tables (with data); upgrading it runs this revision as a no-op and records it, no purge.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

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


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    # Below the baseline there is no schema, only lost data: `a0ctl down --purge` says so.
    raise RuntimeError("the baseline is not downgraded; `a0ctl down --purge` deletes the data instead")
