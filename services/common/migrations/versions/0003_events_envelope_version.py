"""events.envelope_version: the envelope version of each stored event, as a column

Derived from the envelope itself (a stored generated column), so no writer changes:
``SELECT envelope_version, count(*) FROM events GROUP BY 1`` tells whether events of an
old version are still stored before a release stops reading them.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE events ADD COLUMN IF NOT EXISTS envelope_version SMALLINT "
        "GENERATED ALWAYS AS (COALESCE((envelope->>'v')::smallint, 1)) STORED"
    )


def downgrade() -> None:
    # The column is derived from the envelope, which stays: nothing is lost.
    op.execute("ALTER TABLE events DROP COLUMN IF EXISTS envelope_version")
