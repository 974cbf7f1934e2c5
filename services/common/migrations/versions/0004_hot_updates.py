"""updates that stay on their page: no index on what a turn's steps change

Every step of a turn advances ``conversations.last_seq``, and every message sets
``updated_at``. An update is HOT (no new index entries, the old version pruned in
place) only when it changes no indexed column and its page has room: so the owner's
index holds only ``owner_id`` (a user's conversations are sorted when listed, not read
in index order), and the table's pages keep half their room for new versions.

``events_turn`` is dropped: it was read only when a finished turn is published again
after a crash, and cost every event an index entry. That read now starts at the turn's
``accepted`` event, found by its key.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS conversations_by_owner ON conversations (owner_id)")
    op.execute("DROP INDEX IF EXISTS conversations_owner")
    op.execute("DROP INDEX IF EXISTS events_turn")
    op.execute("ALTER TABLE conversations SET (fillfactor = 50)")


def downgrade() -> None:
    op.execute("ALTER TABLE conversations RESET (fillfactor)")
    op.execute("CREATE INDEX IF NOT EXISTS events_turn ON events (conversation_id, (envelope->>'turn_id'))")
    op.execute("CREATE INDEX IF NOT EXISTS conversations_owner ON conversations (owner_id, updated_at DESC)")
    op.execute("DROP INDEX IF EXISTS conversations_by_owner")
