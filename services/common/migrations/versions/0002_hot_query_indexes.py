"""indexes for the gateway's open-turn count and the worker's republish of a turn

The gateway counts queued and running turns of the last 10 minutes every 5 s in each
process (its open-turn budget); the worker reads one turn's events to publish them again
after a crash. Both scanned every row of their table (or conversation) before.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX IF NOT EXISTS turns_open_recent ON turns (updated_at) "
        "WHERE status IN ('queued', 'running')"
    )
    op.execute("CREATE INDEX IF NOT EXISTS events_turn ON events (conversation_id, (envelope->>'turn_id'))")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS events_turn")
    op.execute("DROP INDEX IF EXISTS turns_open_recent")
